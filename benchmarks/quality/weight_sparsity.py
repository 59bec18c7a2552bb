"""Weight sparsity on MiniLM: accuracy after the quickstart's recovery budget, gradient scores against magnitude.

Setup: the quickstart's model and data (all-MiniLM-L6-v2 fine-tuned once on Rotten Tomatoes sentences, as
``quality.py``), then one ``GradPruneTrainer`` run per row and method for the quickstart's recovery budget (one epoch
of batch 32, distillation from the dense model, alpha 0.5, T 2; ``--recovery_steps`` overrides it), in which the
weight sparsity ramps on the cubic schedule from step 0 to ``RAMP_END`` of the run, masks re-scored every
``UPDATES``-th of it, then held (gradients and Adam moments of pruned weights kept at zero) to the end.

Rows (the issue's goals, points of dev accuracy below the dense model's): 50% unstructured (0.5), 80% unstructured
(2.0), 2:4 (1.0), and hybrid: 50% of heads and FFN neurons removed at step 0 (the quickstart's one-shot prune, by
the same method's unit scores), then 2:4 in what is left (2.0). Each row with the gradient method (``taylor``,
|w * g| accumulated over the training steps between updates) and with ``magnitude``, in the same run, from the same
dense model and seed. Masks are per matrix (``sparsity_scope="layer"``) unless ``--scope`` says otherwise.

Reported per run: dev accuracy, its drop from dense, whether the goal is met, the sparsity the weights hold (exact
zeros over the block linears), whether every matrix is 2:4 where it should be, what the config records, heads and
neurons kept, and seconds. Results: ``results/cpu/weight_sparsity.json`` (``--quick``: a tiny BERT on synthetic
sentences, a few steps, ``results/quick``).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

from common import accuracy, bench_args, bench_task, copy_model, machine, recovery_trainer, write_json

from hf_gradprune.sparsity import matrix_sparsity, recorded_weight_sparsity, satisfies_nm, weight_targets
from hf_gradprune.state import pruning_state

# (row, weight_sparsity, sparsity_pattern, units removed at step 0, goal: points below dense)
ROWS = (
    ("unstructured-50", 0.5, "unstructured", 0.0, 0.5),
    ("unstructured-80", 0.8, "unstructured", 0.0, 2.0),
    ("2:4", None, "2:4", 0.0, 1.0),
    ("hybrid", None, "2:4", 0.5, 2.0),
)
METHODS = ("taylor", "magnitude")  # the gradient method and the baseline
RAMP_END = 0.4  # the sparsity reaches its target at this fraction of the run, then the masks hold
UPDATES = 10  # mask updates during the ramp
SCORING_STEPS = 32  # the hybrid's unit scoring before its step-0 prune, as the quickstart recipe
BATCH = 32


def schedule(steps: int) -> dict:
    """The weight-sparsity fields for a run of ``steps`` optimizer steps."""
    end = max(1, round(RAMP_END * steps))
    return {"sparsity_start_step": 0, "sparsity_end_step": end, "sparsity_update_steps": max(1, end // UPDATES)}


def row_config(row: tuple, method: str, steps: int, scope: str) -> dict:
    """The ``GradPruneConfig`` fields of one run, on top of ``recovery_trainer``'s recovery budget."""
    name, sparsity, pattern, units, _ = row
    config = {
        "weight_sparsity": sparsity,
        "sparsity_pattern": pattern,
        "weight_method": method,
        "sparsity_scope": scope,
        **schedule(steps),
    }
    if units:
        config.update(
            pruning_schedule="one_shot",
            prune_step=0,
            head_sparsity=units,
            ffn_sparsity=units,
            importance=method,
            scoring_steps=SCORING_STEPS,
        )
    return config


def measure(model, row: tuple) -> dict:
    """What the trained model's weights and config say."""
    _, sparsity, pattern, _, _ = row
    targets = weight_targets(model)
    held = matrix_sparsity(targets)
    out = {"measured_sparsity": round(held["sparsity"], 4)}
    if pattern == "2:4":
        out["all_2_4"] = all(satisfies_nm(t.matrix.detach(), 2, 4) for t in targets)
    state = pruning_state(model)
    geometry = state.geometry
    live_heads = sum(len(h) for h in state.head_ids)
    live_neurons = sum(len(n) for n in state.neuron_ids)
    out["heads_kept"] = f"{live_heads}/{geometry.num_layers * geometry.num_heads}"
    out["neurons_kept"] = f"{live_neurons}/{geometry.num_layers * geometry.intermediate_size}"
    out["recorded"] = recorded_weight_sparsity(model.config)
    return out


def run(quick: bool, out: Path, steps: int | None, scope: str, rows: list[str], methods: list[str]) -> dict:
    work, task, dense = bench_task(quick)
    dense_acc = accuracy(dense, task)
    quickstart_steps = math.ceil(len(task.train) / BATCH)  # the quickstart recovers one epoch of batch 32
    steps = steps or (6 if quick else quickstart_steps)
    print({"dense": dense_acc, "steps": steps}, flush=True)
    result = {
        "task": task.name,
        "machine": machine(),
        "dense_accuracy": dense_acc,
        "recovery_steps": steps,
        "quickstart_recovery_steps": quickstart_steps,
        "batch_size": BATCH,
        "schedule": {**schedule(steps), "ramp": "cubic (Zhu & Gupta)", "distill_alpha": 0.5, "temperature": 2.0},
        "scope": scope,
        "methods": methods,
        "rows": [],
        "complete": False,
    }
    path = out / "weight_sparsity.json"
    for row in ROWS:
        if row[0] not in rows:
            continue
        for method in methods:
            start = time.monotonic()
            trainer = recovery_trainer(
                copy_model(dense), dense, task, steps, work / "weight-sparsity", **row_config(row, method, steps, scope)
            )
            trainer.train()
            acc = accuracy(trainer.model, task)
            drop = round(100 * (dense_acc - acc), 2)
            entry = {
                "row": row[0],
                "method": method,
                "weight_sparsity": row[1] if row[1] is not None else 0.5,
                "pattern": row[2],
                "units_removed": row[3],
                "accuracy": acc,
                "drop_points": drop,
                "goal_points": row[4],
                "goal_met": drop <= row[4],
                **measure(trainer.model, row),
                "seconds": round(time.monotonic() - start, 1),
            }
            result["rows"].append(entry)
            print({k: v for k, v in entry.items() if k != "recorded"}, flush=True)
            write_json(path, result)  # each finished run is kept if a later one is stopped
    result["complete"] = True
    by = {(r["row"], r["method"]): r for r in result["rows"]}
    result["gradient_beats_magnitude"] = {
        name: by[(name, "taylor")]["accuracy"] >= by[(name, "magnitude")]["accuracy"]
        for name in rows
        if (name, "taylor") in by and (name, "magnitude") in by
    }
    write_json(path, result)
    return result


def main(argv=None) -> dict:
    def add(parser):
        parser.add_argument("--recovery_steps", type=int, default=None, help="default: the quickstart's one epoch")
        parser.add_argument("--scope", default="layer", choices=("layer", "global", "row"))
        parser.add_argument("--rows", nargs="+", default=[r[0] for r in ROWS], choices=[r[0] for r in ROWS])
        parser.add_argument("--methods", nargs="+", default=list(METHODS))

    args = bench_args(argv, __doc__, add)
    return run(args.quick, args.out, args.recovery_steps, args.scope, args.rows, args.methods)


if __name__ == "__main__":
    main()
