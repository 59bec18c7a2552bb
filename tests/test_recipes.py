"""Every recipe parses with the dataclasses of the script it is for (unknown keys would be an error)."""

import sys
from pathlib import Path

import pytest

from hf_gradprune import GradPruneConfig
from hf_gradprune.cli import parse_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

GLUE_RECIPES = sorted((ROOT / "recipes" / "bert-base-uncased").glob("*.yaml"))


@pytest.mark.parametrize("recipe", GLUE_RECIPES, ids=lambda p: p.stem)
def test_glue_recipes_parse(recipe, tmp_path):
    from run_glue_prune import DataTrainingArguments, ModelArguments

    model, data, train = parse_args(
        (ModelArguments, DataTrainingArguments, GradPruneConfig),
        ["--config", str(recipe), "--output_dir", str(tmp_path), "--use_cpu", "true"],  # bf16 recipes, no GPU here
    )
    assert model.model_name_or_path == "bert-base-uncased" and data.task_name == recipe.stem
    assert train.flops_budget is not None and train.effective_distill_alpha > 0


def test_quickstart_recipe_parses(tmp_path):
    from run_glue_prune import DataTrainingArguments, ModelArguments

    model, data, train = parse_args(
        (ModelArguments, DataTrainingArguments, GradPruneConfig),
        [
            "--config",
            str(ROOT / "recipes" / "quickstart.yaml"),
            "--model_name_or_path",
            "x",
            "--train_file",
            str(tmp_path / "t.csv"),
        ],
    )
    assert (train.head_sparsity, train.ffn_sparsity, train.prune_step) == (0.5, 0.5, 0)
    assert data.dense_train_epochs == 1


def test_accelerate_configs_are_valid_yaml():
    import yaml

    for name in ("cpu", "single_gpu", "multi_gpu"):
        cfg = yaml.safe_load((ROOT / "recipes" / "accelerate_configs" / f"{name}.yaml").read_text())
        assert cfg["num_processes"] >= 1 and "distributed_type" in cfg


def test_a_budget_wins_once_the_recipes_sparsities_are_unset(tmp_path):
    """``--head_sparsity null`` unsets a recipe's value, so a budget from the command line can replace it."""
    from run_glue_prune import DataTrainingArguments, ModelArguments

    types = (ModelArguments, DataTrainingArguments, GradPruneConfig)
    base = ["--config", str(ROOT / "recipes" / "quickstart.yaml"), "--model_name_or_path", "x"]
    base += ["--train_file", str(tmp_path / "t.csv"), "--output_dir", str(tmp_path), "--flops_budget", "0.5"]
    _, _, train = parse_args(types, base + ["--head_sparsity", "null", "--ffn_sparsity", "None"])
    assert (train.head_sparsity, train.ffn_sparsity, train.flops_budget) == (None, None, 0.5)
    assert train.plan_targets() == {"flops_budget": 0.5}
    assert train.report_to == []  # the recipe's "report_to: none" is a string value, not an unset
    # a recipe value left in place still clashes with the budget, and the error names it
    with pytest.raises(ValueError, match="ffn_sparsity"):
        parse_args(types, base + ["--head_sparsity", "null"])
