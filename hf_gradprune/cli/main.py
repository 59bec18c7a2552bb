"""``hf-gradprune``: the command line, with subcommands in the manner of ``accelerate`` and ``huggingface-cli``.

    hf-gradprune prune --model_name_or_path M --task_name sst2 --flops_budget 0.5 --output_dir out
    hf-gradprune prune --model_name_or_path M --train_file texts.txt --oneshot --head_sparsity 0.5 --output_dir out
    hf-gradprune info out [--json]
    hf-gradprune bench out [--batch_sizes 1,32] [--seq_len 64] [--repeats 10] [--dense M] [--json]
    hf-gradprune export onnx out out-onnx [--int8] [--optimize] [--task ...] [--opset 18]
    hf-gradprune convert-v4 SRC DST [--overwrite]
    python -m hf_gradprune ...          (the same)

This module is the parser and the dispatch; each command is a module of its own (``prune``, ``info``, ``bench``,
``export_onnx``, ``convert_v4``: ``DESCRIPTION``, ``add_arguments``, ``command``), and what they share, bad input
reported as one line with exit code 2 included, is ``inputs``.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, convert_v4, export_onnx, info, prune
from .inputs import PROG, OneLineErrorParser, exit_code, run_command


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each (sub)command's parser by its name (``"export onnx"`` for the nested one)."""
    parser = OneLineErrorParser(
        prog=PROG,
        description="Gradient-based structured pruning of transformers models (attention heads, FFN neurons).",
        epilog=f"`{PROG} <command> --help` describes a command. Bad input: one line on stderr, exit code 2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    parsers = {}

    # its options are the example scripts' dataclasses, parsed by runs.parse_args (see prune.command)
    parsers["prune"] = commands.add_parser(
        "prune",
        add_help=False,
        help="prune a model on data to a target; save a Hub folder",
        description=prune.PRUNE_DESCRIPTION,
    )

    def add(group, name: str, module, key: str | None = None) -> None:
        command = group.add_parser(name, help=module.HELP, description=module.DESCRIPTION)
        module.add_arguments(command)
        command.set_defaults(func=module.command)
        parsers[key or name] = command

    add(commands, "info", info)
    add(commands, "bench", bench)
    parsers["export"] = commands.add_parser(
        "export", help="export a folder to another format (onnx)", description="Export a saved folder."
    )
    add(
        parsers["export"].add_subparsers(dest="format", metavar="<format>", required=True),
        "onnx",
        export_onnx,
        "export onnx",
    )
    add(commands, "convert-v4", convert_v4)
    return parser, parsers


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hf_gradprune")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run ``hf-gradprune`` on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, parsers = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        name = args.command if args.command != "export" else f"export {args.format}"
        if args.command == "prune":
            return run_command(name, prune.command, argv[argv.index("prune") + 1 :])
        if rest:
            parsers[name].error(f"unrecognized arguments: {' '.join(rest)}")
        return run_command(name, args.func, args)
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
