"""Entry points. The ``hf-gradprune`` command: its parser and dispatch (``main``), one module per command
(``prune``, ``info``, ``bench``, ``export_onnx``, ``convert_v4``, which is also ``hf-gradprune-convert-v4``) and
what they share (``inputs``: bad input as one line, exit code 2). The example scripts' shared run (``runs``:
recipes, argument parsing, the dense fine-tune, prune and report) and their data loading (``data``).

May import: anything in the package below it. Nothing imports it but ``__main__`` (and ``_moved``, by name).
"""

# the old ``hf_gradprune.cli`` module was the example scripts' helpers, now ``cli.runs``: for one release
RUNS_NAMES = (
    "NONE_WORDS",
    "ModelArguments",
    "RunArguments",
    "finetune_dense",
    "parse_args",
    "prune_and_report",
    "read_recipe",
)


def __getattr__(name: str):
    if name not in RUNS_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .._moved import warn_moved
    from . import runs

    warn_moved(f"{__name__}.{name}", f"{runs.__name__}.{name}")
    return getattr(runs, name)
