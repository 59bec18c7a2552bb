"""What the example scripts share: command-line parsing (dataclasses through ``HfArgumentParser``, with an
optional ``--config recipe.yaml`` whose values become defaults that command-line flags override) and the
optional dense fine-tune before pruning."""

from __future__ import annotations

import sys

import yaml
from transformers import HfArgumentParser


def parse_args(dataclass_types, args: list[str] | None = None):
    """Parse ``args`` (default ``sys.argv[1:]``) into ``dataclass_types``; see the module docstring.

    Unknown YAML keys are an error that names them, as unknown flags are.
    """
    parser = HfArgumentParser(dataclass_types)
    argv = list(sys.argv[1:] if args is None else args)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            parser.error("--config needs a path to a YAML recipe")
        path = argv[i + 1]
        del argv[i : i + 2]
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            parser.error(f"{path}: a recipe is a YAML mapping of option: value")
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"{path}: unknown option(s) {', '.join(unknown)}; see --help for the valid ones")
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
