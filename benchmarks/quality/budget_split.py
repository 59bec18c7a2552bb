"""Budget split: how a FLOPs budget is shared between heads and neurons, one-shot (no recovery).

Setup: the quickstart's model and data (all-MiniLM-L6-v2 fine-tuned once on Rotten Tomatoes sentences), as
``quality.py`` (this folder). Scores from 2,048 training sentences; for each method and FLOPs budget, four splits:
``ratio`` (greedy by score per FLOP, heads and neurons alike: the default), ``normalized`` (each kind's
scores divided by its mean score per FLOP first), and ``search_budget_split``'s head-count sweep by
calibration loss (``search_loss``: 4 batches of 32 training sentences) or by kept importance
(``search_importance``). Reported: dev accuracy of the model cut to the plan, heads and neurons kept, the
FLOPs removed and the search's wall time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import (
    UNROUNDED,
    accuracy,
    bench_args,
    bench_task,
    copy_model,
    machine,
    score,
    write_json,
)

from hf_gradprune import METHODS, PruningPlan, prune_model
from hf_gradprune.oneshot.budget_search import search_budget_split

BUDGETS = (0.4, 0.5, 0.6)
QUICK_BUDGETS = (0.5,)
SPLITS = ("ratio", "normalized", "search_loss", "search_importance")


def calibration_loader(task, n_batches: int = 4, batch_size: int = 32, seed: int = 1):
    """The first ``n_batches * batch_size`` training sentences of a seeded shuffle."""
    rows = task.train.shuffle(seed=seed).select(range(min(n_batches * batch_size, len(task.train))))
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, collate_fn=task.collator)


def make_plan(split: str, scores, budget: float, seq: int, dense, calib) -> tuple[PruningPlan, dict]:
    if split in ("ratio", "normalized"):
        return PruningPlan.from_scores(
            scores, flops_budget=budget, seq_len=seq, budget_split=split, ffn_multiple_of=UNROUNDED
        ), {}
    criterion = split.removeprefix("search_")
    plan, report = search_budget_split(
        dense, scores, calib if criterion == "loss" else None, flops_budget=budget, seq_len=seq, criterion=criterion
    )
    return plan, report


def run(quick: bool, out: Path, n_score: int) -> dict:
    work, task, dense = bench_task(quick)
    dense_acc = accuracy(dense, task)
    print(f"dense accuracy {dense_acc:.4f}", flush=True)
    t0 = time.perf_counter()
    scores = score(dense, task, METHODS, n_examples=n_score)
    score_seconds = time.perf_counter() - t0
    calib = calibration_loader(task)
    seq = task.max_len
    rows = []
    for method in METHODS:
        for budget in QUICK_BUDGETS if quick else BUDGETS:
            for split in SPLITS:
                t0 = time.perf_counter()
                plan, report = make_plan(split, scores[method], budget, seq, dense, calib)
                seconds = time.perf_counter() - t0
                model = copy_model(dense)
                prune_model(model, plan)
                row = {
                    "method": method,
                    "budget": budget,
                    "split": split,
                    "one_shot": accuracy(model, task),
                    "heads_kept": plan.num_heads,
                    "neurons_kept": plan.num_neurons,
                    "flops_removed": round(plan.flops_removed(seq), 4),
                    "budget_met": plan.meta["budget_met"],
                    "plan_seconds": round(seconds, 3),
                }
                if report:
                    key = report["criterion"]
                    row["candidates"] = [[r["heads_kept"], r[key]] for r in report["candidates"]]
                    row["dense_loss"] = report["dense_loss"]
                rows.append(row)
                print({k: v for k, v in row.items() if k != "candidates"}, flush=True)
    result = {
        "task": task.name,
        "machine": machine(),
        "dense_accuracy": dense_acc,
        "scoring_examples": n_score,
        "score_seconds": round(score_seconds, 1),
        "calibration": "4 batches of 32 training sentences (first 128 of a shuffle, seed 1)",
        "seq_len": seq,
        "rows": rows,
    }
    write_json(out / "budget_split.json", result)
    print(table(result))
    return result


def table(result: dict) -> str:
    """Markdown: one-shot accuracy (heads kept) per method and budget, one column per split."""
    lines = [
        f"dense accuracy {result['dense_accuracy']:.4f}",
        "| method | budget | " + " | ".join(SPLITS) + " | search_loss s |",
        "|---" * (len(SPLITS) + 3) + "|",
    ]
    by = {(r["method"], r["budget"], r["split"]): r for r in result["rows"]}
    for method, budget in dict.fromkeys((r["method"], r["budget"]) for r in result["rows"]):
        cells = [f"{by[method, budget, s]['one_shot']:.3f} ({by[method, budget, s]['heads_kept']})" for s in SPLITS]
        seconds = by[method, budget, "search_loss"]["plan_seconds"]
        lines.append(f"| {method} | {budget} | " + " | ".join(cells) + f" | {seconds} |")
    return "\n".join(lines)


def main(argv=None):
    def extra(parser):
        parser.add_argument("--scoring_examples", type=int, default=None)

    args = bench_args(argv, __doc__, extra)
    return run(args.quick, args.out, args.scoring_examples or (64 if args.quick else 2048))


if __name__ == "__main__":
    main()
