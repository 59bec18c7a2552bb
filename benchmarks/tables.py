"""Markdown tables from the benchmark JSON files (pasted into benchmarks/README.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hf_gradprune.scores import METHODS  # display order: the gradient methods, then the baselines

PLANS = ("uniform", "uneven", "uneven+r64")


def quality_tables(q: dict) -> str:
    targets = sorted({r["target"] for r in q["rows"]})
    out = [f"Dense accuracy: **{q['dense_accuracy']:.4f}** ({q['task']}, validation split).", ""]
    for key, title in (
        ("one_shot", "One-shot (no retraining)"),
        ("recovered", f"After {q['recovery_steps']} recovery steps"),
    ):
        out.append(f"**{title}** — accuracy by fraction of block FLOPs removed")
        out.append("")
        out.append("| method | " + " | ".join(f"{t:.0%}" for t in targets) + " |")
        out.append("|---|" + "---|" * len(targets))
        for m in METHODS:
            cells = {r["target"]: r[key] for r in q["rows"] if r["method"] == m}
            out.append(f"| {m} | " + " | ".join(f"{cells[t]:.4f}" if t in cells else "" for t in targets) + " |")
        peer = q.get("torch_pruning") or {}
        if "skipped" not in peer:
            cells = {float(k): v.get(key) for k, v in peer.items() if isinstance(v, dict)}
            out.append(
                "| Torch-Pruning (Taylor) | "
                + " | ".join(f"{cells[t]:.4f}" if cells.get(t) is not None else "" for t in targets)
                + " |"
            )
        out.append("")
    extra = q.get("ranking_and_schedule", {})
    rows = [r for r in q["rows"] if r["method"] == "taylor" and r["target"] == 0.5]
    if rows and extra:
        g = rows[0]
        pl = extra.get("taylor_per_layer_50", {})
        it = extra.get("taylor_iterative3_50", {})
        out += [
            "**Taylor at 50% of block FLOPs: ranking and schedule**",
            "",
            "| variant | one-shot | recovered |",
            "|---|---|---|",
            f"| global ranking, one-shot | {g['one_shot']:.4f} | {g['recovered']:.4f} |",
            f"| per-layer ranking, one-shot | {pl.get('one_shot', float('nan')):.4f} "
            f"| {pl.get('recovered', float('nan')):.4f} |",
            f"| global ranking, iterative (3 rounds) | — | {it.get('recovered', float('nan')):.4f} |",
        ]
        for method, r in extra.get("type_balanced_50", {}).items():
            out.append(
                f"| {method}, heads and FFN each cut 50% ({r['heads_kept']} heads kept) "
                f"| {r['one_shot']:.4f} | {r['recovered']:.4f} |"
            )
        out.append("")
    return "\n".join(out)


def speed_tables(s: dict) -> str:
    """One table per model and precision (CPU fp32; on a GPU bf16 and bf16+compile)."""
    out = []
    groups = list(dict.fromkeys((r["model"], r["precision"]) for r in s["rows"]))
    for model, precision in groups:
        rows = [r for r in s["rows"] if (r["model"], r["precision"]) == (model, precision)]
        targets = sorted({r["target"] for r in rows})
        plans = [p for p in PLANS if any(r["plan"] == p for r in rows)]
        out.append(f"**{model}** ({precision}, sequence {rows[0]['seq']}) — speedup (ideal from FLOPs)")
        out.append("")
        out.append("| batch | plan | " + " | ".join(f"{t:.0%}" for t in targets) + " |")
        out.append("|---|---|" + "---|" * len(targets))
        for batch in sorted({r["batch"] for r in rows}):
            for plan in plans:
                cells = {r["target"]: r for r in rows if r["batch"] == batch and r["plan"] == plan}
                txt = [
                    f"{cells[t]['speedup']:.2f}× ({cells[t]['ideal_speedup']:.2f}×)" if t in cells else ""
                    for t in targets
                ]
                out.append(f"| {batch} | {plan} | " + " | ".join(txt) + " |")
        dense = {r["batch"]: r["dense_ms"] for r in rows}
        out.append("")
        out.append("Dense latency: " + ", ".join(f"batch {b}: {ms:.1f} ms" for b, ms in sorted(dense.items())) + ".")
        out.append("")
    return "\n".join(out)


def overhead_tables(o: dict) -> str:
    out = [
        "| model | batch × seq | step without hooks | with hooks | time overhead "
        "| peak RSS without | with | memory overhead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in o["training_step"]:
        out.append(
            f"| {r['model']} | {r['batch']} × {r['seq']} | {r['step_ms_without']:.0f} ms "
            f"| {r['step_ms_with']:.0f} ms | "
            f"{r['time_overhead']:+.1%} | {r['peak_rss_mb_without']:.0f} MB | {r['peak_rss_mb_with']:.0f} MB | "
            f"{r['memory_overhead']:+.1%} |"
        )
    out += ["", "| model | examples scored | scoring | plan | surgery | total |", "|---|---|---|---|---|---|"]
    for w in o["pruning_step"]:
        extra = (
            f" (≈{w['score_s_extrapolated_to_1024']:.0f} s for 1,024)" if "score_s_extrapolated_to_1024" in w else ""
        )
        out.append(
            f"| {w['model']} | {w['examples']} × {w['seq']} tokens | {w['score_s']:.1f} s{extra} "
            f"| {w['plan_s']:.2f} s | "
            f"{w['surgery_s']:.2f} s | {w['total_s']:.1f} s |"
        )
    return "\n".join(out)


def main(folder: str) -> None:
    folder = Path(folder)
    for name, fn in (("quality", quality_tables), ("speed", speed_tables), ("overhead", overhead_tables)):
        path = folder / f"{name}.json"
        if path.exists():
            print(f"### {name}\n")
            print(fn(json.loads(path.read_text())))
            print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / "results" / "cpu"))
