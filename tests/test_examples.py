import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from hf_gradprune.cli.runs import parse_args  # noqa: E402


def test_random_bert_example_runs_end_to_end(tmp_path, monkeypatch):
    import prune_random_bert

    from hf_gradprune.deploy import latency

    timed = []  # the example times with the package's one timer, not a copy of its own

    def measure(model, batch_size, seq_len, *args, **kwargs):
        timed.append((batch_size, seq_len, sum(p.numel() for p in model.parameters())))
        return latency.measure_latency(model, batch_size, seq_len, *args, **kwargs)

    monkeypatch.setattr(prune_random_bert, "measure_latency", measure)
    out = prune_random_bert.main(
        [
            "--config",
            str(ROOT / "recipes" / "random_bert.yaml"),
            "--output_dir",
            str(tmp_path / "out"),
            "--hidden_size",
            "64",
            "--num_heads",
            "4",
            "--intermediate_size",
            "128",
            "--num_layers",
            "2",
            "--scoring_batches",
            "2",
            "--seq_len",
            "16",
        ]
    )
    assert out["reload_max_diff"] == 0.0
    assert out["pruned_params"] < out["dense_params"]
    assert timed == [(8, 16, out["dense_params"]), (8, 16, out["pruned_params"])]
    assert out["dense_ms"] > 0 and out["pruned_ms"] > 0
    assert (tmp_path / "out" / "modeling_gradprune.py").exists()


def test_yaml_gives_defaults_and_flags_override(tmp_path):
    from prune_random_bert import ExampleArguments

    recipe = tmp_path / "r.yaml"
    recipe.write_text("head_sparsity: 0.3\nmethod: fisher\n")
    (ex,) = parse_args(ExampleArguments, ["--config", str(recipe), "--method", "magnitude"])
    assert ex.head_sparsity == 0.3 and ex.method == "magnitude"


def test_unknown_yaml_key_is_an_error(tmp_path, capsys):
    from prune_random_bert import ExampleArguments

    recipe = tmp_path / "r.yaml"
    recipe.write_text("head_sparsity: 0.3\nhead_sparsty: 0.4\n")
    with pytest.raises(SystemExit):
        parse_args(ExampleArguments, ["--config", str(recipe)])
    assert "head_sparsty" in capsys.readouterr().err


@pytest.mark.parametrize("word", ["null", "none", "NULL", "None"])
def test_none_or_null_unsets_an_optional_value(tmp_path, word):
    from prune_random_bert import ExampleArguments
    from run_glue_prune import DataTrainingArguments, ModelArguments

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: m\ntrain_file: t.csv\nmax_train_samples: 100\ndense_learning_rate: 0.1\n")
    _, data = parse_args(
        (ModelArguments, DataTrainingArguments),
        ["--config", str(recipe), "--max_train_samples", word, "--dense_learning_rate", word],
    )
    assert data.max_train_samples is None and data.dense_learning_rate is None
    recipe.write_text(f"model_name_or_path: m\ntrain_file: t.csv\nmax_train_samples: {word}\nmax_eval_samples: null\n")
    _, data = parse_args((ModelArguments, DataTrainingArguments), ["--config", str(recipe)])
    assert data.max_train_samples is None and data.max_eval_samples is None  # in a recipe too
    # an option with a non-None default has no "unset": none is not a float there
    with pytest.raises(SystemExit):
        parse_args(ExampleArguments, ["--head_sparsity", word])


def test_a_bad_value_still_names_its_type(capsys):
    from run_glue_prune import DataTrainingArguments, ModelArguments

    with pytest.raises(SystemExit):
        parse_args((ModelArguments, DataTrainingArguments), ["--model_name_or_path", "m", "--max_train_samples", "nul"])
    assert "invalid int value: 'nul'" in capsys.readouterr().err
