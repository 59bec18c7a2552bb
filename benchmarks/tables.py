"""Markdown tables from the benchmark JSON files (pasted into benchmarks/README.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hf_gradprune.scoring.scores import METHODS  # display order: the gradient methods, then the baselines

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


def _ppl(v: float) -> str:
    return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"


def _times(v: float) -> str:
    return f"{v:.2f}×" if v < 100 else f"{v:,.0f}×"


def llm_quality_tables(q: dict) -> str:
    """Perplexity by method, plan shape and fraction of block parameters removed; the structure kept; recovery."""
    targets = q["targets"]
    dense = q["dense_perplexity"]
    out = [
        f"Dense perplexity: **{_ppl(dense)}** ({q['model']}, {q['eval_blocks']} held-out blocks × "
        f"{q['eval_len']} tokens).",
        "",
        "**One-shot (no retraining)** — perplexity (× dense) by target fraction of block parameters removed",
        "",
        "| method | plan | " + " | ".join(f"{t:.0%}" for t in targets) + " |",
        "|---|---|" + "---|" * len(targets),
    ]
    for m in METHODS:
        for uniform in (True, False):
            cells = {r["target"]: r for r in q["rows"] if r["method"] == m and r["uniform"] == uniform}
            txt = [
                f"{_ppl(cells[t]['perplexity'])} ({_times(cells[t]['perplexity'] / dense)})" if t in cells else ""
                for t in targets
            ]
            out.append(f"| {m} | {'uniform' if uniform else 'non-uniform'} | " + " | ".join(txt) + " |")
    g = q["geometry"]
    full = (
        f"{g['num_layers'] * g['num_heads']} query heads, {g['num_layers'] * g['num_key_value_heads']} KV heads, "
        f"{g['num_layers'] * g['intermediate_size']:,} FFN neurons"
    )
    out += [
        "",
        f"**What the plans keep** (dense: {full}) — block parameters actually removed; heads / KV heads / FFN "
        "neurons kept in all layers; for uniform plans also per layer",
        "",
        "| method | plan | target | removed | query heads | KV heads | FFN neurons | per layer (q / kv / FFN) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        for uniform in (True, False):
            for r in q["rows"]:
                if r["method"] != m or r["uniform"] != uniform:
                    continue
                per_layer = (
                    f"{r['heads_per_layer'][0]} / {r['kv_heads_per_layer'][0]} / {r['ffn_per_layer'][0]}"
                    if uniform
                    else f"q {min(r['heads_per_layer'])}–{max(r['heads_per_layer'])}, "
                    f"FFN {min(r['ffn_per_layer'])}–{max(r['ffn_per_layer'])}"
                )
                out.append(
                    f"| {m} | {'uniform' if uniform else 'non-uniform'} | {r['target']:.0%} "
                    f"| {r['params_removed']:.1%} | {r['heads_kept']} | {r['kv_heads_kept']} "
                    f"| {r['neurons_kept']:,} | {per_layer} |"
                )
    if q.get("ffn_only"):
        out += [
            "",
            "**FFN only (diagnostic)** — every head kept, a uniform FFN width removing the target fraction",
            "",
            "| method | target | removed | FFN per layer | perplexity (× dense) |",
            "|---|---|---|---|---|",
        ]
        for r in q["ffn_only"]:
            out.append(
                f"| {r['method']} | {r['target']:.0%} | {r['params_removed']:.1%} | {r['ffn_per_layer'][0]} "
                f"| {_ppl(r['perplexity'])} ({_times(r['perplexity'] / dense)}) |"
            )
    rec = q["recovery"]
    out += [
        "",
        f"**After a short recovery** ({rec['steps']} steps of {rec['batch']}, distillation from the dense model, "
        f"α {rec['distill_alpha']}, T {rec['distill_temperature']}, lr {rec['learning_rate']:g})",
        "",
        "| method | plan | removed | one-shot | recovered | recovered × dense |",
        "|---|---|---|---|---|---|",
    ]
    for r in q["recovered"]:
        out.append(
            f"| {r['method']} | {r['plan']} | {r['params_removed']:.1%} "
            f"| {_ppl(r['one_shot'])} | {_ppl(r['recovered'])} | {_times(r['recovered'] / dense)} |"
        )
    out.append("")
    return "\n".join(out)


def llm_rows_table(q: dict) -> str:
    """One line per one-shot row: method, plan, target, removed, kept units, perplexity (× dense)."""
    dense = q["dense_perplexity"]
    out = [
        "| method | plan | target | removed | query heads | KV heads | FFN per layer | perplexity (× dense) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in q["rows"]:
        ffn = min(r["ffn_per_layer"]), max(r["ffn_per_layer"])
        out.append(
            f"| {r['method']} | {r['plan']} | {r['target']:.0%} | {r['params_removed']:.1%} | {r['heads_kept']} "
            f"| {r['kv_heads_kept']} | {ffn[0] if ffn[0] == ffn[1] else f'{ffn[0]}–{ffn[1]}'} "
            f"| {_ppl(r['perplexity'])} ({_times(r['perplexity'] / dense)}) |"
        )
    return "\n".join(out)


def llm_speed_tables(s: dict) -> str:
    """Prefill latency and decode throughput, dense vs uniform plans, one table per model."""
    out = []
    for model in dict.fromkeys(r["model"] for r in s["rows"]):
        rows = [r for r in s["rows"] if r["model"] == model]
        prefill = [r for r in rows if r["kind"] == "prefill"]
        decode = [r for r in rows if r["kind"] == "decode"]
        plans = list(dict.fromkeys(r["plan"] for r in rows))
        out.append(f"**{model}** ({rows[0]['precision']}, {s['machine']['torch_threads']} threads)")
        out.append("")
        heads = [f"prefill {b} × {q}" for b, q in dict.fromkeys((r["batch"], r["seq"]) for r in prefill)]
        dec = decode[0] if decode else None
        if dec:
            heads.append(f"decode tokens/s (batch {dec['batch']}, {dec['new_tokens']} after {dec['seq']})")
        out.append("| plan | block params removed | " + " | ".join(heads) + " |")
        out.append("|---|---|" + "---|" * len(heads))
        for plan in plans:
            cells = []
            for b, q in dict.fromkeys((r["batch"], r["seq"]) for r in prefill):
                r = next((x for x in prefill if (x["plan"], x["batch"], x["seq"]) == (plan, b, q)), None)
                cells.append("" if r is None else f"{r['ms']:,.0f} ms ({r['speedup']:.2f}×)")
            if dec:
                r = next((x for x in decode if x["plan"] == plan), None)
                cells.append("" if r is None else f"{r['tokens_per_s']:.1f} ({r['speedup']:.2f}×)")
            removed = next(r["params_removed"] for r in rows if r["plan"] == plan)
            out.append(f"| {plan} | {removed:.1%} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def retrain_free_tables(r: dict) -> str:
    """``retrain_free.json``: one-shot accuracy by step added, after recovery, and the whole path's time."""
    dense = r["dense_accuracy"]
    out = [
        f"Dense accuracy: **{dense:.4f}** ({r['task']}, validation split). Scores on {r['scoring_examples']} "
        f"sentences; search on 4 batches of 32; reconstruction on {r['calibration_examples']} sentences "
        f"({r['calibration_tokens']:,} tokens).",
        "",
        "| method | FLOPs removed | heads kept | one-shot | + rearrangement | + reconstruction | + both "
        f"| one-shot → {r['recovery_steps']} steps | + reconstruction → {r['recovery_steps']} steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        cells = [
            row["one_shot"],
            row["rearranged"],
            row["one_shot_reconstructed"],
            row["rearranged_reconstructed"],
            row["one_shot_recovered"],
            row["reconstructed_recovered"],
        ]
        out.append(
            f"| {row['method']} | {row['flops_removed']:.1%} | {row['heads_kept']} | "
            + " | ".join(f"{c:.4f} ({c - dense:+.4f})" for c in cells)
            + " |"
        )
    out += [
        "",
        "| whole path (`prune_oneshot`, 50% of block FLOPs) | seconds | score | split | rearrange | "
        "reconstruct | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, w in r.get("whole_path", {}).items():
        steps = w["steps"]
        acc = f"{w['accuracy']:.4f}" if "accuracy" in w else "—"
        out.append(
            f"| {name} | {w['seconds']:.0f} | {steps.get('score', 0):.0f} | {steps.get('split', 0):.0f} | "
            f"{steps.get('rearrange', 0):.0f} | {steps.get('reconstruct', 0):.0f} | {acc} |"
        )
    out.append("")
    return "\n".join(out)


def main(folder: str) -> None:
    folder = Path(folder)
    for name, fn in (
        ("quality", quality_tables),
        ("speed", speed_tables),
        ("overhead", overhead_tables),
        ("llm_quality", llm_quality_tables),
        ("llm_speed", llm_speed_tables),
        ("retrain_free", retrain_free_tables),
    ):
        path = folder / f"{name}.json"
        if path.exists():
            print(f"### {name}\n")
            print(fn(json.loads(path.read_text())))
            print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / "results" / "cpu"))
