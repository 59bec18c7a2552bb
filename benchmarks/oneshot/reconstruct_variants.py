"""Reconstruction variants on the quickstart model (issue 12 §3): least squares as default, with a stronger
ridge, with max_scale 2, with FLAP's bias compensation, and bias compensation alone, on Fisher plans from
the budget search at 50% and 60% of block FLOPs. Scores on 1,024 training sentences; the search on 4
batches of 32 and the reconstruction on 512 further training sentences (as ``retrain_free.py``).

One-shot dev accuracy only; writes ``reconstruct_variants.json``. Public API only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import (
    accuracy,
    bench_args,
    bench_task,
    copy_model,
    loader,
    machine,
    write_json,
)

from hf_gradprune import ImportanceScorer, prune_model, reconstruct, search_budget_split

VARIANTS = {
    "default": {},
    "ridge 1e-2": dict(ridge=1e-2),
    "max_scale 2": dict(max_scale=2.0),
    "+ bias compensation": dict(bias_compensation=True),
    "bias compensation alone": dict(least_squares=False, bias_compensation=True),
}


def run(quick: bool, out) -> dict:
    _, task, dense = bench_task(quick)
    dense.eval()
    score_batches = list(loader(task.train, 0, 64 if quick else 1024, 32, task.collator))
    calib = list(loader(task.train, 2048 if not quick else 64, 64 if quick else 512, 32, task.collator))
    scorer = ImportanceScorer(dense, "fisher")
    with scorer:
        for b in score_batches:
            dense(**b).loss.backward()
            dense.zero_grad(set_to_none=True)
    rows = []
    for target in (0.5,) if quick else (0.5, 0.6):
        plan, _ = search_budget_split(dense, scorer.scores, calib[:4], flops_budget=target, seq_len=task.max_len)
        model = copy_model(dense)
        prune_model(model, plan)
        row = {
            "target": target,
            "heads_per_layer": [len(h) for h in plan.heads],
            "ffn_per_layer": [len(n) for n in plan.neurons],
            "one_shot": accuracy(model, task),
        }
        for name, kwargs in VARIANTS.items():
            model = copy_model(dense)
            prune_model(model, plan)
            report = reconstruct(model, dense, calib, **kwargs)
            row[name] = accuracy(model, task)
            row[f"{name} skipped"] = len(report.skipped)
        rows.append(row)
        print(row, flush=True)
    result = {"task": task.name, "machine": machine(), "dense_accuracy": accuracy(dense, task), "rows": rows}
    write_json(out / "reconstruct_variants.json", result)
    return result


def main(argv=None):
    torch.manual_seed(0)
    args = bench_args(argv, __doc__)
    return run(args.quick, args.out)


if __name__ == "__main__":
    main()
