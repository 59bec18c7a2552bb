"""``hf-gradprune prune``: a model pruned on data to a target, saved as a Hub folder.

It parses the example scripts' dataclasses (``runs.ModelArguments``, the data arguments of ``data.py``,
``GradPruneConfig``) plus ``PruneArguments`` with ``runs.parse_args``, so every recipe works with ``--config`` here
as in the scripts, and runs the scripts' own code (``runs.prune_and_report``), or ``prune_oneshot`` with
``--oneshot`` or on unlabelled text. One-shot weight sparsity (``--weight_sparsity`` / ``--sparsity_pattern``,
``--weight_method``, ``--sparsity_scope``) runs ``prune_weights_oneshot`` alone when no unit target is given, else
after the unit cut in the same ``prune_oneshot`` call (hybrid). The weight sparsity reached is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field

from .inputs import PROG, CommandError, model_config, one_line


@dataclass
class PruneArguments:
    """What ``hf-gradprune prune`` adds to the example scripts' arguments."""

    task: str | None = field(
        default=None,
        metadata={
            "help": "text-classification (GLUE or CSV/JSON files, as examples/run_glue_prune.py) or text-generation "
            "(text files or a Hub dataset cut into blocks, as examples/run_clm_prune.py). Default: "
            "text-classification with --task_name, else from the model's config (a causal LM: text-generation)."
        },
    )
    oneshot: bool = field(
        default=False,
        metadata={
            "help": "Prune without training: hf_gradprune.prune_oneshot on calibration batches of the training data "
            "(score, split the budget, prune, reconstruct), then save. A classifier whose data has no label column "
            "is always pruned this way. Its defaults are prune_oneshot's: --importance fisher, reconstruction and "
            "rearrangement each kept only when it lowers the loss of the last --selection_batches calibration batches "
            "(--reconstruct true|false fixes it; --selection_batches 0: reconstruction on, no rearrangement), "
            "a flops/params budget split by calibration-loss search (--budget_split ratio|normalized instead); "
            "options given explicitly win."
        },
    )
    calibration_samples: int = field(
        default=512,
        metadata={"help": "One-shot: training examples (text-generation: blocks) to calibrate on."},
    )

    def __post_init__(self):
        from .data import TASKS

        if self.task is not None and self.task not in TASKS:
            raise CommandError(f"--task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if isinstance(self.calibration_samples, bool) or self.calibration_samples < 1:
            raise CommandError(f"--calibration_samples must be an integer >= 1, got {self.calibration_samples!r}")


PRUNE_DESCRIPTION = (
    "Prune a model on data to a target and save a Hub folder (config, weights, modeling_gradprune.py, tokenizer). "
    "With labels: the run of examples/run_glue_prune.py / run_clm_prune.py (evaluate, prune with "
    "GradPruneTrainer, recover by training, evaluate, save, report). With --oneshot, or a classifier on unlabelled "
    "text: prune_oneshot, no training. Give one target: --head_sparsity and/or --ffn_sparsity, or one of "
    "--flops_budget / --params_budget / --latency_budget; and/or weight sparsity: --weight_sparsity (a fraction) or "
    "--sparsity_pattern 2:4 / 4:8 (with --oneshot: --weight_method wanda by default, or magnitude, taylor, fisher; "
    "weights only, or after the unit cut). --config recipe.yaml gives "
    "defaults that flags override. The data options below are those of --task text-classification; "
    "`hf-gradprune prune --task text-generation --help` lists those of text-generation."
)


def options_given(argv: list[str]) -> set[str]:
    """Option names set on the command line or in its ``--config`` recipe (not left at their defaults)."""
    from .runs import read_recipe

    # HfArgumentParser takes --output-dir for --output_dir too
    given = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        path = argv[argv.index("--config") + 1]
        if os.path.isfile(path):
            given |= set(read_recipe(path))
    return given


def prune_task(argv: list[str]) -> str:
    """The task: ``--task``, else classification for a GLUE ``--task_name``, else the model's own kind."""
    import yaml

    from .data import TASKS, TEXT_CLASSIFICATION, TEXT_GENERATION
    from .runs import read_recipe

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in ("--config", "--task", "--task_name", "--model_name_or_path", "--cache_dir"):
        pre.add_argument(*dict.fromkeys((name, name.replace("_", "-"))))  # HfArgumentParser's dashed aliases too
    known, _ = pre.parse_known_args(argv)
    recipe = {}
    if known.config and os.path.isfile(known.config):
        try:
            recipe = read_recipe(known.config)
        except (ValueError, yaml.YAMLError):
            pass  # the full parse reports a bad recipe in its own words
    task = known.task or recipe.get("task")
    if task is not None:
        if task not in TASKS:
            raise CommandError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
        return task
    if known.task_name or recipe.get("task_name"):
        return TEXT_CLASSIFICATION
    model = known.model_name_or_path or recipe.get("model_name_or_path")
    if model is None or "-h" in argv or "--help" in argv:
        return TEXT_CLASSIFICATION  # the full parse asks for the model
    architectures = model_config(model, known.cache_dir or recipe.get("cache_dir")).architectures or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    return TEXT_GENERATION if causal else TEXT_CLASSIFICATION


def prune_arguments(argv: list[str]):
    """``hf-gradprune prune``'s arguments: ``(task, model_args, data_args, training_args, prune_args, given)``,
    ``given`` the option names set on the command line or in the recipe. Checks them (and that the model's
    config reads) before anything is loaded."""
    from ..training.config import GradPruneConfig
    from .data import TEXT_CLASSIFICATION, CausalLMDataArguments, ClassificationDataArguments
    from .runs import ModelArguments, parse_args

    task = prune_task(argv)
    data_class = ClassificationDataArguments if task == TEXT_CLASSIFICATION else CausalLMDataArguments
    types = (ModelArguments, data_class, GradPruneConfig, PruneArguments)
    try:
        model_args, data_args, training_args, prune_args = parse_args(
            types, argv, prog=f"{PROG} prune", description=PRUNE_DESCRIPTION
        )
    except (ValueError, OSError) as e:
        # raised by the argument dataclasses' own checks (targets, files, options): the input's fault
        raise CommandError(one_line(e)) from e
    given = options_given(argv)
    if "output_dir" not in given:
        raise CommandError("give --output_dir: the folder the pruned model is saved to")
    for path in (data_args.train_file, data_args.validation_file):
        if path is not None and not os.path.isfile(path):
            raise CommandError(f"{path}: no such data file; check --train_file / --validation_file")
    model_config(model_args.model_name_or_path, model_args.cache_dir)  # a bad model fails before any data work
    return task, model_args, data_args, training_args, prune_args, given


def command(argv: list[str]) -> int:
    """``hf-gradprune prune ARGV``: the example scripts' run, or ``prune_oneshot``; saves the folder."""
    from transformers import set_seed

    from .data import TEXT_CLASSIFICATION, prepare_causal_lm, prepare_classification
    from .runs import prune_and_report

    task, model_args, data_args, training_args, prune_args, given = prune_arguments(argv)
    if prune_args.oneshot:
        oneshot_options(training_args, given)  # refuses what prune_oneshot cannot do before any loading
        weight_options(training_args, given)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)
    if task == TEXT_CLASSIFICATION:
        run = prepare_classification(model_args, data_args, training_args, labels_required=False)
    else:
        run = prepare_causal_lm(model_args, data_args, training_args)
    if not run.labelled and not prune_args.oneshot:
        print(
            f"{PROG} prune: the data has no label column {data_args.label_column!r}: pruning without training "
            "(one-shot, as --oneshot)",
            file=sys.stderr,
        )
    if prune_args.oneshot or not run.labelled:
        _prune_oneshot(run, training_args, prune_args, given)
    else:
        prune_and_report(run.model, training_args, data_args, run.results, **run.report_kwargs())
    print_weight_sparsity(training_args.output_dir)
    return 0


# prune_weights_oneshot's names for GradPruneConfig's weight-sparsity options
WEIGHT_OPTIONS = {
    "weight_sparsity": "sparsity",
    "sparsity_pattern": "pattern",
    "weight_method": "method",
    "sparsity_scope": "scope",
    "sparsity_extra_modules": "extra_modules",
}


def weight_options(training_args, given: set[str]) -> dict:
    """One-shot weight sparsity's options from ``GradPruneConfig`` (``prune_oneshot``'s names), checked; ``{}``
    when off. ``--weight_method`` and ``--sparsity_scope`` keep the one-shot defaults (wanda, the method's own
    scope) unless given: the config's defaults are the gradual run's."""
    if not getattr(training_args, "sparsifies_weights", False):
        return {}
    from ..oneshot.weights import check_weight_options

    options = {
        "weight_sparsity": training_args.weight_sparsity,
        "sparsity_pattern": training_args.sparsity_pattern,
        "weight_method": training_args.weight_method if "weight_method" in given else "wanda",
        "sparsity_scope": training_args.sparsity_scope if "sparsity_scope" in given else None,
    }
    try:
        check_weight_options(*options.values())
    except ValueError as e:
        raise CommandError(one_line(e)) from e
    if training_args.sparsity_extra_modules:
        options["sparsity_extra_modules"] = tuple(training_args.sparsity_extra_modules)
    return options


def _check_weight_targets(model, options: dict) -> None:
    """A pattern the model's widths cannot hold, or an unknown extra module: one line, before any change."""
    from ..sparsity import check_targets, weight_targets

    try:
        check_targets(weight_targets(model, options.get("sparsity_extra_modules", ())), options["sparsity_pattern"])
    except ValueError as e:
        raise CommandError(one_line(e)) from e


def print_weight_sparsity(folder: str) -> None:
    """The weight sparsity the saved folder's config records (nothing when it records none)."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        record = (json.load(f).get("gradprune") or {}).get("weight_sparsity")
    if isinstance(record, dict):
        scope = f", scope {record['scope']}" if record.get("scope") else ""
        print(
            f"weight sparsity: {record.get('measured', 0):.2%} of {len(record.get('targets', []))} matrices "
            f"({record.get('pattern')}, target {record.get('sparsity', 0):.2%}, {record.get('method')}{scope})"
        )


def oneshot_options(training_args, given: set[str], model=None) -> dict:
    """``prune_oneshot``'s keyword arguments from the parsed ``GradPruneConfig``: its targets and plan options;
    importance, reconstruction and the budget split keep ``prune_oneshot``'s defaults unless ``given``. With a
    ``model``, a ``latency_budget``'s table is loaded or measured for it (``latency.latency_table_for``)."""
    options = dict(
        **training_args.plan_targets(),
        ranking=training_args.ranking,
        normalize_heads=training_args.normalize_head_scores,
        min_heads_per_layer=training_args.min_heads_per_layer,
        min_ffn_per_layer=training_args.min_ffn_per_layer,
        ffn_multiple_of=training_args.ffn_multiple_of,
        attention_unit=training_args.attention_unit,
        uniform=training_args.uniform,
        seq_len=training_args.flops_seq_len,
        bias_compensation=training_args.bias_compensation,
        reconstruct_batches=training_args.reconstruct_batches,
    )
    if training_args.balanced:
        options["balanced"] = True
    if training_args.latency_budget is not None and model is not None:
        from ..deploy.latency import latency_table_for

        options["latency_table"] = latency_table_for(
            model,
            training_args.latency_table,
            training_args.latency_table_batch_size,
            training_args.latency_table_seq_len,
        )
    if "importance" in given:
        options["method"] = training_args.importance
    if "reconstruct" in given:
        options["reconstruct"] = training_args.reconstruct
    if training_args.selection_batches >= 1:
        options["selection_batches"] = training_args.selection_batches
    elif "reconstruct" not in given:  # 0 held out: nothing to choose by, so the one-shot default steps are done
        options.update(reconstruct=True, rearrange=False)
    if training_args.budget_split is not None:
        options["split"] = training_args.budget_split
    if training_args.gradient_checkpointing:  # TrainingArguments' flag: scoring recomputes activations (non-reentrant)
        options["gradient_checkpointing"] = True
    return options


def _prune_oneshot(run, training_args, prune_args: PruneArguments, given: set[str]) -> None:
    """``prune_oneshot`` on the first ``calibration_samples`` training examples, evaluated before and after when
    there is labelled evaluation data, saved with its tokenizer and ``oneshot_report.json``."""
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    from ..folders.hub import save_pruned
    from ..modeling_gradprune import write_folder
    from ..oneshot.prune import prune_oneshot
    from ..oneshot.report import steps_table
    from ..oneshot.weights import prune_weights_oneshot
    from ..reports.run_report import metric_rows, stage_columns, summary_table
    from ..surgery import summarize

    model = run.model.to(training_args.device)
    weights = weight_options(training_args, given)
    units = any(v is not None for v in training_args.plan_targets().values())
    if weights:
        _check_weight_targets(model, weights)
    options = oneshot_options(training_args, given, model) if units or not weights else {}
    train = run.train_dataset
    calibration = train.select(range(min(prune_args.calibration_samples, len(train))))
    loader = DataLoader(
        calibration,
        batch_size=training_args.per_device_train_batch_size,
        collate_fn=run.data_collator or default_data_collator,
    )
    evaluate = _evaluator(run, training_args)
    stages = {}
    if evaluate is not None:
        stages["dense"] = evaluate(model, "dense")
    if options:
        model, report = prune_oneshot(model, loader, **options, **weights)
        weight_report = getattr(report, "weights", None)
    else:  # weights only
        report = weight_report = prune_weights_oneshot(
            model, loader, **{WEIGHT_OPTIONS[k]: v for k, v in weights.items()}
        )
    after = "reconstructed" if getattr(report, "reconstruction", None) is not None else "pruned"
    if evaluate is not None:
        stages[after] = evaluate(model, after)
    out = training_args.output_dir
    save_pruned(model, out, tokenizer=run.tokenizer)

    def write_report(folder: str) -> None:
        given_options = {k: v for k, v in {**options, **weights}.items() if k != "latency_table"}  # in the plan's meta
        info = {"calibration_samples": len(calibration), "options": given_options, "metrics": stages}
        info.update(report.to_dict())
        with open(os.path.join(folder, "oneshot_report.json"), "w") as f:
            json.dump(info, f, indent=2, default=str)

    write_folder(out, write_report)  # atomic, next to the model's files (which it keeps)
    if options:
        print(summarize(model, options["seq_len"]))
    if stages:
        columns = stage_columns(stages)
        keep = [0, *(i + 1 for i, stage in enumerate(columns) if stage in stages)]
        rows = [tuple(row[i] for i in keep) for row in metric_rows(stages)]
        print(summary_table(rows, ("metric", *(c for c in columns if c in stages))))
    print(f"one-shot on {len(calibration)} calibration examples:")
    if options:
        print(steps_table(report))
        selection = getattr(report, "selection", None)
        if selection:
            losses = ", ".join(f"{c['name']} {c['loss']:.4g}" for c in selection["candidates"])
            print(
                f"kept by held-out loss ({selection['held_out_batches']} batches, {selection['forwards']} forwards): "
                f"{selection['chosen']} ({losses})"
            )
    if weight_report is not None:
        print(weight_report.summary())
    print(f"saved {out}")


def _evaluator(run, training_args):
    """``evaluate(model, stage) -> metrics`` on the run's evaluation data with ``Trainer``, or None without
    labelled evaluation data."""
    if run.eval_dataset is None or not run.labelled:
        return None
    from transformers import Trainer

    def evaluate(model, stage: str) -> dict:
        trainer = Trainer(
            model=model,
            args=training_args,
            eval_dataset=run.eval_dataset,
            data_collator=run.data_collator,
            processing_class=run.tokenizer,
            **run.trainer_kwargs,
        )
        metrics = trainer.evaluate(metric_key_prefix=stage)
        if run.stage_extras is not None:
            metrics.update(run.stage_extras(metrics, stage))
        return metrics

    return evaluate
