"""Mask rearrangement (Kwon et al. 2022): one-shot dev accuracy of the quickstart model pruned with and without
it, for Fisher and Taylor plans at equal head and FFN sparsity, and the time the rearrangement takes.

Scoring records per-batch gate gradients (``record_batches=True``) over 2,048 training sentences in batches
of 32 (64 passes); both methods share the passes. No recovery: rearrangement changes which units go, and
one-shot accuracy is where that shows undiluted.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

from common import (
    UNROUNDED,
    accuracy,
    bench_args,
    bench_task,
    copy_model,
    machine,
    scorers,
    write_json,
)

from hf_gradprune import PruningPlan, prune_model
from hf_gradprune.planning.rearrange import objective, rearrange_plan

METHODS = ("fisher", "taylor")
SPARSITIES = (0.5, 0.6)


def pruned_accuracy(dense, plan, task) -> float:
    model = copy_model(dense)
    prune_model(model, plan)
    return accuracy(model, task)


def heldout_objective(plan, grads, scores) -> dict:
    """Rearrange on the even passes, measure the objective on the odd ones (summed over layers), per kind.

    The objective is a sum over passes of a squared sum over up to thousands of units, with only as many
    passes as there are gradient directions: a swap can cancel the sampled gradients without lowering the
    loss change on other data. Held-out passes tell the two apart.
    """
    fit = {k: [t[0::2] for t in v] for k, v in grads.items()}
    new, _ = rearrange_plan(plan, fit, scores.head_ids, scores.neuron_ids)
    out = {}
    for kind, ids, before, after in (
        ("head", scores.head_ids, plan.heads, new.heads),
        ("neuron", scores.neuron_ids, plan.neurons, new.neurons),
    ):
        totals = {"fit_before": 0.0, "fit_after": 0.0, "heldout_before": 0.0, "heldout_after": 0.0}
        for layer, live in enumerate(ids):
            g = grads[kind][layer].T  # [units, passes]
            for name, kept in (("before", before[layer]), ("after", after[layer])):
                kept_set = set(kept)
                gone = [pos for pos, i in enumerate(live) if i not in kept_set]
                totals[f"fit_{name}"] += objective(g[:, 0::2], gone)
                totals[f"heldout_{name}"] += objective(g[:, 1::2], gone)
        out[kind] = totals
    return out


def run(quick: bool, n_score: int) -> dict:
    work, task, dense = bench_task(quick)
    t0 = time.perf_counter()
    by_method = scorers(dense, task, METHODS, n_examples=n_score, record_batches=True)
    score_s = time.perf_counter() - t0
    rows = []
    for method, scorer in by_method.items():
        scores, grads = scorer.scores, scorer.batch_gradients
        for sparsity in SPARSITIES:
            plan = PruningPlan.from_scores(
                scores, head_sparsity=sparsity, ffn_sparsity=sparsity, ffn_multiple_of=UNROUNDED
            )
            t0 = time.perf_counter()
            new, report = rearrange_plan(plan, grads, scores.head_ids, scores.neuron_ids)
            elapsed = time.perf_counter() - t0
            done = [r for r in report if "skipped" not in r]
            heldout = heldout_objective(plan, grads, scores)
            row = {
                "method": method,
                "head_sparsity": sparsity,
                "ffn_sparsity": sparsity,
                "accuracy_plan": pruned_accuracy(dense, plan, task),
                "accuracy_rearranged": pruned_accuracy(dense, new, task),
                "rearrange_seconds": round(elapsed, 3),
                "units_swapped": {k: sum(r["swapped"] for r in done if r["kind"] == k) for k in ("head", "neuron")},
                "units_removed": {k: sum(r["removed"] for r in done if r["kind"] == k) for k in ("head", "neuron")},
                # Kwon's objective, summed over layers: the Fisher estimate of the loss change (up to 1/2)
                "objective_before": {
                    k: sum(r["objective_before"] for r in done if r["kind"] == k) for k in ("head", "neuron")
                },
                "objective_after": {
                    k: sum(r["objective_after"] for r in done if r["kind"] == k) for k in ("head", "neuron")
                },
                "heldout_objective": heldout,
                "per_layer": report,
            }
            rows.append(row)
            print(
                f"{method} {sparsity:.0%}: plan {row['accuracy_plan']:.4f}  rearranged {row['accuracy_rearranged']:.4f}"
                f"  ({elapsed:.2f}s, swapped {row['units_swapped']})",
                flush=True,
            )
    return {
        "task": task.name,
        "machine": machine(),
        "dense_accuracy": accuracy(dense, task),
        "dev_examples": len(task.dev),
        "score_examples": min(n_score, len(task.train)),
        "score_batch_size": 32,
        "score_passes": int(next(iter(by_method.values())).batch_gradients["neuron"][0].shape[0]),
        "score_seconds_both_methods": round(score_s, 1),
        "ranking": "global",
        "recovery_steps": 0,
        "rows": rows,
    }


def main(argv=None) -> dict:
    def add(parser):
        parser.add_argument("--n_score", type=int, default=2048, help="training sentences scored")

    args = bench_args(argv, __doc__, add)
    result = run(args.quick, args.n_score)
    write_json(args.out / "rearrange.json", result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
