"""What the example scripts share: command-line parsing (dataclasses through ``HfArgumentParser``, with an
optional ``--config recipe.yaml`` whose values become defaults that command-line flags override), the
optional dense fine-tune before pruning, and the run itself (evaluate, prune and recover, save, report)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser


@dataclass
class ModelArguments:
    """The model the example scripts prune."""

    model_name_or_path: str = field(metadata={"help": "Model id on the Hub or local folder."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloads and datasets are cached."})
    model_revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit)."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a classifier head whose label count differs from the data's."}
    )


@dataclass
class RunArguments:
    """What ``prune_and_report`` reads besides the training arguments; the scripts' data arguments extend it."""

    dense_train_epochs: float = field(
        default=0.0,
        metadata={"help": "Fine-tune the dense model for this many epochs first (0: prune the model as given)."},
    )
    dense_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the dense fine-tuning (default: --learning_rate)."}
    )
    latency_batch_sizes: str = field(default="1,32", metadata={"help": "Batch sizes of the latency comparison."})
    latency_repeats: int = field(default=10, metadata={"help": "Timed forward passes per latency measurement."})


NONE_WORDS = ("none", "null")


def _none_or(type_fn):
    """``type_fn`` that reads ``none`` / ``null`` (any case) as ``None``."""

    def parse(text):
        return None if isinstance(text, str) and text.lower() in NONE_WORDS else type_fn(text)

    parse.__name__ = getattr(type_fn, "__name__", "value")  # argparse's "invalid float value: ..." wording
    return parse


class _Parser(HfArgumentParser):
    """``HfArgumentParser`` where an option whose default is ``None`` also takes ``none`` / ``null``, so a
    recipe's value can be unset from the command line (``--head_sparsity null``). Options whose default is
    a string keep "none" as a string (``--report_to none``). A usage error is one line."""

    def error(self, message):
        # one line without the usage block: the scripts have hundreds of options; --help lists them
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")

    # HfArgumentParser adds one option per dataclass field here (a private hook; tests/test_examples.py and
    # tests/test_recipes.py fail if transformers changes it); we only wrap the type it chose.
    @staticmethod
    def _parse_dataclass_field(parser, dataclass_field):
        HfArgumentParser._parse_dataclass_field(parser, dataclass_field)
        action = parser._option_string_actions[f"--{dataclass_field.name}"]
        if dataclass_field.default is None and action.type is not None:
            action.type = _none_or(action.type)
            if action.choices is not None:
                action.choices = [*action.choices, None]


def read_recipe(path: str) -> dict:
    """The options of a ``--config`` recipe (a YAML mapping); ``ValueError`` for anything else."""
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping of option: value")
    return values


def parse_args(dataclass_types, args: list[str] | None = None, **parser_kwargs):
    """Parse ``args`` (default ``sys.argv[1:]``) into ``dataclass_types``; see the module docstring.

    Unknown YAML keys are an error that names them, as unknown flags are. ``none`` / ``null`` unset an
    optional value (one whose default is ``None``), as ``null`` does in YAML. ``parser_kwargs`` go to the
    ``ArgumentParser`` (``prog``, ``description``).
    """
    parser = _Parser(dataclass_types, **parser_kwargs)
    argv = list(sys.argv[1:] if args is None else args)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            parser.error("--config needs a path to a YAML recipe")
        path = argv[i + 1]
        del argv[i : i + 2]
        if not os.path.isfile(path):
            parser.error(f"--config {path}: no such recipe file")
        try:
            values = read_recipe(path)
        except (ValueError, yaml.YAMLError) as e:
            parser.error(" ".join(str(e).split()))
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"{path}: unknown option(s) {', '.join(unknown)}")  # error() points to --help
        parser.set_defaults(**values)
        for action in parser._actions:  # a value from the recipe satisfies a required option
            if action.dest in values:
                action.required = False
    return parser.parse_args_into_dataclasses(args=argv)


def finetune_dense(model, training_args, epochs: float, learning_rate: float | None, **trainer_kwargs) -> float:
    """Fine-tune the dense model first with a plain ``Trainer`` (no pruning, no saving); returns the train loss.

    The example scripts call this for ``--dense_train_epochs``; their own args give every other setting.
    """
    import dataclasses
    import os

    from transformers import Trainer

    args = dataclasses.replace(
        training_args,
        output_dir=os.path.join(training_args.output_dir, "dense"),
        num_train_epochs=epochs,
        max_steps=-1,
        learning_rate=learning_rate or training_args.learning_rate,
        save_strategy="no",
        push_to_hub=False,
        load_best_model_at_end=False,
        eval_strategy="no",
    )
    return Trainer(model=model, args=args, **trainer_kwargs).train().training_loss


def prune_and_report(
    model,
    training_args,
    run_args: RunArguments,
    results: dict,
    *,
    base_model: str,
    card_dataset: str,
    card_task: str,
    latency_seq_len: int,
    stage_extras=None,
    **trainer_kwargs,
) -> dict:
    """The example scripts' run once data and model are ready: the optional dense fine-tune, evaluate the
    dense model, prune and recover with ``GradPruneTrainer``, evaluate again, save the Hub folder, then (main
    process) measure latency, write the reports and print the summary. Fills and returns ``results``, flat
    in the key scheme of ``run_report`` (``dense_accuracy``, ``pruned_accuracy``, ``recovered_accuracy``, ...;
    with ``reconstruct`` on, also ``reconstructed_accuracy``: the one-shot model after reconstruction).

    ``stage_extras(metrics, stage)`` returns more metrics of a stage from its evaluation (e.g. perplexity
    from the loss).
    """
    import copy
    import dataclasses

    from transformers.trainer_utils import enable_full_determinism, set_seed

    from ..reports.run_report import format_summary, stage_metrics, write_run_report
    from ..surgery import current_plan
    from ..training.trainer import GradPruneTrainer

    args = dataclasses.replace(training_args, evaluate_after_prune=True)
    args.model_card_dataset = args.model_card_dataset or card_dataset
    args.model_card_task = args.model_card_task or card_task
    trainer = GradPruneTrainer(model=model, args=args, **trainer_kwargs)
    trainer.base_model_name = base_model
    if run_args.dense_train_epochs > 0:
        trainer.check_schedule()  # a schedule the data cannot give fails now, not after the dense fine-tune
        # The same model object: the pruning trainer then starts from the fine-tuned weights.
        results["dense_train_loss"] = finetune_dense(
            model, training_args, run_args.dense_train_epochs, run_args.dense_learning_rate, **trainer_kwargs
        )
        # A Trainer seeds the process when it is built (transformers' own rule, repeated here): this one was built
        # before the fine-tune, so seed again, and pruning and recovery draw what they drew when it was built after.
        enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
    dense_model = copy.deepcopy(model).eval()  # for the latency comparison
    stages = {}  # stage -> its evaluation (the metrics keep the stage as prefix)
    if trainer.eval_dataset is not None:
        stages["dense"] = trainer.evaluate(metric_key_prefix="dense")
    results.update(stage_metrics(trainer.train().metrics, "train"))
    if trainer.pruned_metrics:
        # GradPruneTrainer evaluates with the prefix "pruned" (and "reconstructed" after reconstruction) in
        # one entry per round; copies, so the stage extras below do not write into the trainer's record.
        last = trainer.pruned_metrics[-1]
        stages["pruned"] = dict(last)
        if stage_metrics(last, "reconstructed"):
            stages["reconstructed"] = dict(last)
    if trainer.eval_dataset is not None:
        stages["recovered"] = trainer.evaluate(metric_key_prefix="recovered")
    if stage_extras is not None:
        extras = {}
        for stage, metrics in stages.items():
            extra = stage_extras(metrics, stage)
            metrics.update(extra)
            extras.update(extra)
        if extras:
            trainer.log(extras)  # to report_to, and into the model card's evaluation list
    for stage, metrics in stages.items():
        results.update(stage_metrics(metrics, stage))
    trainer.save_model()  # output_dir: config + weights + modeling_gradprune.py + tokenizer + README.md

    if trainer.is_world_process_zero():
        report = write_run_report(
            trainer, dense_model, results, run_args.latency_batch_sizes, latency_seq_len, run_args.latency_repeats
        )
        print(format_summary(stages, results, trainer.dense_plan, current_plan(trainer.model), report))
    if args.push_to_hub:
        trainer.push_to_hub()
    return results
