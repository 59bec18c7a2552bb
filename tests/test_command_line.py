"""``hf-gradprune``: every subcommand on tiny models, its --help, and bad input as one line with exit code 2."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import WORDS, save_tiny_tokenizer, sentiment_rows, tiny_bert_config, tiny_gpt2_config
from transformers import BertForSequenceClassification, GPT2LMHeadModel

from hf_gradprune import PruningPlan, current_plan, load_pruned
from hf_gradprune.cli import info as info_command
from hf_gradprune.cli import prune as prune_command
from hf_gradprune.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models on a shared 2-core machine: one thread avoids OpenMP waits (see test_run_clm.py)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny BERT classifier and a tiny GPT-2, each with a tokenizer, and data files."""
    tmp = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    save_tiny_tokenizer(tmp / "bert")
    BertForSequenceClassification(tiny_bert_config(vocab_size=5 + len(WORDS), num_labels=2)).save_pretrained(
        tmp / "bert"
    )
    tok = save_tiny_tokenizer(tmp / "gpt2")
    config = tiny_gpt2_config(
        vocab_size=5 + len(WORDS),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(tmp / "gpt2")
    rows = sentiment_rows(64, seed=0)
    write_csv(tmp / "train.csv", rows)
    write_csv(tmp / "dev.csv", sentiment_rows(16, seed=1))
    write_csv(tmp / "unlabelled.csv", [{"sentence": r["sentence"]} for r in rows])
    (tmp / "texts.txt").write_text("\n".join(r["sentence"] for r in rows * 2) + "\n")
    return tmp


QUIET = ["--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0"]


@pytest.fixture(scope="module")
def pruned_bert(assets):
    """The labelled path (examples/run_glue_prune.py's run) from a recipe the test writes; flags override it."""
    recipe = assets / "recipe.yaml"
    recipe.write_text(
        "max_seq_length: 16\nper_device_train_batch_size: 8\nper_device_eval_batch_size: 16\nlearning_rate: 3.0e-3\n"
        "max_steps: 6\nscoring_steps: 2\nhead_sparsity: 0.5\nffn_sparsity: 0.25\nlatency_batch_sizes: '1'\n"
        "latency_repeats: 1\nsave_strategy: 'no'\n"
    )
    out = assets / "pruned_bert"
    args = ["prune", "--config", str(recipe), "--model_name_or_path", str(assets / "bert")]
    args += ["--train_file", str(assets / "train.csv"), "--validation_file", str(assets / "dev.csv")]
    args += ["--text_column", "sentence", "--output_dir", str(out), "--ffn_sparsity", "0.5", *QUIET]
    args += ["--ffn_multiple_of", "1"]  # exact counts below (the default rounds widths to multiples of 64)
    assert main(args) == 0
    return out


def error_line(capsys) -> str:
    """The one error line on stderr (the last; before it at most the datasets library's progress bars)."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == lines[-1:] and "Traceback" not in captured.err, captured.err
    return lines[-1]


# ---------------------------------------------------------------------- help
@pytest.mark.parametrize(
    "command",
    [[], ["prune"], ["prune", "--task", "text-generation"], ["info"], ["bench"], ["export"], ["export", "onnx"]]
    + [["convert-v4"]],
    ids=lambda c: " ".join(c) or "top",
)
def test_help_of_every_command(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hf-gradprune {command[0] if command else ''}".rstrip())
    if not command:
        for name in ("prune", "info", "bench", "export", "convert-v4"):
            assert name in out
    if command[:1] == ["prune"]:  # the example scripts' options, by task
        assert "--flops_budget" in out and "--oneshot" in out and "--calibration_samples" in out
        assert ("--block_size" in out) == (command[-1] == "text-generation")
        assert ("--task_name TASK_NAME" in out) != (command[-1] == "text-generation")
    if command == ["bench"]:
        assert "random weights" in out


def test_no_command_prints_the_commands_and_exits_2(capsys):
    assert main([]) == 2
    assert "convert-v4" in capsys.readouterr().err


def test_the_installed_console_script():
    """pyproject.toml's entry point runs main (one process: importing torch and transformers takes seconds)."""
    exe = Path(sys.executable).parent / "hf-gradprune"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: hf-gradprune") and "convert-v4" in result.stdout


# ---------------------------------------------------------------------- prune + info
def test_labelled_prune_then_info(pruned_bert, capsys):
    # the run of examples/run_glue_prune.py: evaluated stages, reports, a loadable folder
    results = json.loads((pruned_bert / "all_results.json").read_text())
    assert {"dense_accuracy", "pruned_accuracy", "recovered_accuracy"} <= set(results)
    assert (pruned_bert / "pruning_report.json").exists() and (pruned_bert / "tokenizer.json").exists()
    model = load_pruned(pruned_bert)
    plan = current_plan(model)
    assert (plan.num_heads, plan.num_neurons) == (6, 144)  # the flag's ffn_sparsity 0.5 won over the recipe's

    assert main(["info", str(pruned_bert), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pruned"] and not info["stock"] and info["architecture"] == "BertForSequenceClassification"
    assert [r["heads"] for r in info["layers"]] == [len(h) for h in plan.heads]
    assert [r["ffn_neurons"] for r in info["layers"]] == [len(n) for n in plan.neurons]
    assert info["heads"] == {"dense": 12, "pruned": 6} and info["ffn_neurons"] == {"dense": 288, "pruned": 144}
    full = PruningPlan.full(plan.geometry)
    assert info["block_params"] == {"dense": full.block_params(), "pruned": plan.block_params()}
    assert info["block_flops"] == {"seq_len": 128, "dense": full.block_flops(128), "pruned": plan.block_flops(128)}
    dense = BertForSequenceClassification.from_pretrained(pruned_bert.parent / "bert")
    assert info["params"] == {
        "dense": sum(p.numel() for p in dense.parameters()),
        "pruned": sum(p.numel() for p in model.parameters()),
    }
    assert info["history"] == [plan.meta] and plan.meta["head_sparsity"] == 0.5

    assert main(["info", str(pruned_bert), "--seq_len", "16"]) == 0
    text = capsys.readouterr().out
    assert "pruned 1 time(s)" in text and "history:" in text and "head_sparsity=0.5" in text
    assert plan.summary(16) in text  # the plan's own per-layer table: kept / of how many
    assert f"model parameters {info['params']['dense']:,} -> {info['params']['pruned']:,}" in text


def test_info_of_a_dense_folder(assets, capsys):
    assert main(["info", str(assets / "bert")]) == 0
    text = capsys.readouterr().out
    assert "not pruned" in text and "3 layers, 4 heads (4 key/value heads) and 96 FFN neurons per layer" in text
    assert main(["info", str(assets / "bert"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert not info["pruned"] and info["history"] == [] and info["params"]["dense"] == info["params"]["pruned"]


@pytest.mark.parametrize("data", ["unlabelled.csv", "texts.txt"])
def test_a_classifier_on_unlabelled_text_is_pruned_one_shot(assets, data, capsys):
    out = assets / f"oneshot_{data.split('.')[0]}"
    args = ["prune", "--model_name_or_path", str(assets / "bert"), "--train_file", str(assets / data)]
    args += ["--text_column", "sentence"] if data.endswith(".csv") else []
    args += ["--flops_budget", "0.4", "--budget_split", "ratio", "--max_seq_length", "16"]
    args += ["--calibration_samples", "32", "--selection_batches", "1", "--output_dir", str(out), *QUIET]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "no label column 'label'" in captured.err and f"saved {out}" in captured.out
    assert "kept by held-out loss (1 batches, " in captured.out
    assert not (out / "all_results.json").exists()  # no training, no evaluation
    report = json.loads((out / "oneshot_report.json").read_text())
    assert report["calibration_samples"] == 32 and report["options"]["flops_budget"] == 0.4
    assert report["plan"]["meta"]["method"] == "fisher"  # prune_oneshot's default, not the trainer's taylor
    # prune_oneshot's default: the steps chosen on the last batch (held out), reconstruction only if it won there
    assert report["batches"]["selection"] == 1 and len(report["selection"]["candidates"]) == 4
    assert (report["reconstruction"] is not None) == ("reconstruction" in report["selection"]["chosen"])
    assert report["metrics"] == {}  # no labels, nothing to evaluate against
    plan = current_plan(load_pruned(out))
    assert plan.flops_removed() >= 0.4 - 1e-9 and plan.meta["budget_met"]
    assert {"tokenizer.json", "modeling_gradprune.py", "config.json"} <= set(os.listdir(out))


def test_labelled_data_with_oneshot_evaluates_before_and_after(assets, capsys):
    out = assets / "oneshot_labelled"
    args = ["prune", "--model_name_or_path", str(assets / "bert"), "--train_file", str(assets / "train.csv")]
    args += ["--validation_file", str(assets / "dev.csv"), "--text_column", "sentence", "--oneshot"]
    args += ["--head_sparsity", "0.5", "--max_seq_length", "16", "--output_dir", str(out), *QUIET]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "no label column" not in captured.err and "| metric | dense | reconstructed |" in captured.out
    metrics = json.loads((out / "oneshot_report.json").read_text())["metrics"]
    assert 0 <= metrics["dense"]["dense_accuracy"] <= 1 and 0 <= metrics["reconstructed"]["reconstructed_accuracy"] <= 1
    assert current_plan(load_pruned(out)).num_heads == 6


def test_oneshot_latency_budget_plans_by_a_saved_table(assets, tmp_path, capsys):
    """A table saved for this model and machine (hand-built times: a real tiny model's time is mostly embeddings,
    which would make the budget's reach depend on the timing) drives the one-shot plan."""
    from transformers import AutoModelForSequenceClassification

    from hf_gradprune.deploy.latency import LatencyTable, table_key

    key = table_key(AutoModelForSequenceClassification.from_pretrained(assets / "bert"), 1, 8)
    h, n = key["geometry"]["num_heads"], key["geometry"]["intermediate_size"]
    table = LatencyTable(
        **key,
        head_counts=list(range(h + 1)),
        attention_ms=[0.5 * c for c in range(h + 1)],
        ffn_widths=[0, n],
        ffn_ms=[0.0, 2.0],
        other_ms=1.0,
    )
    path = table.save(tmp_path / "table.json")
    out = assets / "oneshot_latency"
    args = ["prune", "--model_name_or_path", str(assets / "bert"), "--train_file", str(assets / "texts.txt")]
    args += ["--oneshot", "--latency_budget", "0.3", "--latency_table", str(path)]
    args += ["--latency_table_batch_size", "1", "--latency_table_seq_len", "8"]
    args += ["--max_seq_length", "16", "--calibration_samples", "16", "--selection_batches", "0"]
    args += ["--output_dir", str(out), *QUIET]
    assert main(args) == 0
    capsys.readouterr()
    meta = json.loads((out / "oneshot_report.json").read_text())["plan"]["meta"]
    assert meta["latency_budget"] == 0.3 and meta["budget_met"]
    assert meta["latency_predicted_ms"] <= 0.7 * meta["latency_dense_ms"] + 1e-6
    plan = current_plan(load_pruned(out))
    assert table.predict(plan) == pytest.approx(meta["latency_predicted_ms"], abs=1e-3)
    stale = ["--latency_table_batch_size", "4"]  # the saved table is for batch 1: refused in one line
    assert (
        main([*args[: args.index("--latency_table_batch_size")], *stale, *args[args.index("--max_seq_length") :]]) == 2
    )
    assert "stale" in capsys.readouterr().err


def test_causal_lm_on_a_text_file_one_shot(assets, capsys):
    """The task comes from the model (a causal LM); --importance given explicitly wins over the one-shot default."""
    out = assets / "oneshot_gpt2"
    args = ["prune", "--model_name_or_path", str(assets / "gpt2"), "--train_file", str(assets / "texts.txt")]
    args += ["--oneshot", "--head_sparsity", "0.5", "--ffn_sparsity", "0.5", "--importance", "taylor"]
    args += ["--block_size", "16", "--reconstruct", "false", "--cache_dir", str(assets / "cache")]
    args += ["--ffn_multiple_of", "1"]  # exact counts below
    args += ["--validation_split_percentage", "20", "--output_dir", str(out), *QUIET]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| metric | dense | pruned |" in printed and "| perplexity | " in printed and f"saved {out}" in printed
    # issue 22: each step's seconds, peak memory and tokens/s, then the memory's kind
    assert "| step | seconds | peak memory | tokens/s |" in printed and "\npeak memory: " in printed
    steps = [line.split(" | ")[0].removeprefix("| ") for line in printed.splitlines() if line.startswith("| ")]
    assert {"score", "split", "prune", "total"} <= set(steps) and "reconstruct" not in steps
    model = load_pruned(out)
    assert type(model).__name__.endswith("GPT2LMHeadModel")
    plan = current_plan(model)
    assert (plan.num_heads, plan.num_neurons, plan.meta["method"]) == (6, 144, "taylor")
    report = json.loads((out / "oneshot_report.json").read_text())
    assert report["reconstruction"] is None and "reconstruct" not in report["seconds"]
    metrics = report["metrics"]  # evaluated on the held-out 20% before and after, as the trainer path names stages
    assert set(metrics) == {"dense", "pruned"}
    for stage in metrics:
        ppl = metrics[stage][f"{stage}_perplexity"]
        assert ppl == pytest.approx(math.exp(metrics[stage][f"{stage}_loss"])) and ppl > 1
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["heads"] == {"dense": 12, "pruned": 6}


def test_every_recipe_parses_for_prune(assets):
    """Every recipe of the two example scripts prune shares code with works with `hf-gradprune prune --config`."""
    skip = ("accelerate_configs", "random_bert.yaml")  # examples/prune_random_bert.py's: no data, other options
    recipes = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if not set(skip) & {*p.parts})
    assert len(recipes) >= 6
    for recipe in recipes:
        task = "text-generation" if recipe.parent.name in ("gpt2", "smollm2") else "text-classification"
        args = ["--config", str(recipe), "--task", task, "--model_name_or_path", str(assets / "bert")]
        args += ["--output_dir", str(assets / "o"), "--use_cpu", "true"]
        text = recipe.read_text()
        if task.startswith("text-c") and "task_name" not in text and ("train_file" not in text or ".cache/" in text):
            # the MiniLM recipes read the quickstart's data from .cache/ (after `make demo`): a fresh clone has none
            args += ["--train_file", str(assets / "train.csv")]
            args += ["--validation_file", str(assets / "train.csv")] if "validation_file" in text else []
        got_task, _, data, training, prune, _ = prune_command.prune_arguments(args)
        assert got_task == task and (training.plan_targets() or training.sparsifies_weights), recipe
        assert prune.oneshot == ("oneshot" in recipe.stem), recipe  # one-shot recipes say so in their name


def test_the_ffn_multiple_defaults_to_the_plans_constant(assets):
    from hf_gradprune.planning.plan import DEFAULT_FFN_MULTIPLE_OF

    args = ["--model_name_or_path", str(assets / "bert"), "--train_file", str(assets / "train.csv")]
    args += ["--output_dir", str(assets / "o"), "--use_cpu", "true", "--head_sparsity", "0.5"]
    *_, training, _, given = prune_command.prune_arguments(args)
    assert training.ffn_multiple_of == DEFAULT_FFN_MULTIPLE_OF == 64
    assert prune_command.oneshot_options(training, given)["ffn_multiple_of"] == DEFAULT_FFN_MULTIPLE_OF
    *_, training, _, given = prune_command.prune_arguments([*args, "--ffn_multiple_of", "1"])
    assert training.ffn_multiple_of == 1 and prune_command.oneshot_options(training, given)["ffn_multiple_of"] == 1


# ---------------------------------------------------------------------- convert-v4, bench, export
def test_convert_v4_then_info(tmp_path, capsys):
    from hf_gradprune.cli.convert_v4 import main as legacy_main

    dst = tmp_path / "converted"
    assert main(["convert-v4", str(FIXTURES / "v4_bert"), str(dst)]) == 0
    assert f"wrote {dst}" in capsys.readouterr().out
    assert main(["info", str(dst), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [r["heads"] for r in info["layers"]] == [1, 2, 4]  # tests/test_v4_compat.py's KEPT["bert"]
    # the first name of the command is the same function: same refusal, same exit code
    assert legacy_main([str(FIXTURES / "v4_bert"), str(dst)]) == 2
    assert "exists and is not empty" in error_line(capsys)
    # info on the v4 folder itself says to convert it
    assert main(["info", str(FIXTURES / "v4_bert")]) == 2
    assert "hf-gradprune convert-v4" in error_line(capsys)


def test_bench_on_a_pruned_folder(pruned_bert, capsys):
    args = ["bench", str(pruned_bert), "--batch_sizes", "1,2", "--seq_len", "8", "--repeats", "1"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dense"].startswith("random weights")
    assert [(r["batch_size"], r["seq_len"]) for r in report["latency"]] == [(1, 8), (2, 8)]
    assert all(r["dense_ms"] > 0 and r["pruned_ms"] > 0 and r["speedup"] > 0 for r in report["latency"])
    assert main([*args, "--dense", str(pruned_bert.parent / "bert")]) == 0
    text = capsys.readouterr().out
    assert "| batch | seq_len | dense ms | pruned ms | speedup |" in text and "| 2 | 8 |" in text


def test_bench_dense_model_has_the_original_shape(pruned_bert):
    from hf_gradprune.state import pruning_state

    config = load_pruned(pruned_bert).config
    dense = BertForSequenceClassification(info_command.original_config(config))
    state = pruning_state(dense)
    assert state.head_ids == [list(range(4))] * 3 and state.neuron_ids == [list(range(96))] * 3
    assert "gradprune" not in dense.config.to_dict() and "auto_map" not in dense.config.to_dict()


def test_info_and_bench_of_a_stock_uniform_llama(tmp_path, capsys):
    """A uniform grouped-query plan saves a stock checkpoint whose config holds the pruned head counts; info
    and bench still know the original shape (from config.gradprune)."""
    from test_llama import make_decoder

    from hf_gradprune import prune_model, save_pruned
    from hf_gradprune.state import pruning_state

    model = make_decoder()  # 8 query heads in 2 key/value groups, FFN 40, 3 layers
    dense_params = sum(p.numel() for p in model.parameters())
    g = pruning_state(model).geometry
    prune_model(model, PruningPlan(g, [[0, 1, 4, 5]] * 3, [list(range(0, 40, 2))] * 3))
    save_pruned(model, tmp_path / "llama")
    assert not (tmp_path / "llama" / "modeling_gradprune.py").exists()  # stock
    assert main(["info", str(tmp_path / "llama"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stock"] and info["pruned"] and info["kv_heads"] == {"dense": 6, "pruned": 6}
    assert info["heads"] == {"dense": 24, "pruned": 12} and info["ffn_neurons"] == {"dense": 120, "pruned": 60}
    assert info["params"] == {"dense": dense_params, "pruned": sum(p.numel() for p in model.parameters())}
    dense_config = info_command.original_config(model.config)
    assert (dense_config.num_attention_heads, dense_config.num_key_value_heads) == (8, 2)
    assert (dense_config.intermediate_size, dense_config.head_dim) == (40, 8)
    assert main(["bench", str(tmp_path / "llama"), "--batch_sizes", "1", "--seq_len", "8", "--repeats", "1"]) == 0
    assert "| 1 | 8 |" in capsys.readouterr().out


def test_export_onnx(pruned_bert, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pytest.importorskip("hf_gradprune.deploy.onnx_export")
    out = tmp_path / "onnx"
    assert main(["export", "onnx", str(pruned_bert), str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "sequence-classification" and 0 <= report["max_abs_diff"] <= 1e-4
    assert (out / "model.onnx").exists() and (out / "tokenizer.json").exists()
    assert main(["export", "onnx", str(pruned_bert), str(out)]) == 2  # refused before any export work
    assert "give --overwrite" in error_line(capsys)


# ---------------------------------------------------------------------- bad input
# (options over the base run's; None drops one, True is a flag without value), what the error line says
BAD_PRUNE = [
    ({"--flops_budget": "1.5"}, "flops_budget must be a fraction in [0, 1)"),
    ({"--flops_budget": "0.5", "--head_sparsity": "0.3"}, "flops_budget cannot be combined with head_sparsity"),
    ({"--head_sparsity": None}, "give a target"),
    ({"--task": "translation"}, "--task must be one of text-classification"),
    ({"--task_name": "sst3", "--train_file": None}, "unknown GLUE task 'sst3'"),
    ({"--train_file": "{tmp}/missing.csv"}, "missing.csv: no such data file"),
    ({"--train_file": "{tmp}/data.xlsx"}, "data files must be .csv, .json or .jsonl"),
    ({"--model_name_or_path": "{tmp}/empty"}, "empty is not a model folder"),
    ({"--text_column": "review"}, "columns ['review'] are not in the data files"),
    ({"--output_dir": None}, "give --output_dir"),
    ({"--calibration_samples": "0"}, "--calibration_samples must be an integer >= 1"),
    ({"--not_an_option": "1"}, "not_an_option"),
    ({"--config": "{tmp}/missing.yaml"}, "no such recipe file"),
    ({"--head_sparsity": None, "--latency_budget": "0.3", "--latency_table": None}, "latency_budget needs"),
]


@pytest.mark.parametrize("options, message", BAD_PRUNE, ids=[m for _, m in BAD_PRUNE])
def test_bad_prune_input_is_one_line_and_exit_code_2(assets, tmp_path, options, message, capsys):
    (tmp_path / "empty").mkdir()
    base = {"--model_name_or_path": str(assets / "bert"), "--train_file": str(assets / "train.csv")}
    base |= {"--text_column": "sentence", "--head_sparsity": "0.5", "--output_dir": str(tmp_path / "out")}
    argv = ["prune", *QUIET]
    for flag, value in (base | options).items():
        if value is True:
            argv.append(flag)
        elif value is not None:
            argv += [flag, value.format(tmp=tmp_path)]
    assert main(argv) == 2
    line = error_line(capsys)
    assert line.startswith("hf-gradprune prune: error: ") and message in line, line
    assert not (tmp_path / "out").exists()  # nothing was written


BAD_OTHER = [
    (["info", "{tmp}/nothing"], "nothing: no such folder"),
    (["info", "{tmp}/empty"], "is not a model folder: it has no config.json"),
    (["info", "{tmp}/file.txt"], "file.txt is a file, not a model folder"),
    (["info", "{assets}/bert", "--seq_len", "0"], "argument --seq_len: expected an integer >= 1"),
    (["info", "{assets}/bert", "--bogus"], "unrecognized arguments: --bogus"),
    (["bench", "{assets}/bert"], "is not pruned: there is no dense model to compare it with"),
    (["bench", "{assets}/pruned_bert", "--seq_len", "1000"], "longer than the model's 64 position embeddings"),
    (["bench", "{assets}/pruned_bert", "--batch_sizes", "1,x"], "argument --batch_sizes: expected comma-separated"),
    (["export"], "the following arguments are required: <format>"),
    (["export", "onnx", "{tmp}/empty", "{tmp}/out"], "is not a model folder"),
    (["convert-v4", "{assets}/bert", "{tmp}/out"], "has no pruned_heads, so this is not a v4 pruned folder"),
    (["convert-v4", "{tmp}/nothing", "{tmp}/out"], "nothing"),
    (["convert-v4", "{assets}/bert", "{tmp}/out", "--model_class", "NoSuchModel"], "no class 'NoSuchModel'"),
    (["nonsense"], "invalid choice: 'nonsense'"),
]


@pytest.mark.parametrize("argv, message", BAD_OTHER, ids=[m for _, m in BAD_OTHER])
def test_bad_input_of_the_other_commands(assets, pruned_bert, tmp_path, argv, message, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    argv = [a.format(tmp=tmp_path, assets=assets) for a in argv]
    assert main(argv) == 2
    line = error_line(capsys)
    command = {"nonsense": [], "export": argv[:2] if argv[1:2] == ["onnx"] else argv[:1]}.get(argv[0], argv[:1])
    assert line.startswith(f"{' '.join(['hf-gradprune', *command])}: error: ") and message in line, line
    assert not (tmp_path / "out").exists()


def test_a_bug_keeps_its_traceback(assets, monkeypatch):
    """Only the package's known input errors become one line; anything else propagates."""

    def broken(folder, seq_len=None):
        raise KeyError("a bug")

    monkeypatch.setattr(info_command, "folder_info", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["info", str(assets / "bert")])


# ---------------------------------------------------------------------- issue 20, case 11: bench and prune input
@pytest.fixture(scope="module")
def cut(tmp_path_factory):
    """A tiny BERT cut by prune_model (no training) and saved, its dense folder, a BERT of another shape, an
    empty folder and a file."""
    from hf_gradprune import prune_model, save_pruned
    from hf_gradprune.state import pruning_state

    tmp = tmp_path_factory.mktemp("cut")
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(vocab_size=5 + len(WORDS), num_labels=2))
    model.save_pretrained(tmp / "dense")
    g = pruning_state(model).geometry
    prune_model(model, PruningPlan(g, [[0, 1]] * g.num_layers, [list(range(48))] * g.num_layers))
    save_pruned(model, tmp / "pruned")
    config = tiny_bert_config(vocab_size=5 + len(WORDS), num_labels=2, intermediate_size=32)
    BertForSequenceClassification(config).save_pretrained(tmp / "other")
    (tmp / "empty").mkdir()
    (tmp / "file.txt").write_text("x")
    return tmp


def one_error_line(capsys, command: str) -> str:
    """stderr is exactly one line, ``hf-gradprune <command>: error: ...``, and no traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"hf-gradprune {command}: error: "), err
    assert "Traceback" not in err
    return err.strip()


def _no_such_accelerator() -> str:
    """A device this machine lacks: cuda without one, else one index past its last."""
    if not torch.accelerator.is_available():
        return "cuda"
    return f"{torch.accelerator.current_accelerator().type}:{torch.accelerator.device_count()}"


BAD_BENCH = [
    (["--dense", "{cut}/nothing"], "--dense {cut}/nothing: no such folder"),
    (["--dense", "{cut}/empty"], "empty is not a model folder: it has no config.json"),
    (["--dense", "{cut}/file.txt"], "file.txt is a file: give a model folder or a Hub model id"),
    (["--dense", "{cut}/other"], "is not the dense model of"),
    (["--device", "bogus"], "--device 'bogus' is not a torch device"),
    (["--device", "{missing}"], "--device {missing}: this machine has"),
]


@pytest.mark.parametrize("options, message", BAD_BENCH, ids=[m for _, m in BAD_BENCH])
def test_bad_bench_input_is_one_line_and_exit_code_2(cut, options, message, capsys):
    """Today these ended in a traceback (42 lines for a missing --dense folder) and exit code 1, or (a dense model
    of another shape) compared the wrong model without a word."""
    fill = {"cut": cut, "missing": _no_such_accelerator()}
    argv = ["bench", str(cut / "pruned"), "--batch_sizes", "1", "--seq_len", "8", "--repeats", "1"]
    argv += [o.format(**fill) for o in options]
    assert main(argv) == 2
    assert message.format(**fill) in one_error_line(capsys, "bench")


def test_bench_with_a_right_dense_folder_and_device_still_runs(cut, capsys):
    argv = ["bench", str(cut / "pruned"), "--batch_sizes", "1", "--seq_len", "8", "--repeats", "1", "--json"]
    assert main([*argv, "--dense", str(cut / "dense"), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["dense"] == str(cut / "dense")


def test_a_missing_dense_folder_from_the_shell(cut):
    """The issue's own run: the installed entry point, one line on stderr, exit code 2."""
    argv = [sys.executable, "-m", "hf_gradprune", "bench", str(cut / "pruned"), "--dense", str(cut / "nothing")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr == f"hf-gradprune bench: error: --dense {cut / 'nothing'}: no such folder; give the dense "
        "model's folder or its Hub id\n"
    )


CORRUPT_TABLES = [
    ("other_ms", None, []),
    ("attention_ms", [0.0, "x", 1.0, 1.5, 2.0], []),
    ("dense_measured_ms", float("nan"), ["--oneshot"]),
]


@pytest.mark.parametrize("field, value, extra", CORRUPT_TABLES, ids=[f for f, _, _ in CORRUPT_TABLES])
def test_prune_with_a_corrupt_latency_table_is_one_line(assets, tmp_path, field, value, extra, capsys):
    """A null or a string in the table gave a bare TypeError; a NaN dense time planned a model that removed
    nothing. Each is now refused by name before anything is loaded or written."""
    from transformers import AutoModelForSequenceClassification

    from hf_gradprune.deploy.latency import table_key

    key = table_key(AutoModelForSequenceClassification.from_pretrained(assets / "bert"), 1, 8)
    h, n = key["geometry"]["num_heads"], key["geometry"]["intermediate_size"]
    data = key | {"head_counts": list(range(h + 1)), "attention_ms": [0.5 * c for c in range(h + 1)]}
    data |= {"ffn_widths": [0, n], "ffn_ms": [0.0, 2.0], "other_ms": 1.0, "version": 1, field: value}
    (tmp_path / "table.json").write_text(json.dumps(data))
    capsys.readouterr()  # the progress bar of the load above
    argv = ["prune", "--model_name_or_path", str(assets / "bert"), "--train_file", str(assets / "train.csv")]
    argv += ["--text_column", "sentence", "--latency_budget", "0.3", "--latency_table", str(tmp_path / "table.json")]
    argv += ["--latency_table_batch_size", "1", "--latency_table_seq_len", "8", *extra]
    argv += ["--max_seq_length", "16", "--calibration_samples", "16", "--output_dir", str(tmp_path / "out"), *QUIET]
    assert main(argv) == 2
    line = one_error_line(capsys, "prune")
    assert f"latency table field {field}" in line and "measure the table again" in line, line
    assert not (tmp_path / "out").exists()


def test_oneshot_takes_the_gradient_checkpointing_flag(tmp_path):
    """Issue 22: `--gradient_checkpointing` (TrainingArguments') makes the one-shot scoring pass checkpoint."""
    from hf_gradprune import GradPruneConfig
    from hf_gradprune.cli.prune import oneshot_options

    on = GradPruneConfig(output_dir=str(tmp_path), head_sparsity=0.5, gradient_checkpointing=True)
    off = GradPruneConfig(output_dir=str(tmp_path), head_sparsity=0.5)
    assert oneshot_options(on, set())["gradient_checkpointing"] is True
    assert "gradient_checkpointing" not in oneshot_options(off, set())
