import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from hf_gradprune.cli import parse_args  # noqa: E402


def test_random_bert_example_runs_end_to_end(tmp_path):
    import prune_random_bert

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
    assert out["params_after"] < out["params_before"]
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
