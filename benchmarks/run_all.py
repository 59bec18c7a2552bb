"""``make bench``: the quality, speed and overhead benchmarks; ``--quick`` runs all three on tiny models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: common and the groups

from common import RESULTS
from quality import quality
from speed import overhead, speed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny models and data: a smoke run in about a minute")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", choices=("quality", "speed", "overhead"), action="append")
    args = parser.parse_args(argv)
    out = args.out or (RESULTS / ("quick" if args.quick else "cpu"))
    flags = (["--quick"] if args.quick else []) + ["--out", str(out)]
    results = {}
    for name, module in (("quality", quality), ("speed", speed), ("overhead", overhead)):
        if not args.only or name in args.only:
            print(f"== {name} ==", flush=True)
            results[name] = module.main(flags)
    return results


if __name__ == "__main__":
    main()
