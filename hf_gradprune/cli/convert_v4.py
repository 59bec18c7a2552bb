"""Convert a transformers-v4 pruned folder into an ordinary hf_gradprune folder: ``hf-gradprune convert-v4``.

    hf-gradprune convert-v4 SRC DST [--overwrite] [--model_class BertForSequenceClassification]
    hf-gradprune-convert-v4 SRC DST          (the same command under its first name)
    python -m hf_gradprune.cli.convert_v4 SRC DST

DST then loads with ``AutoModelFor...from_pretrained(DST, trust_remote_code=True)`` anywhere, without
hf_gradprune, or with ``hf_gradprune.load_pruned(DST)``. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """``hf-gradprune-convert-v4``: ``hf-gradprune convert-v4`` under its first name (the command lives in
    ``command_line.py``; this module only forwards to it, so the two never import each other)."""
    from .main import main as command_line_main

    return command_line_main(["convert-v4", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
