"""Speed: latency and throughput, dense vs pruned, against the ideal (FLOPs) speedup.

Models: the quickstart's MiniLM (its real weights), and BERT-base- and GPT-2-small-shaped models with random
weights (the body: ``BertModel`` / ``GPT2Model``; embeddings included, task heads excluded). Plans remove
25%, 50% and 75% of the block FLOPs:
- ``uniform``: every layer keeps the same number of heads and FFN neurons;
- ``uneven``: the per-layer shape of a plan made from real Taylor scores (MiniLM fine-tuned on the
  quickstart task, global ranking, FLOPs budget); 12-layer models take layer ``l // 2`` of MiniLM's 6;
- ``uneven+r64``: the same, with each layer's FFN width rounded to a multiple of 64 (the remedy) by the package's
  own rounding, ``PruningPlan.from_scores(..., ffn_multiple_of=64)`` (``rounded_plan``).
CPU fp32 at batch 1, 8 and 32, sequence 128. The GPU rows (bf16 at batch 64 and 256, eager and
``torch.compile``) are made by ``benchmarks/gpu/gpu_check.py`` with the same functions (``time_rows``).
Every latency is ``hf_gradprune.deploy.latency.measure_latency``.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import ROOT, UNROUNDED, bench_args, dense_drift, drift_record, machine, write_json
from transformers import AutoModel, BertConfig, BertModel, GPT2Config, GPT2Model

from hf_gradprune import Geometry, PruningPlan, Scores, current_plan, prune_model
from hf_gradprune.deploy.latency import measure_latency

FRACTIONS = (0.25, 0.5, 0.75)
PLAN_KINDS = ("uniform", "uneven", "uneven+r64")


def uniform_plan(g: Geometry, fraction: float) -> PruningPlan:
    """Every layer keeps the same share of heads and neurons, so that ~``fraction`` of block FLOPs go."""
    keep = 1 - fraction
    h = max(0, round(g.num_heads * keep))
    n = max(0, round(g.intermediate_size * keep))
    return PruningPlan(g, [list(range(h))] * g.num_layers, [list(range(n))] * g.num_layers)


def shaped_plan(g: Geometry, template: PruningPlan) -> PruningPlan:
    """``template``'s per-layer keep fractions mapped onto ``g`` (layer l takes template layer l * L_t // L)."""
    t = template.geometry
    heads, neurons = [], []
    for layer in range(g.num_layers):
        src = layer * t.num_layers // g.num_layers
        h = round(len(template.heads[src]) / t.num_heads * g.num_heads)
        n = round(len(template.neurons[src]) / t.intermediate_size * g.intermediate_size)
        heads.append(list(range(h)))
        neurons.append(list(range(n)))
    return PruningPlan(g, heads, neurons)


def rounded_plan(plan: PruningPlan, multiple: int = 64) -> PruningPlan:
    """``plan`` with its FFN widths rounded the package's way, ``PruningPlan.from_scores(..., ffn_multiple_of=
    multiple)``, at ``plan``'s own FFN sparsity, on scores that rank every neuron ``plan`` keeps above every one it
    removes (within each, a layer's first units first, as the plans here keep them). The heads stay ``plan``'s. With
    ``multiple=1`` it gives ``plan``'s widths back."""
    g = plan.geometry
    if g.num_key_value_heads != g.num_heads:
        raise ValueError("rounded_plan keeps the plan's heads as they are: it is for the BERT/GPT-2 plans here")

    def ranked(kept) -> torch.Tensor:  # kept neurons in (1, 2], removed ones in (0, 1]
        kept, n = set(kept), g.intermediate_size
        return torch.tensor([(2.0 if i in kept else 1.0) - i / n for i in range(n)])

    scores = Scores(
        "taylor",
        g,
        heads=[torch.ones(g.num_heads) for _ in range(g.num_layers)],
        neurons=[ranked(n) for n in plan.neurons],
        head_ids=[list(range(g.num_heads)) for _ in range(g.num_layers)],
        neuron_ids=[list(range(g.intermediate_size)) for _ in range(g.num_layers)],
        num_examples=1,
    )
    total = g.num_layers * g.intermediate_size
    rounded = PruningPlan.from_scores(scores, ffn_sparsity=(total - plan.num_neurons) / total, ffn_multiple_of=multiple)
    return PruningPlan(g, plan.heads, rounded.neurons, rounded.meta)


def plan_variants(g: Geometry, template: PruningPlan, fraction: float) -> dict[str, PruningPlan]:
    """The three plans of one target: uniform, uneven (``template``'s shape) and uneven rounded to 64."""
    uneven = shaped_plan(g, template)
    return {"uniform": uniform_plan(g, fraction), "uneven": uneven, "uneven+r64": rounded_plan(uneven)}


def recorded_plans(g: Geometry, results: Path, model: str) -> dict[tuple[str, float], PruningPlan]:
    """The plans of ``model``'s rows in an earlier ``speed.json`` (per-layer widths; the first units kept), so
    another machine times exactly the plans of the committed rows: ``{(plan kind, target): plan}``."""
    plans = {}
    for row in json.loads(Path(results).read_text())["rows"]:
        if row["model"] == model:
            heads = [list(range(h)) for h in row["heads_per_layer"]]
            neurons = [list(range(n)) for n in row["ffn_per_layer"]]
            plans[(row["plan"], row["target"])] = PruningPlan(g, heads, neurons)
    return plans


def models(quick: bool):
    if quick:
        yield "tiny-bert", tiny_bert
        return
    minilm = ROOT / ".cache" / "quickstart" / "all-MiniLM-L6-v2"
    yield "all-MiniLM-L6-v2", lambda: AutoModel.from_pretrained(minilm)
    yield "bert-base (random)", lambda: BertModel(BertConfig())
    yield "gpt2-small (random)", lambda: GPT2Model(GPT2Config())


def tiny_bert():
    return BertModel(
        BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=100)
    )


def tiny_gpt2():
    return GPT2Model(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_inner=256, vocab_size=100, n_positions=64))


def speed_row(name: str, precision: str, batch: int, seq: int, target: float, kind: str, plan, dense_ms, pruned_ms):
    """One result row; ``flops_removed`` and the ideal speedup come from the plan (``PruningPlan.flops_removed``)."""
    removed = plan.flops_removed(seq)
    return {
        "model": name,
        "precision": precision,
        "batch": batch,
        "seq": seq,
        "target": target,
        "plan": kind,
        "flops_removed": round(removed, 4),
        "dense_ms": round(dense_ms, 2),
        "pruned_ms": round(pruned_ms, 2),
        "speedup": round(dense_ms / pruned_ms, 3),
        "ideal_speedup": round(1 / max(1 - removed, 1e-12), 3),
        "throughput_dense": round(1000 * batch / dense_ms, 1),
        "throughput_pruned": round(1000 * batch / pruned_ms, 1),
        "heads_per_layer": [len(h) for h in plan.heads],
        "ffn_per_layer": [len(n) for n in plan.neurons],
    }


def time_rows(
    name: str,
    base,
    plans: dict[tuple[str, float], PruningPlan],
    *,
    precision: str,
    batch: int,
    seq: int,
    repeats: int,
    warmup: int = 1,
    dtype: torch.dtype | None = None,
    autocast_dtype: torch.dtype | None = None,
    compile_backend: str | None = None,
    compile_layers: str | None = None,
    device: torch.device | str = "cpu",
    dense_ms: float | None = None,
    deadline: float | None = None,
    on_row=None,
    on_error=None,
    drifts: list[dict] | None = None,
) -> list[dict]:
    """Dense vs pruned latency of ``base`` (an unpruned model, left unchanged) for each plan of ``plans``.

    Every model is a copy of ``base`` moved to ``device`` (and cast to ``dtype`` when given), optionally
    wrapped in ``torch.compile(backend=compile_backend)``, or with ``compile_layers`` (the name of the model's
    ``ModuleList`` of blocks, e.g. ``"layers"``) each block compiled in place instead (regional compilation: blocks
    of equal shapes share one compiled graph, so a 16-layer model compiles about as fast as one layer); each time is
    ``measure_latency``'s median. ``dense_ms``
    reuses a dense time measured before. Rows stop being started once ``time.monotonic()`` passes ``deadline``
    (the rows not made are simply absent). With ``on_error(kind, target, error)`` a pruned model that fails is
    reported there and the other rows still run; without it the error propagates. With a ``drifts`` list, the
    dense model is timed again after the last row and its drift from the first time is appended
    (``common.dense_drift``: flagged past 10%).
    """

    def ready(model):
        model = model.to(device=device, dtype=dtype).eval()
        if not compile_backend:
            return model
        torch._dynamo.reset()  # a fresh cache per model: never the recompile limit, never a shape-generic graph
        if compile_layers:
            for block in getattr(model, compile_layers):
                block.compile(backend=compile_backend)
            return model
        return torch.compile(model, backend=compile_backend)

    def latency(model):
        return measure_latency(model, batch, seq, repeats, warmup, autocast_dtype=autocast_dtype)

    rows = []
    if deadline is not None and time.monotonic() > deadline:
        return rows
    if dense_ms is None:
        dense = ready(copy.deepcopy(base))
        dense_ms = latency(dense)
        del dense
    for (kind, target), plan in plans.items():
        if deadline is not None and time.monotonic() > deadline:
            break
        try:
            pruned = ready(prune_model(copy.deepcopy(base), plan))
            row = speed_row(name, precision, batch, seq, target, kind, plan, dense_ms, latency(pruned))
        except Exception as err:
            if on_error is None:
                raise
            on_error(kind, target, err)
            continue
        finally:
            pruned = None
        rows.append(row)
        if on_row is not None:
            on_row(row)
    if drifts is not None:
        dense = ready(copy.deepcopy(base))
        drifts.append(dense_drift(f"{name} {precision} {batch}x{seq}", dense_ms, latency(dense)))
        del dense
    return rows


def print_row(row: dict) -> None:
    print(
        {k: row[k] for k in ("model", "precision", "batch", "target", "plan", "speedup", "ideal_speedup")}, flush=True
    )


def run(quick: bool, out: Path) -> dict:
    from common import bench_task, score

    torch.manual_seed(0)
    _, task, dense = bench_task(quick)
    taylor = score(dense, task, ("taylor",), n_examples=64 if quick else 1024)["taylor"]
    templates = {
        f: PruningPlan.from_scores(taylor, flops_budget=f, seq_len=128, ffn_multiple_of=UNROUNDED) for f in FRACTIONS
    }
    seq = 16 if quick else 128
    rows, geometries, drifts = [], {}, []
    for name, build in models(quick):
        base = build().eval()
        g = current_plan(base).geometry
        geometries[name] = g.to_dict()
        plans = {(k, f): p for f in FRACTIONS for k, p in plan_variants(g, templates[f], f).items()}
        for batch in (1, 4) if quick else (1, 8, 32):
            repeats = 3 if batch >= 8 and not name.startswith(("all-MiniLM", "tiny")) else 10
            rows += time_rows(
                name,
                base,
                plans,
                precision="fp32",
                batch=batch,
                seq=seq,
                repeats=repeats,
                on_row=print_row,
                drifts=drifts,
            )
    result = {"machine": machine(), "device": "cpu", "geometries": geometries, "rows": rows}
    result["dense_drift"] = drift_record(drifts)
    write_json(out / "speed.json", result)
    return result


def main(argv=None):
    args = bench_args(argv, __doc__)
    return run(args.quick, args.out)


if __name__ == "__main__":
    main()
