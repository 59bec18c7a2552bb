"""Quality: accuracy vs sparsity for each importance method, one-shot and after a fixed short recovery.

Setup: the quickstart's model and data (all-MiniLM-L6-v2 fine-tuned once on Rotten Tomatoes sentences).
Targets are fractions of the transformer blocks' FLOPs removed (heads and neurons compete per FLOP,
global ranking). Recovery: the same budget for every method (``--recovery_steps`` steps of batch 32,
distillation from the dense model, alpha 0.5, T 2). Also: global vs per-layer ranking and one-shot vs
iterative (3 rounds) at 50%, and the Torch-Pruning peer when it is installed.
"""

from __future__ import annotations

import importlib.util
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
    plan_fields,
    recover,
    recovery_trainer,
    score,
    write_json,
)

from hf_gradprune import GRADIENT_METHODS, METHODS, PruningPlan, current_plan, prune_model

TARGETS = (0.25, 0.4, 0.5, 0.6, 0.7)
QUICK_TARGETS = (0.5,)
PEER_TARGETS = (0.4, 0.5)
QUICK_PEER_TARGETS = (0.5,)


def run(quick: bool, out: Path, recovery_steps: int, n_score: int) -> dict:
    work, task, dense = bench_task(quick)
    dense_acc = accuracy(dense, task)
    print(f"dense accuracy {dense_acc:.4f}", flush=True)
    t0 = time.perf_counter()
    scores = score(dense, task, METHODS, n_examples=n_score)
    score_seconds = time.perf_counter() - t0
    seq = task.max_len
    rows = []
    targets = TARGETS if not quick else QUICK_TARGETS
    for method in METHODS:
        for target in targets:
            plan = PruningPlan.from_scores(scores[method], flops_budget=target, seq_len=seq, ffn_multiple_of=UNROUNDED)
            model = copy_model(dense)
            prune_model(model, plan)
            one_shot = accuracy(model, task)
            recovered = accuracy(recover(model, dense, task, recovery_steps, work / "recovery"), task)
            row = {
                "method": method,
                "target": target,
                **plan_fields(plan, seq),
                "one_shot": one_shot,
                "recovered": recovered,
            }
            rows.append(row)
            print(row, flush=True)

    # global vs per-layer ranking, one-shot vs iterative, at 50%
    extra = {}
    plan = PruningPlan.from_scores(
        scores["taylor"], flops_budget=0.5, seq_len=seq, ranking="per_layer", ffn_multiple_of=UNROUNDED
    )
    model = copy_model(dense)
    prune_model(model, plan)
    extra["taylor_per_layer_50"] = {
        "flops_removed": round(plan.flops_removed(seq), 4),
        "one_shot": accuracy(model, task),
        "recovered": accuracy(recover(model, dense, task, recovery_steps, work / "recovery"), task),
    }
    iterative = recovery_trainer(
        copy_model(dense),
        dense,
        task,
        recovery_steps,
        work / "iterative",
        importance="taylor",
        flops_budget=0.5,
        flops_seq_len=seq,
        pruning_schedule="iterative",
        num_rounds=3,
        prune_start_step=0,
        prune_end_step=recovery_steps // 2,
        scoring_steps=max(n_score // 32 // 3, 1),
        ffn_multiple_of=UNROUNDED,
    )
    iterative.train()
    extra["taylor_iterative3_50"] = {
        "flops_removed": round(current_plan(iterative.model).flops_removed(seq), 4),
        "recovered": accuracy(iterative.model, task),
        "note": f"3 rounds at steps 0, {recovery_steps // 4}, {recovery_steps // 2}; same {recovery_steps}-step budget",
    }
    print(extra, flush=True)

    extra["type_balanced_50"] = balanced_rows(dense, task, scores, recovery_steps, work, seq)
    print(extra["type_balanced_50"], flush=True)

    peer = None
    if importlib.util.find_spec("torch_pruning") is None:  # a benchmark-only extra (make bench installs it)
        peer = {"skipped": "torch-pruning is not installed; pip install --no-deps torch-pruning==1.6.1"}
    else:
        from peer_torch_pruning import prune_with_torch_pruning

        loader = torch.utils.data.DataLoader(
            task.train.shuffle(seed=0).select(range(min(n_score, len(task.train)))),
            batch_size=32,
            collate_fn=task.collator,
        )
        peer = {}
        for target in QUICK_PEER_TARGETS if quick else PEER_TARGETS:
            model = copy_model(dense)
            model, info = prune_with_torch_pruning(model, list(loader), target, seq)
            one_shot = accuracy(model, task)
            recovered = accuracy(recover(model, dense, task, recovery_steps, work / "recovery"), task)
            peer[str(target)] = {**info, "one_shot": one_shot, "recovered": recovered}
            print({"peer": target, "one_shot": one_shot, "recovered": recovered}, flush=True)

    result = {
        "task": task.name,
        "machine": machine(),
        "dense_accuracy": dense_acc,
        "recovery_steps": recovery_steps,
        "scoring_examples": n_score,
        "scoring_seconds_taylor_and_fisher": round(score_seconds, 2),
        "flops_seq_len": seq,
        "geometry": current_plan(dense).geometry.to_dict(),
        "rows": rows,
        "ranking_and_schedule": extra,
        "torch_pruning": peer,
    }
    write_json(out / "quality.json", result)
    plot(result, out / "quality.png")
    return result


def balanced_rows(dense, task, scores, recovery_steps, work, seq) -> dict:
    """Heads and neurons each lose half (head_sparsity = ffn_sparsity = 0.5, i.e. 50% of block FLOPs) instead
    of competing per FLOP: the FLOPs split is fixed, the ranking inside each type stays global."""
    out = {}
    for method in GRADIENT_METHODS:
        plan = PruningPlan.from_scores(
            scores[method], head_sparsity=0.5, ffn_sparsity=0.5, seq_len=seq, ffn_multiple_of=UNROUNDED
        )
        model = copy_model(dense)
        prune_model(model, plan)
        out[method] = {
            "flops_removed": round(plan.flops_removed(seq), 4),
            "heads_kept": plan.num_heads,
            "one_shot": accuracy(model, task),
            "recovered": accuracy(recover(model, dense, task, recovery_steps, work / "recovery"), task),
        }
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = {"taylor": "#1b9e77", "fisher": "#d95f02", "magnitude": "#7570b3", "random": "#999999"}
    for ax, key, title in zip(axes, ("one_shot", "recovered"), ("one-shot (no retraining)", "after recovery")):
        for method in METHODS:
            pts = [(r["flops_removed"], r[key]) for r in result["rows"] if r["method"] == method]
            ax.plot(*zip(*pts), marker="o", color=colors[method], label=method)
        ax.axhline(result["dense_accuracy"], color="black", linestyle="--", linewidth=1, label="dense")
        peer = result.get("torch_pruning") or {}
        pts = [(v.get("block_flops_removed"), v.get(key)) for k, v in peer.items() if isinstance(v, dict) and key in v]
        if pts:
            ax.plot(*zip(*pts), marker="s", linestyle=":", color="#e7298a", label="Torch-Pruning (Taylor)")
        ax.set_title(title)
        ax.set_xlabel("fraction of block FLOPs removed")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy")
    axes[1].legend(fontsize=8)
    fig.suptitle(result["task"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    def extra(parser):
        parser.add_argument("--recovery_steps", type=int, default=None)
        parser.add_argument("--scoring_examples", type=int, default=None)

    args = bench_args(argv, __doc__, extra)
    steps = args.recovery_steps or (6 if args.quick else 60)
    n = args.scoring_examples or (64 if args.quick else 1024)
    return run(args.quick, args.out, steps, n)


if __name__ == "__main__":
    main()
