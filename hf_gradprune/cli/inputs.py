"""What every ``hf-gradprune`` command shares: its name, ``CommandError`` and the one-line report of bad input,
the checks of a model folder and its config, and the argparse types of counts.

Errors: what the user gave and the package refuses (a bad path, target, task, option, folder or data) is one
line on stderr, ``hf-gradprune <command>: error: ...``, and exit code 2, argparse's own code for bad usage.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

PROG = "hf-gradprune"
NOT_PRUNED = "not pruned"


class CommandError(ValueError):
    """Input the command refuses; reported as one line on stderr with exit code 2."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The package's own errors for bad input (imported here: ``--help`` stays light)."""
    from ..architectures import UnsupportedModelError
    from ..deploy.latency import LatencyTableError
    from ..folders.checkpoint import CheckpointError
    from ..oneshot.calibration import CalibrationError
    from ..planning.plan import PlanError
    from .data import DataError

    return (
        CommandError,
        PlanError,
        CalibrationError,
        CheckpointError,
        DataError,
        UnsupportedModelError,
        LatencyTableError,
    )


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def run_command(name: str, func, arg) -> int:
    """``func(arg)``, the package's errors for bad input printed as one line with exit code 2."""
    try:
        return func(arg)
    except user_errors() as e:
        print(f"{PROG} {name}: error: {one_line(e)}", file=sys.stderr)
        return 2


def exit_code(stop: SystemExit) -> int:
    """argparse's exit (``--help``: 0, a usage error: 2) as a return code."""
    return stop.code if isinstance(stop.code, int) else 1


class OneLineErrorParser(argparse.ArgumentParser):
    """A usage error is one line (``prog: error: ...``), without the usage block; exit code 2 as argparse."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def model_config(model: str, cache_dir: str | None = None):
    from transformers import AutoConfig

    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "config.json")):
        raise CommandError(f"{model} is not a model folder: it has no config.json")
    try:
        return AutoConfig.from_pretrained(model, cache_dir=cache_dir)
    except (OSError, ValueError) as e:  # transformers' words for a missing or unreadable model
        raise CommandError(f"cannot read the config of model {model!r}: {one_line(e)}") from e


def model_folder(path: str) -> str:
    """``path`` if it is a folder with a ``config.json``, else a ``CommandError`` saying what it is."""
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such folder")
    if not os.path.isdir(path):
        raise CommandError(f"{path} is a file, not a model folder")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CommandError(f"{path} is not a model folder: it has no config.json (save one with save_pretrained)")
    return path


def folder_config(folder: str):
    """The config of a model folder; one pruned by transformers v4 is refused with the command that converts it."""
    from ..modeling_gradprune import CONFIG_KEY

    config = model_config(model_folder(folder))
    if not getattr(config, CONFIG_KEY, None) and getattr(config, "pruned_heads", None):
        raise CommandError(
            f"{folder} was pruned by transformers v4 (config.json has pruned_heads): convert it first with "
            f"`{PROG} convert-v4 {folder} NEW_FOLDER`"
        )
    return config


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, e.g. 1,32; got {text!r}")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value
