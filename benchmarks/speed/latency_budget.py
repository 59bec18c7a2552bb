"""Latency-aware pruning: a measured latency table's predictions against measured times, and plan shapes at
equal FLOPs (issue 13 §3).

Models: those of ``speed.py`` (the quickstart's MiniLM with its real weights; BERT-base- and GPT-2-small-shaped
bodies with random weights). Scores: Taylor scores of the fine-tuned MiniLM (as ``speed.py``'s templates);
12-layer models read them mapped onto their geometry (layer l takes MiniLM's layer l * 6 // 12, neuron j its
neuron j * 1536 // 3072). For each model and batch (1 and 32, sequence 64; ``--quick``: a tiny BERT at 1 and 4,
sequence 16) a ``LatencyTable`` is measured, then these plans are timed:
- at equal FLOPs (25%, 50%, 75% of the block FLOPs at the timed sequence): ``uniform`` (every layer keeps the same
  share), ``uneven`` (``flops_budget`` from the scores, global ranking) and ``balanced`` (the same with
  ``balanced=True, ffn_multiple_of=64``: equal heads per layer, FFN widths by score in multiples of 64);
- at a latency budget (30% and 50% of the dense time, by the table): ``latency`` and ``latency+balanced``.
Every row has the measured and the predicted time. Every time is ``hf_gradprune.deploy.latency.measure_latency``.

Run for real (writes ``benchmarks/results/cpu/latency_budget.json``; about 15 minutes on a quiet 2-core machine):
``python benchmarks/speed/latency_budget.py``. Tables are measured in 2 rounds of every shape (median kept); times are
the median of 10 passes at batch 1 and 3 at batch 32, after one warm-up pass.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import UNROUNDED, bench_args, drift_record, machine, write_json

from hf_gradprune import Geometry, PlanError, PruningPlan, Scores, current_plan
from hf_gradprune.deploy.latency import measure_latency_table
from speed.speed import models, time_rows, uniform_plan

FRACTIONS = (0.25, 0.5, 0.75)
LATENCY_BUDGETS = (0.3, 0.5)
SHAPE_KINDS = ("uniform", "uneven", "balanced")
LATENCY_KINDS = ("latency", "latency+balanced")


def mapped_scores(template: Scores, g: Geometry) -> Scores:
    """``template``'s scores read on geometry ``g``: layer l takes template layer l * L_t // L, head i template
    head i * H_t // H, neuron j template neuron j * I_t // I (a stand-in for scores of a model we cannot score)."""
    t = template.geometry
    if t == g:
        return template
    heads, neurons = [], []
    for layer in range(g.num_layers):
        src = layer * t.num_layers // g.num_layers
        heads.append(template.heads[src][[i * t.num_heads // g.num_heads for i in range(g.num_heads)]].clone())
        index = [j * t.intermediate_size // g.intermediate_size for j in range(g.intermediate_size)]
        neurons.append(template.neurons[src][index].clone())
    return Scores(
        method=template.method,
        geometry=g,
        heads=heads,
        neurons=neurons,
        head_ids=[list(range(g.num_heads)) for _ in range(g.num_layers)],
        neuron_ids=[list(range(g.intermediate_size)) for _ in range(g.num_layers)],
        num_examples=template.num_examples,
    )


def plans_for(scores: Scores, table, seq: int, multiple: int, skipped: list | None = None) -> dict:
    """The plans of one model and batch: ``{(kind, target): plan}`` (see the module's docstring). A latency budget
    the table says no plan can meet (the embeddings alone take more) is left out and its error added to
    ``skipped``."""
    g = scores.geometry
    plans = {}
    for f in FRACTIONS:
        plans[("uniform", f)] = uniform_plan(g, f)
        plans[("uneven", f)] = PruningPlan.from_scores(scores, flops_budget=f, seq_len=seq, ffn_multiple_of=UNROUNDED)
        plans[("balanced", f)] = PruningPlan.from_scores(
            scores, flops_budget=f, seq_len=seq, balanced=True, ffn_multiple_of=multiple
        )
    for b in LATENCY_BUDGETS:
        for kind, options in (("latency", {}), ("latency+balanced", {"balanced": True, "ffn_multiple_of": multiple})):
            try:
                plans[(kind, b)] = PruningPlan.from_scores(scores, latency_budget=b, latency_table=table, **options)
            except PlanError as e:
                if skipped is None:
                    raise
                skipped.append({"plan": kind, "target": b, "error": str(e)})
    return plans


def with_prediction(row: dict, plan: PruningPlan, table) -> dict:
    """``row`` (a ``speed.speed_row``) with the table's prediction beside the measurement."""
    predicted, dense = table.predict(plan), table.dense_ms
    row.update(
        predicted_ms=round(predicted, 2),
        predicted_dense_ms=round(dense, 2),
        predicted_speedup=round(dense / predicted, 3),
        prediction_error=round(row["pruned_ms"] / predicted - 1, 4),  # measured over predicted, minus one
        dense_prediction_error=round(row["dense_ms"] / dense - 1, 4),
        measured_removed=round(1 - row["pruned_ms"] / row["dense_ms"], 4),
        predicted_removed=round(1 - predicted / dense, 4),
    )
    if row["plan"] in LATENCY_KINDS:
        row["budget_met"] = plan.meta["budget_met"]
    return row


def summarize(rows: list[dict]) -> dict:
    """Per (model, batch): each shape's speedup over uniform's at equal FLOPs, the latency budgets' removed
    fractions (predicted and measured), and the prediction errors."""
    out = []
    for model, batch in sorted({(r["model"], r["batch"]) for r in rows}):
        mine = [r for r in rows if (r["model"], r["batch"]) == (model, batch)]
        cell = {(r["plan"], r["target"]): r for r in mine}
        entry = {"model": model, "batch": batch}
        for kind in ("uneven", "balanced"):
            ratios = {
                str(f): round(cell[(kind, f)]["speedup"] / cell[("uniform", f)]["speedup"], 3)
                for f in FRACTIONS
                if (kind, f) in cell and ("uniform", f) in cell
            }
            entry[f"{kind}_vs_uniform"] = ratios
        entry["latency_budgets"] = [  # asked, predicted and measured fraction of the dense time removed
            {k: r[k] for k in ("plan", "target", "predicted_removed", "measured_removed")}
            for r in mine
            if r["plan"] in LATENCY_KINDS
        ]
        errors = [abs(r["prediction_error"]) for r in mine]
        entry["prediction_error_mean"] = round(sum(errors) / len(errors), 4)
        entry["prediction_error_max"] = round(max(errors), 4)
        entry["within_10pct"] = sum(e <= 0.10 for e in errors)
        entry["rows"] = len(errors)
        out.append(entry)
    return out


def print_row(row: dict) -> None:
    keys = ("model", "batch", "plan", "target", "speedup", "ideal_speedup", "pruned_ms", "predicted_ms")
    print({k: row[k] for k in keys}, flush=True)


def run(quick: bool, out: Path) -> dict:
    from common import bench_task, score

    torch.manual_seed(0)
    _, task, dense = bench_task(quick)
    taylor = score(dense, task, ("taylor",), n_examples=64 if quick else 1024)["taylor"]
    seq = 16 if quick else 64
    batches = (1, 4) if quick else (1, 32)
    multiple = 16 if quick else 64
    rows, geometries, tables, unreachable, drifts = [], {}, {}, [], []
    for name, build in models(quick):
        base = build().eval()
        g = current_plan(base).geometry
        geometries[name] = g.to_dict()
        scores = mapped_scores(taylor, g)
        for batch in batches:
            repeats = 3 if quick or batch > 1 else 10
            start = time.monotonic()
            table = measure_latency_table(base, batch, seq, repeats=repeats, ffn_samples=5 if quick else 17)
            tables.setdefault(name, {})[str(batch)] = {**table.to_dict(), "measure_s": round(time.monotonic() - start)}
            skipped = []
            plans = plans_for(scores, table, seq, multiple, skipped)
            unreachable += [{"model": name, "batch": batch, **entry} for entry in skipped]
            timed = time_rows(
                name,
                base,
                plans,
                precision="fp32",
                batch=batch,
                seq=seq,
                repeats=repeats,
                drifts=drifts,
            )
            for row in timed:
                row = with_prediction(row, plans[(row["plan"], row["target"])], table)
                print_row(row)
                rows.append(row)
    result = {
        "machine": machine(),
        "device": "cpu",
        "seq": seq,
        "ffn_multiple_of": multiple,
        "geometries": geometries,
        "tables": tables,
        "rows": rows,
        "unreachable": unreachable,
        "summary": summarize(rows),
        "dense_drift": drift_record(drifts),
    }
    write_json(out / "latency_budget.json", result)
    return result


def main(argv=None):
    args = bench_args(argv, __doc__)
    return run(args.quick, args.out)


if __name__ == "__main__":
    main()
