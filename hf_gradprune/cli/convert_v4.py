"""Convert a transformers-v4 pruned folder into an ordinary hf_gradprune folder: ``hf-gradprune convert-v4``.

    hf-gradprune convert-v4 SRC DST [--overwrite] [--model_class BertForSequenceClassification]
    hf-gradprune-convert-v4 SRC DST          (the same command under its first name)
    python -m hf_gradprune.cli.convert_v4 SRC DST

DST then loads with ``AutoModelFor...from_pretrained(DST, trust_remote_code=True)`` anywhere, without
hf_gradprune, or with ``hf_gradprune.load_pruned(DST)``. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import sys

from .inputs import PROG, CommandError, OneLineErrorParser, exit_code, run_command

HELP = "convert a transformers-v4 pruned folder"
DESCRIPTION = (
    "Convert a folder saved by transformers v4 after model.prune_heads(...) (config.json has pruned_heads) into "
    "an hf_gradprune folder that transformers v5 loads with trust_remote_code=True."
)


def add_arguments(parser) -> None:
    """The command's arguments, on ``hf-gradprune``'s ``convert-v4`` parser."""
    parser.add_argument("src", help="the v4 folder (config.json with pruned_heads, and its weights)")
    parser.add_argument("dst", help="the folder to write; must not exist or be empty unless --overwrite")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into DST even if it is not empty: the model's files are replaced, other files are kept",
    )
    parser.add_argument(
        "--model_class",
        "--model-class",
        dest="model_class",
        default=None,
        help="transformers class to load as (default: config.json's architectures), e.g. BertModel",
    )


def command(args) -> int:
    """Convert ``args.src`` into ``args.dst``; bad input raises ``CommandError``."""
    import transformers

    from ..folders.v4_compat import convert_v4_checkpoint

    model_class = None
    if args.model_class:
        model_class = getattr(transformers, args.model_class, None)
        if not isinstance(model_class, type):
            raise CommandError(f"transformers has no class {args.model_class!r} (--model_class)")
    try:
        dst = convert_v4_checkpoint(args.src, args.dst, model_class=model_class, overwrite=args.overwrite)
    except (ValueError, OSError) as err:  # bad input (CheckpointError is a ValueError): one line, no traceback
        raise CommandError(f"{' '.join(str(err).split())} (nothing was written)") from err
    print(f"wrote {dst}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``hf-gradprune-convert-v4``: ``hf-gradprune convert-v4`` under its first name (the same parser, errors and
    exit codes; built here, so that this module and ``main`` do not import each other)."""
    parser = OneLineErrorParser(prog=f"{PROG} convert-v4", description=DESCRIPTION)
    add_arguments(parser)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        return exit_code(e)
    return run_command("convert-v4", command, args)


if __name__ == "__main__":
    sys.exit(main())
