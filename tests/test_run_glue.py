import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import WORDS, save_tiny_tokenizer, sentiment_rows, tiny_bert_config
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from hf_gradprune import load_pruned

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def tiny_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_home" / "modules"))
    model_dir = tmp_path / "tiny-bert"
    save_tiny_tokenizer(model_dir)
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config(vocab_size=5 + len(WORDS), num_labels=2)).save_pretrained(model_dir)
    write_csv(tmp_path / "train.csv", sentiment_rows(96, seed=0))
    write_csv(tmp_path / "dev.csv", sentiment_rows(32, seed=1))
    return tmp_path


def base_args(tmp, out):
    return [
        "--model_name_or_path",
        str(tmp / "tiny-bert"),
        "--train_file",
        str(tmp / "train.csv"),
        "--validation_file",
        str(tmp / "dev.csv"),
        "--text_column",
        "sentence",
        "--output_dir",
        str(out),
        "--max_seq_length",
        "16",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "16",
        "--learning_rate",
        "3e-3",
        "--dense_train_epochs",
        "6",
        "--max_steps",
        "12",
        "--scoring_steps",
        "4",
        "--head_sparsity",
        "0.5",
        "--ffn_sparsity",
        "0.5",
        "--use_cpu",
        "--report_to",
        "none",
        "--seed",
        "0",
        "--latency_batch_sizes",
        "1,4",
        "--latency_repeats",
        "2",
        "--disable_tqdm",
        "true",
    ]


def test_glue_script_end_to_end_on_csv(tiny_setup, capsys):
    import run_glue_prune

    out = tiny_setup / "out"
    results = run_glue_prune.main(base_args(tiny_setup, out))
    assert results["metric_source"] == "local"
    for stage in ("dense", "pruned", "recovered"):  # one prefix per stage, the metric as `evaluate` names it
        assert 0.0 <= results[f"{stage}_accuracy"] <= 1.0
    assert results["dense_accuracy"] > 0.6  # the dense fine-tune learned the task
    assert results["pruned_params"] < results["dense_params"]
    # all_results.json: flat, every key <stage>_<name>, the same numbers as returned
    all_results = json.loads((out / "all_results.json").read_text())
    assert {"dense_accuracy", "pruned_accuracy", "recovered_accuracy", "dense_loss", "train_loss"} <= set(all_results)
    assert all(isinstance(v, (int, float)) for v in all_results.values())
    assert all(k.split("_")[0] in ("dense", "pruned", "recovered", "train") for k in all_results), sorted(all_results)
    assert all(results[k] == v for k, v in all_results.items())
    summary = capsys.readouterr().out
    for row in ("| metric | dense | pruned | recovered |", "| accuracy | ", "| attention heads | 12 | 6 |"):
        assert row in summary, row
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["heads"] == {"dense": 12, "pruned": 6, "per_layer": report["heads"]["per_layer"]}
    assert [r["batch_size"] for r in report["latency"]] == [1, 4] and report["latency"][0]["dense_ms"] > 0
    for name in ("heads_kept.png", "ffn_kept.png", "README.md", "modeling_gradprune.py", "tokenizer.json"):
        assert (out / name).exists(), name
    assert (out / "heads_kept.png").read_bytes()[:4] == b"\x89PNG"
    # the folder reloads, both ways, to the same logits
    ids = torch.tensor([[2, 7, 10, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    a = load_pruned(out).eval()(input_ids=ids, attention_mask=mask).logits
    b = (
        AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
        .eval()(input_ids=ids, attention_mask=mask)
        .logits
    )
    assert torch.equal(a, b)


def test_glue_script_sentence_pairs_and_regression(tiny_setup):
    import run_glue_prune

    rows = [
        {"s1": r["sentence"], "s2": r2["sentence"], "score": float(r["label"] + r2["label"])}
        for r, r2 in zip(sentiment_rows(64, 2), sentiment_rows(64, 3))
    ]
    write_csv(tiny_setup / "pairs_train.csv", rows[:48])
    write_csv(tiny_setup / "pairs_dev.csv", rows[48:])
    args = base_args(tiny_setup, tiny_setup / "pairs")
    args[args.index("--train_file") + 1] = str(tiny_setup / "pairs_train.csv")
    args[args.index("--validation_file") + 1] = str(tiny_setup / "pairs_dev.csv")
    args[args.index("--text_column") + 1] = "s1,s2"
    args += ["--label_column", "score", "--dense_train_epochs", "0", "--max_steps", "4", "--ignore_mismatched_sizes"]
    results = run_glue_prune.main(args)
    assert {"recovered_pearson", "recovered_spearmanr", "pruned_pearson", "dense_spearmanr"} <= set(results)


def test_recipe_gives_defaults_and_flags_override(tiny_setup):
    from run_glue_prune import DataTrainingArguments, ModelArguments

    from hf_gradprune import GradPruneConfig
    from hf_gradprune.cli.runs import parse_args

    recipe = tiny_setup / "r.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_setup / 'tiny-bert'}\ntrain_file: {tiny_setup / 'train.csv'}\n"
        "text_column: sentence\nhead_sparsity: 0.3\nimportance: fisher\noutput_dir: x\nlearning_rate: 0.001\n"
    )
    model, data, train = parse_args(
        (ModelArguments, DataTrainingArguments, GradPruneConfig), ["--config", str(recipe), "--importance", "magnitude"]
    )
    assert (train.head_sparsity, train.importance, train.learning_rate) == (0.3, "magnitude", 0.001)
    assert model.model_name_or_path.endswith("tiny-bert") and data.text_column == "sentence"
    recipe.write_text("head_sparsity: 0.3\nscoring_step: 4\n")
    with pytest.raises(SystemExit):
        parse_args((ModelArguments, DataTrainingArguments, GradPruneConfig), ["--config", str(recipe)])


def test_bad_data_arguments_are_clear():
    from run_glue_prune import DataTrainingArguments

    with pytest.raises(ValueError, match="task_name"):
        DataTrainingArguments()
    with pytest.raises(ValueError, match="unknown GLUE task"):
        DataTrainingArguments(task_name="sst3")
    with pytest.raises(ValueError, match=".csv, .json"):
        DataTrainingArguments(train_file="data.xlsx")


def test_no_recipe_small_dataset_runs_with_the_default_scoring_steps(tiny_setup, caplog):
    """Issue 20: 384 examples, batch 32, one epoch, no recipe: 12 batches, the default 32 scoring batches."""
    import run_glue_prune

    from hf_gradprune import GradPruneConfig

    write_csv(tiny_setup / "train384.csv", sentiment_rows(384, seed=4))
    out = tiny_setup / "small"
    args = [
        *("--model_name_or_path", str(tiny_setup / "tiny-bert"), "--train_file", str(tiny_setup / "train384.csv")),
        *("--validation_file", str(tiny_setup / "dev.csv"), "--text_column", "sentence", "--output_dir", str(out)),
        *("--max_seq_length", "16", "--per_device_train_batch_size", "32", "--num_train_epochs", "1"),
        *("--head_sparsity", "0.5", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true"),
        *("--latency_batch_sizes", "1", "--latency_repeats", "1"),
    ]
    assert GradPruneConfig.__dataclass_fields__["scoring_steps"].default == 32  # the default, which this run keeps
    with caplog.at_level("WARNING", logger="hf_gradprune"):
        results = run_glue_prune.main(args)
    assert "scoring_steps=32 is more than one pass over the training set (12 batches)" in caplog.text
    assert 0.0 <= results["recovered_accuracy"] <= 1.0
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["heads"]["dense"] == 12 and report["heads"]["pruned"] == 6
    plan = json.loads((out / "pruning" / "round-1-step-0" / "plan.json").read_text())
    assert sum(map(len, plan["heads"])) == 6
    state = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())  # one epoch: 12 steps
    (event,) = [e for e in state["log_history"] if "prune/round" in e]
    assert event["prune/examples_scored"] == 32 * 32  # all 32 default scoring batches, 2.7 passes


def test_a_schedule_the_run_cannot_give_fails_before_the_dense_fine_tune(tiny_setup, monkeypatch):
    """Issue 20: a round past the run's last step is refused before hours of dense fine-tuning, not after."""
    import run_glue_prune

    from hf_gradprune.cli import runs as cli

    tuned = []
    monkeypatch.setattr(cli, "finetune_dense", lambda *a, **k: tuned.append(1) or 0.0)
    out = tiny_setup / "late"
    args = base_args(tiny_setup, out)
    i = args.index("--max_steps")
    del args[i : i + 2]  # one epoch of 96 examples at batch 8: 12 steps, known only to the Trainer
    with pytest.raises(ValueError, match="prune_step"):
        run_glue_prune.main([*args, "--num_train_epochs", "1", "--prune_step", "50"])
    assert tuned == []  # refused first
    assert not (out / "config.json").exists()


def test_pruning_starts_from_the_same_random_state_with_or_without_a_dense_fine_tune(tiny_setup, monkeypatch):
    """The pruning trainer is built before the dense fine-tune (to check its schedule first); pruning and recovery
    must still draw what they drew when it was built after it, i.e. what a run without the fine-tune draws."""
    import run_glue_prune

    from hf_gradprune.training.trainer import GradPruneTrainer

    class Stop(Exception):
        pass

    seen = {}

    def train(self, *args, **kwargs):
        seen[self.args.output_dir] = torch.get_rng_state()
        raise Stop

    monkeypatch.setattr(GradPruneTrainer, "train", train)
    for epochs in ("0", "1"):
        args = base_args(tiny_setup, tiny_setup / f"dense{epochs}")
        args[args.index("--dense_train_epochs") + 1] = epochs
        with pytest.raises(Stop):
            run_glue_prune.main(args)
    assert torch.equal(seen[str(tiny_setup / "dense0")], seen[str(tiny_setup / "dense1")])
