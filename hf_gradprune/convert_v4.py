"""Command line: convert a transformers-v4 pruned folder into an ordinary hf_gradprune folder.

    python -m hf_gradprune.convert_v4 SRC DST [--overwrite] [--model-class BertForSequenceClassification]
    hf-gradprune-convert-v4 SRC DST          (the same, installed as a console script)

DST then loads with ``AutoModelFor...from_pretrained(DST, trust_remote_code=True)`` anywhere, without
hf_gradprune, or with ``hf_gradprune.load_pruned(DST)``.
"""

from __future__ import annotations

import argparse
import sys

import transformers

from .v4_compat import convert_v4_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-gradprune-convert-v4",
        description="Convert a folder saved by transformers v4 after model.prune_heads(...) (config.json has "
        "pruned_heads) into an hf_gradprune folder that transformers v5 loads with trust_remote_code=True.",
    )
    parser.add_argument("src", help="the v4 folder (config.json with pruned_heads, and its weights)")
    parser.add_argument("dst", help="the folder to write; must not exist or be empty unless --overwrite")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into DST even if it is not empty: the model's files are replaced, other files are kept",
    )
    parser.add_argument(
        "--model-class",
        default=None,
        help="transformers class to load as (default: config.json's architectures), e.g. BertModel",
    )
    args = parser.parse_args(argv)
    model_class = None
    if args.model_class:
        model_class = getattr(transformers, args.model_class, None)
        if not isinstance(model_class, type):
            parser.error(f"transformers has no class {args.model_class!r}")
    try:
        dst = convert_v4_checkpoint(args.src, args.dst, model_class=model_class, overwrite=args.overwrite)
    except (ValueError, OSError) as err:  # bad input (CheckpointError is a ValueError): one line, no traceback
        message = " ".join(str(err).split())
        print(f"error: {message} (nothing was written)", file=sys.stderr)
        return 1
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
