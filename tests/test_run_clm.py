import json
import math
import random
import sys
from itertools import chain
from pathlib import Path

import pytest
import torch
from conftest import WORDS, save_tiny_tokenizer, tiny_gpt2_config
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from hf_gradprune import load_pruned

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def sentences(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]


@pytest.fixture(autouse=True)
def one_thread():
    # On a shared 2-core machine, OpenMP barriers wait on a busy core: a forward of the tiny GPT-2 took
    # ~125 ms with 2 threads against ~1 ms with 1 (measured), which would make these tests minutes long.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_home" / "modules"))
    model_dir = tmp_path / "tiny-gpt2"
    tok = save_tiny_tokenizer(model_dir)
    torch.manual_seed(0)
    config = tiny_gpt2_config(
        vocab_size=5 + len(WORDS),
        n_positions=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    (tmp_path / "train.txt").write_text("\n".join(sentences(160, seed=0)) + "\n")
    return tmp_path


def base_args(tmp, out):
    return [
        "--model_name_or_path",
        str(tmp / "tiny-gpt2"),
        "--train_file",
        str(tmp / "train.txt"),
        "--cache_dir",
        str(tmp / "cache"),
        "--output_dir",
        str(out),
        "--block_size",
        "16",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "8",
        "--learning_rate",
        "3e-3",
        "--max_steps",
        "10",
        "--scoring_steps",
        "3",
        "--head_sparsity",
        "0.5",
        "--ffn_sparsity",
        "0.5",
        "--use_cpu",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--seed",
        "0",
        "--latency_batch_sizes",
        "1,2",
        "--latency_repeats",
        "2",
        "--disable_tqdm",
        "true",
    ]


def test_clm_script_end_to_end_on_txt(tiny_setup, capsys):
    import run_clm_prune

    out = tiny_setup / "out"
    args = base_args(tiny_setup, out) + ["--validation_split_percentage", "10", "--max_train_samples", "48"]
    args += ["--ffn_multiple_of", "1"]  # the exact count below
    results = run_clm_prune.main(args)
    assert results["block_size"] == 16 and results["train_samples"] == 48 and results["eval_samples"] > 0
    for stage in ("dense", "pruned", "recovered"):
        ppl = results[f"{stage}_perplexity"]
        assert math.isfinite(ppl) and ppl > 1.0, (stage, ppl)
        assert ppl == pytest.approx(math.exp(results[f"{stage}_loss"]))
        assert 0.0 <= results[f"{stage}_accuracy"] <= 1.0
    # recovery training lowers the loss of the freshly pruned model on this learnable toy text
    assert results["recovered_loss"] < results["pruned_loss"]
    assert results["pruned_params"] < results["dense_params"]
    all_results = json.loads((out / "all_results.json").read_text())
    assert {"dense_perplexity", "pruned_perplexity", "recovered_perplexity", "block_size"} <= set(all_results)
    assert all(results[k] == v for k, v in all_results.items())
    summary = capsys.readouterr().out
    assert "| perplexity | " in summary and "| metric | dense | pruned | recovered |" in summary
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["heads"]["dense"] == 12 and report["heads"]["pruned"] == 6
    assert report["ffn_neurons"]["pruned"] == 144  # half of 3 x 96
    assert [(r["batch_size"], r["seq_len"]) for r in report["latency"]] == [(1, 16), (2, 16)]
    for name in ("heads_kept.png", "ffn_kept.png", "README.md", "modeling_gradprune.py", "tokenizer.json"):
        assert (out / name).exists(), name
    assert (out / "heads_kept.png").read_bytes()[:4] == b"\x89PNG"
    card = (out / "README.md").read_text()
    assert "text-generation" in card and "local files" in card
    for stage in ("dense", "pruned", "recovered"):  # the card's evaluation uses the same keys
        assert f"{stage}_perplexity: {results[stage + '_perplexity']:.4f}" in card
    # the folder reloads, both ways, to the same logits
    ids = torch.tensor([[2, 7, 10, 3, 9, 12]])
    a = load_pruned(out).eval()(input_ids=ids).logits
    b = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()(input_ids=ids).logits
    assert torch.equal(a, b)


def test_clm_script_jsonl_with_validation_file(tiny_setup):
    """A jsonl pair with another text column; the saved model reproduces the reported eval loss."""
    import run_clm_prune

    train, dev = sentences(120, seed=2), sentences(48, seed=3)
    for name, lines in (("train.jsonl", train), ("dev.jsonl", dev)):
        (tiny_setup / name).write_text("".join(json.dumps({"content": s, "id": i}) + "\n" for i, s in enumerate(lines)))
    out = tiny_setup / "out_json"
    args = base_args(tiny_setup, out)
    args[args.index("--train_file") + 1] = str(tiny_setup / "train.jsonl")
    args += ["--validation_file", str(tiny_setup / "dev.jsonl"), "--text_column", "content"]
    args += ["--max_eval_samples", "8", "--max_steps", "4", "--latency_batch_sizes", "1", "--distill_alpha", "0"]
    results = run_clm_prune.main(args)
    assert results["eval_samples"] == 8
    assert math.isfinite(results["recovered_perplexity"])
    # Rebuild the first 8 validation blocks by hand; one eval batch of 8 makes the Trainer's loss the plain mean.
    # (Without the script's loss_type fix, Trainer divides by 16 tokens per block, not 15, and this fails.)
    tok = AutoTokenizer.from_pretrained(out)
    ids = list(chain(*tok(dev)["input_ids"]))[: 8 * 16]
    blocks = torch.tensor(ids).view(8, 16)
    with torch.no_grad():
        loss = load_pruned(out).eval()(input_ids=blocks, labels=blocks).loss.item()
    assert loss == pytest.approx(results["recovered_loss"], rel=1e-5)


def test_parquet_without_validation_carves_the_train_split(tiny_setup):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from run_clm_prune import DataTrainingArguments, ModelArguments

    from hf_gradprune.cli.data import load_causal_lm_data as load_raw

    path = tiny_setup / "train.parquet"
    pq.write_table(pa.table({"text": sentences(100, seed=4)}), path)
    data = DataTrainingArguments(train_file=str(path), validation_split_percentage=20)
    train, validation, column = load_raw(data, ModelArguments("unused", cache_dir=str(tiny_setup / "cache")))
    assert (len(train), len(validation), column) == (80, 20, "text")
    assert validation["text"] == sentences(100, seed=4)[:20]  # run_clm.py's split: the first pct% is validation


def test_bad_data_arguments_are_clear(tiny_setup):
    from run_clm_prune import DataTrainingArguments, ModelArguments

    from hf_gradprune.cli.data import load_causal_lm_data as load_raw

    with pytest.raises(ValueError, match=r"unsupported file type '\.xlsx'.*\.txt, \.json, \.jsonl, \.parquet"):
        DataTrainingArguments(train_file=str(tiny_setup / "data.xlsx"))
    with pytest.raises(ValueError, match="no extension"):
        DataTrainingArguments(train_file=str(tiny_setup / "data"))
    with pytest.raises(FileNotFoundError, match="missing.txt: no such data file"):
        DataTrainingArguments(train_file=str(tiny_setup / "missing.txt"))
    with pytest.raises(ValueError, match="needs --train_file"):
        DataTrainingArguments(validation_file=str(tiny_setup / "train.txt"))
    (tiny_setup / "t.jsonl").write_text('{"body": "the film"}\n')
    model = ModelArguments("unused", cache_dir=str(tiny_setup / "cache"))
    with pytest.raises(ValueError, match=r"text column 'text' is not in the train data.*body.*--text_column"):
        load_raw(DataTrainingArguments(train_file=str(tiny_setup / "t.jsonl")), model)
    with pytest.raises(ValueError, match=r"5% of the 1 training rows is none; give --validation_file"):
        load_raw(DataTrainingArguments(train_file=str(tiny_setup / "t.jsonl"), text_column="body"), model)


def test_unreachable_hub_dataset_says_to_use_local_files(tiny_setup, monkeypatch):
    import run_clm_prune

    from hf_gradprune.cli import data as data_module

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(data_module, "load_dataset", offline)
    data = run_clm_prune.DataTrainingArguments()
    with pytest.raises(ConnectionError, match=r"OfflineModeIsEnabled.*wikitext-2-raw-v1.*offline, give local text"):
        data_module.load_causal_lm_data(data, run_clm_prune.ModelArguments("unused"))


def test_block_longer_than_positions_is_refused(tiny_setup):
    import run_clm_prune

    args = base_args(tiny_setup, tiny_setup / "o")
    args[args.index("--block_size") + 1] = "128"
    with pytest.raises(ValueError, match="longer than the model's 64 position embeddings"):
        run_clm_prune.main(args)


def test_gpt2_recipe_parses():
    from run_clm_prune import DataTrainingArguments, ModelArguments

    from hf_gradprune import GradPruneConfig
    from hf_gradprune.cli.runs import parse_args

    recipe = str(ROOT / "recipes" / "gpt2" / "wikitext-2.yaml")
    model, data, train = parse_args(
        (ModelArguments, DataTrainingArguments, GradPruneConfig), ["--config", recipe, "--learning_rate", "1e-4"]
    )
    assert model.model_name_or_path == "gpt2"
    assert (data.dataset_name, data.dataset_config_name, data.train_file) == (
        "Salesforce/wikitext",
        "wikitext-2-raw-v1",
        None,
    )
    assert train.output_dir == "outputs/gpt2-wikitext2-pruned" and train.learning_rate == 1e-4  # the flag wins
    assert train.importance == "taylor" and train.plan_targets() == {"head_sparsity": 0.4, "ffn_sparsity": 0.4}
    assert train.scoring_steps == 64 and train.effective_distill_alpha == 0.5 and not train.bf16
    assert "python examples/run_clm_prune.py --config recipes/gpt2/wikitext-2.yaml" in Path(recipe).read_text()


def test_no_recipe_small_dataset_runs_with_the_default_scoring_steps(tiny_setup, caplog):
    """Issue 20: one epoch of 12 batches (48 blocks, batch 4), the default 32 scoring batches, no recipe."""
    import run_clm_prune

    from hf_gradprune import GradPruneConfig

    out = tiny_setup / "small"
    args = base_args(tiny_setup, out)
    for flag in ("--max_steps", "--scoring_steps", "--per_device_train_batch_size"):  # back to the defaults
        del args[args.index(flag) : args.index(flag) + 2]
    args += ["--per_device_train_batch_size", "4", "--num_train_epochs", "1", "--max_train_samples", "48"]
    args += ["--validation_split_percentage", "10", "--latency_batch_sizes", "1"]
    assert GradPruneConfig.__dataclass_fields__["scoring_steps"].default == 32  # the default, which this run keeps
    with caplog.at_level("WARNING", logger="hf_gradprune"):
        results = run_clm_prune.main(args)
    assert "scoring_steps=32 is more than one pass over the training set (12 batches)" in caplog.text
    assert results["train_samples"] == 48 and math.isfinite(results["recovered_perplexity"])
    assert json.loads((out / "pruning_report.json").read_text())["heads"]["pruned"] == 6
    (entry,) = load_pruned(out).config.gradprune["history"]
    assert entry["step"] == 0 and entry["num_examples"] == 32 * 4  # every default scoring batch, 2.7 passes
