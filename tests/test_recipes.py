"""Every recipe parses with the dataclasses of the script it is for (unknown keys would be an error)."""

import math
import sys
from pathlib import Path

import pytest

from hf_gradprune import GradPruneConfig
from hf_gradprune.cli.runs import parse_args

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


# Training-set sizes of the tasks the iterative recipes train on (GLUE train splits), to count their steps.
TRAIN_EXAMPLES = {"sst2": 67349, "mrpc": 3668, "mnli": 392702, "qnli": 104743}
TRAINER_RECIPES = sorted(
    p for p in (ROOT / "recipes").rglob("*.yaml") if "pruning_schedule" in p.read_text()
)  # those GradPruneTrainer runs (not the accelerate configs, not random_bert.yaml)


def recipe_config(recipe, tmp_path) -> tuple[dict, GradPruneConfig]:
    import yaml

    values = yaml.safe_load(recipe.read_text())
    names = set(GradPruneConfig.__dataclass_fields__)
    kept = {k: v for k, v in values.items() if k in names and k not in ("output_dir", "bf16", "use_cpu", "max_steps")}
    return values, GradPruneConfig(output_dir=str(tmp_path), use_cpu=True, **kept)


def steps_on(values: dict, processes: int, examples: int) -> tuple[int, int]:
    """(batches per process and epoch, optimizer steps) as Trainer counts them under accelerate's sharding:
    the batches of the whole set, dealt out to the processes."""
    per_process = math.ceil(math.ceil(examples / values["per_device_train_batch_size"]) / processes)
    accumulation = values.get("gradient_accumulation_steps", 1)
    if values.get("max_steps", -1) > 0:
        return per_process, values["max_steps"]
    return per_process, math.ceil(values["num_train_epochs"] * max(per_process // accumulation, 1))


@pytest.mark.parametrize("recipe", TRAINER_RECIPES, ids=lambda p: p.parent.name + "/" + p.stem)
def test_every_recipe_says_which_launches_it_fits_and_fits_them(recipe, tmp_path, monkeypatch):
    """Issue 20: a shipped recipe runs on any number of processes, or says up front which it runs on."""
    values, config = recipe_config(recipe, tmp_path)
    header = "".join(line for line in recipe.read_text().splitlines(keepends=True) if line.startswith("#"))
    if values["pruning_schedule"] == "one_shot" and values.get("prune_step", 0) == 0:
        assert "on any number of processes" in header
        for processes in (1, 2, 8, 64):  # scoring before training reads a short share of the data again
            per_process, max_steps = steps_on(values, processes, 100 * processes)
            config.check_schedule(max_steps, per_process)
        return
    assert "on 1 to 8 processes" in header.replace("\n# ", " ")
    examples = TRAIN_EXAMPLES[values["task_name"]]
    for processes in range(1, 9):
        monkeypatch.setattr(GradPruneConfig, "world_size", property(lambda self, n=processes: n))
        per_process, max_steps = steps_on(values, processes, examples)
        config.check_schedule(max_steps, per_process)
        assert len(config.round_schedule(max_steps)) == values["num_rounds"], processes
    # and beyond: refused, saying why (the number of processes)
    monkeypatch.setattr(GradPruneConfig, "world_size", property(lambda self: 16))
    per_process, max_steps = steps_on(values, 16, examples)
    with pytest.raises(ValueError, match="Each of the 16 processes scores scoring_steps batches"):
        config.check_schedule(max_steps, per_process)


def test_mrpc_recipe_keeps_its_three_rounds_on_one_and_on_two_gpus(tmp_path):
    """The MRPC recipe refused two GPUs (a round at step 1000 of 575); its rounds now scale with the run."""
    values, config = recipe_config(ROOT / "recipes" / "bert-base-uncased" / "mrpc.yaml", tmp_path)
    one, two = (steps_on(values, n, TRAIN_EXAMPLES["mrpc"])[1] for n in (1, 2))
    assert (one, two) == (1150, 575)
    assert [s for s, _ in config.round_schedule(one)] == [0, 518, 1035]
    assert [s for s, _ in config.round_schedule(two)] == [0, 259, 518]
