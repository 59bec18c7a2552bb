"""What a pruning run reports, in one key scheme: ``all_results.json``, ``pruning_report.json`` and the
summary tables that the example scripts print.

Result keys are flat, ``<stage>_<metric>``. The stage is one of ``STAGES``: ``dense`` (before pruning),
``pruned`` (just after the cut, before recovery), ``reconstructed`` (after layer-wise reconstruction, when
``reconstruct`` is on; the stage is absent otherwise), ``recovered`` (after recovery training). The metric is
named as ``evaluate`` or the Trainer names it: ``accuracy``, ``f1``, ``matthews_correlation``, ``pearson``,
``spearmanr``, ``loss``, ``perplexity``, ... So ``grep recovered_ all_results.json`` lists the final model's
numbers, and ``grep _accuracy`` follows one metric through the stages.
"""

from __future__ import annotations

import json
import os

from ..deploy.latency import latency_comparison
from ..surgery import current_plan
from .plots import plot_plan

STAGES = ("dense", "pruned", "reconstructed", "recovered")
# Stages only some runs have: a summary table shows their column only when they were evaluated.
OPTIONAL_STAGES = ("reconstructed",)
# Trainer.evaluate adds these to every evaluation: all_results.json keeps them, the card and summary do not
TIMINGS = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _named(key: str, names) -> bool:
    # "matched_runtime" (an eval_dataset dict gives one evaluation per name) counts as a runtime too
    return any(key == n or key.endswith("_" + n) for n in names)


def stage_metrics(metrics: dict, stage: str, timings: bool = True) -> dict:
    """The numeric ``<stage>_*`` entries of ``metrics`` (without the Trainer's timings if ``timings=False``)."""
    return {
        k: v
        for k, v in metrics.items()
        if k.startswith(stage + "_") and _is_number(v) and (timings or not _named(k, TIMINGS))
    }


def write_pruning_report(folder: str, dense_plan, plan, metrics: dict, latency: list[dict], extra=None) -> dict:
    """``pruning_report.json`` plus the two plots in ``folder``; returns the report."""
    os.makedirs(folder, exist_ok=True)
    seq = (plan.meta or {}).get("seq_len", 128)
    report = {
        "heads": {"dense": dense_plan.num_heads, "pruned": plan.num_heads, "per_layer": [len(h) for h in plan.heads]},
        "ffn_neurons": {
            "dense": dense_plan.num_neurons,
            "pruned": plan.num_neurons,
            "per_layer": [len(n) for n in plan.neurons],
        },
        "block_params": {"dense": dense_plan.block_params(), "pruned": plan.block_params()},
        "block_flops": {"seq_len": seq, "dense": dense_plan.block_flops(seq), "pruned": plan.block_flops(seq)},
        "metrics": metrics,
        "latency": latency,
        "plots": plot_plan(plan, folder),
        "plan": plan.to_dict(),
        **(extra or {}),
    }
    with open(os.path.join(folder, "pruning_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def summary_table(rows: list[tuple], headers: tuple[str, ...]) -> str:
    """A small Markdown table (printed by the examples, pasted into READMEs)."""
    lines = [f"| {' | '.join(headers)} |", "|" + "---|" * len(headers)]
    lines += [f"| {' | '.join(map(str, r))} |" for r in rows]
    return "\n".join(lines)


def stage_columns(stages: dict[str, dict]) -> tuple[str, ...]:
    """The stages a metrics table shows, in ``STAGES`` order: every stage, except an optional one that
    ``stages`` lacks (a run without reconstruction has no "reconstructed" column)."""
    return tuple(s for s in STAGES if s not in OPTIONAL_STAGES or s in stages)


def metric_rows(stages: dict[str, dict]) -> list[tuple]:
    """One row per metric, one column per stage of ``stage_columns``; ``stages`` maps a stage to its evaluation."""
    names: list[str] = []
    for stage, metrics in stages.items():
        for key in stage_metrics(metrics, stage, timings=False):
            name = key[len(stage) + 1 :]
            if name not in names and not _named(name, ("loss",)):  # the loss stays in all_results.json
                names.append(name)

    def cell(stage, name):
        value = stages.get(stage, {}).get(f"{stage}_{name}")
        return "" if value is None else f"{value:.2f}" if name.endswith("perplexity") else f"{value:.4f}"

    return [(name, *(cell(stage, name) for stage in stage_columns(stages))) for name in names]


def size_and_latency_rows(results: dict, dense_plan, plan, report: dict) -> list[tuple]:
    """Units, parameters, block FLOPs and measured latency, dense vs pruned."""
    seq = report["block_flops"]["seq_len"]
    rows = [
        ("attention heads", dense_plan.num_heads, plan.num_heads),
        ("FFN neurons", dense_plan.num_neurons, plan.num_neurons),
        ("parameters", f"{results['dense_params']:,}", f"{results['pruned_params']:,}"),
        (
            f"block GFLOPs / {seq}-token sequence",
            f"{report['block_flops']['dense'] / 1e9:.3f}",
            f"{report['block_flops']['pruned'] / 1e9:.3f}",
        ),
    ]
    for row in results.get("latency", []):
        rows.append(
            (
                f"latency, batch {row['batch_size']} x {row['seq_len']} "
                f"({row['device']}, {row['torch_threads']} threads)",
                f"{row['dense_ms']:.1f} ms",
                f"{row['pruned_ms']:.1f} ms ({row['speedup']:.2f}x)",
            )
        )
    return rows


def format_summary(stages: dict[str, dict], results: dict, dense_plan, plan, report: dict) -> str:
    """The metrics table (a column per stage), then the size and speed table (dense vs pruned)."""
    tables = []
    rows = metric_rows(stages)
    if rows:
        tables.append(summary_table(rows, ("metric", *stage_columns(stages))))
    tables.append(summary_table(size_and_latency_rows(results, dense_plan, plan, report), ("", "dense", "pruned")))
    return "\n\n".join(tables)


def write_run_report(trainer, dense_model, results: dict, batch_sizes: str, seq_len: int, repeats: int) -> dict:
    """The example scripts' ending on the main process: latency dense vs pruned, ``pruning_report.json`` with
    the plots, and ``all_results.json`` (every numeric entry of ``results``). Fills ``results``
    (``latency``, ``dense_params``, ``pruned_params``, ``report``); returns the report. With reconstruction
    on, the report also holds every round's reconstruction report (``reconstruction``)."""
    plan = current_plan(trainer.model)
    sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    latency = latency_comparison(dense_model.to(trainer.model.device), trainer.model, sizes, seq_len, repeats)
    results["latency"] = latency
    params = {
        "dense": sum(p.numel() for p in dense_model.parameters()),
        "pruned": sum(p.numel() for p in trainer.model.parameters()),
    }
    results.update({f"{stage}_params": n for stage, n in params.items()})
    folder = trainer.args.output_dir
    metrics = {k: v for k, v in results.items() if k != "latency"}
    extra = {"params": params}
    reconstruction = getattr(trainer, "reconstruction_reports", None)
    if reconstruction:  # per round: tokens, seconds, each sub-layer's error before and after
        extra["reconstruction"] = reconstruction
    report = write_pruning_report(folder, trainer.dense_plan, plan, metrics, latency, extra=extra)
    results["report"] = os.path.join(folder, "pruning_report.json")
    trainer.save_metrics("all", {k: v for k, v in results.items() if _is_number(v)})
    return report
