"""Speed: latency and throughput, dense vs pruned, against the ideal (FLOPs) speedup.

Models: the quickstart's MiniLM (its real weights), and BERT-base- and GPT-2-small-shaped models with random
weights (the body: ``BertModel`` / ``GPT2Model``; embeddings included, task heads excluded). Plans remove
25%, 50% and 75% of the block FLOPs:
- ``uniform``: every layer keeps the same number of heads and FFN neurons;
- ``uneven``: the per-layer shape of a plan made from real Taylor scores (MiniLM fine-tuned on the
  quickstart task, global ranking, FLOPs budget); 12-layer models take layer ``l // 2`` of MiniLM's 6;
- ``uneven+r64``: the same, with each layer's FFN width rounded to a multiple of 64 (the remedy).
CPU fp32 at batch 1, 8 and 32, sequence 128; on a GPU (when present) bf16 at batch 64 and 256, eager and
``torch.compile``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from common import RESULTS, ROOT, dense_model, load_task, machine, score, write_json
from transformers import AutoModel, BertConfig, BertModel, GPT2Config, GPT2Model

from hf_gradprune import Geometry, PruningPlan, prune_model
from hf_gradprune.state import pruning_state

FRACTIONS = (0.25, 0.5, 0.75)


def timed(model, batch: int, seq: int, repeats: int, device, dtype=None) -> float:
    """Median seconds per forward pass on random ids."""
    ids = torch.randint(5, min(model.config.vocab_size, 1000), (batch, seq), device=device)
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first pass warms up
                times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def uniform_plan(g: Geometry, fraction: float) -> PruningPlan:
    """Every layer keeps the same share of heads and neurons, so that ~``fraction`` of block FLOPs go."""
    keep = 1 - fraction
    h = max(0, round(g.num_heads * keep))
    n = max(0, round(g.intermediate_size * keep))
    return PruningPlan(g, [list(range(h))] * g.num_layers, [list(range(n))] * g.num_layers)


def shaped_plan(g: Geometry, template: PruningPlan, multiple: int = 1) -> PruningPlan:
    """``template``'s per-layer keep fractions mapped onto ``g`` (layer l takes template layer l * L_t // L)."""
    t = template.geometry
    heads, neurons = [], []
    for layer in range(g.num_layers):
        src = layer * t.num_layers // g.num_layers
        h = round(len(template.heads[src]) / t.num_heads * g.num_heads)
        n = round(len(template.neurons[src]) / t.intermediate_size * g.intermediate_size)
        if multiple > 1:
            n = min(g.intermediate_size, multiple * math.floor(n / multiple + 0.5))
        heads.append(list(range(h)))
        neurons.append(list(range(n)))
    return PruningPlan(g, heads, neurons)


def models(quick: bool):
    if quick:
        yield (
            "tiny-bert",
            lambda: BertModel(
                BertConfig(
                    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=100
                )
            ),
        )
        return
    minilm = ROOT / ".cache" / "quickstart" / "all-MiniLM-L6-v2"
    yield "all-MiniLM-L6-v2", lambda: AutoModel.from_pretrained(minilm)
    yield "bert-base (random)", lambda: BertModel(BertConfig())
    yield "gpt2-small (random)", lambda: GPT2Model(GPT2Config())


def run(quick: bool, out: Path) -> dict:
    torch.manual_seed(0)
    work = ROOT / ".cache" / ("bench-quick" if quick else "bench")
    task = load_task(quick, work)
    dense = dense_model(task, work, quick)
    taylor = score(dense, task, ("taylor",), n_examples=64 if quick else 1024)["taylor"]
    templates = {f: PruningPlan.from_scores(taylor, flops_budget=f, seq_len=128) for f in FRACTIONS}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seq = 16 if quick else 128
    rows = []
    for name, build in models(quick):
        base = build().eval()
        g = pruning_state(base).geometry
        settings = [("fp32", None, b) for b in ((1, 4) if quick else (1, 8, 32))]
        if device.type == "cuda":
            settings = [(f"bf16{c}", torch.bfloat16, b) for c in ("", "+compile") for b in (64, 256)]
        base.to(device)
        for precision, dtype, batch in settings:
            compile_ = precision.endswith("+compile")
            run_dense = torch.compile(base) if compile_ else base
            repeats = 3 if batch >= 8 and not name.startswith(("all-MiniLM", "tiny")) else 10
            dense_s = timed(run_dense, batch, seq, repeats, device, dtype)
            for fraction in FRACTIONS:
                variants = {
                    "uniform": uniform_plan(g, fraction),
                    "uneven": shaped_plan(g, templates[fraction]),
                    "uneven+r64": shaped_plan(g, templates[fraction], 64),
                }
                for kind, plan in variants.items():
                    pruned = build().eval()
                    prune_model(pruned, plan)
                    pruned.to(device)
                    s = timed(torch.compile(pruned) if compile_ else pruned, batch, seq, repeats, device, dtype)
                    full = PruningPlan.full(g)
                    ideal = full.block_flops(seq) / max(plan.block_flops(seq), 1)
                    row = {
                        "model": name,
                        "precision": precision,
                        "batch": batch,
                        "seq": seq,
                        "target": fraction,
                        "plan": kind,
                        "flops_removed": round(1 - plan.block_flops(seq) / full.block_flops(seq), 4),
                        "dense_ms": round(1000 * dense_s, 2),
                        "pruned_ms": round(1000 * s, 2),
                        "speedup": round(dense_s / s, 3),
                        "ideal_speedup": round(ideal, 3),
                        "throughput_dense": round(batch / dense_s, 1),
                        "throughput_pruned": round(batch / s, 1),
                        "heads_per_layer": [len(h) for h in plan.heads],
                        "ffn_per_layer": [len(n) for n in plan.neurons],
                    }
                    rows.append(row)
                    print(
                        {k: row[k] for k in ("model", "batch", "target", "plan", "speedup", "ideal_speedup")},
                        flush=True,
                    )
                    del pruned
    result = {"machine": machine(), "device": str(device), "rows": rows}
    write_json(out / "speed.json", result)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    return run(args.quick, args.out or (RESULTS / ("quick" if args.quick else "cpu")))


if __name__ == "__main__":
    main()
