"""The speed parts of ``benchmarks/gpu/gpu_check.py``: bf16 latency rows of BERT-base and GPT-2 bodies (eager and
``torch.compile``, the plans of the committed CPU rows) and of a Llama-3.2-1B body, timed by ``speed/speed.py``'s
``time_rows``. Each returns a JSON-able dict with ``ok`` (bool) and ``problems`` (what failed). ``dry=True`` runs
the same code on the CPU on tiny models. Imports as ``gpu_parts.py`` does (no ``datasets``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

from gpu.gpu_parts import build_on, device_of
from hf_gradprune import Geometry, PruningPlan, current_plan

# the committed CPU rows (benchmarks/results/cpu): their uneven plans are reused
CPU_SPEED = Path(__file__).resolve().parents[1] / "results" / "cpu" / "speed.json"
BERT_BASE = Geometry("bert", num_layers=12, num_heads=12, head_dim=64, hidden_size=768, intermediate_size=3072)
# A compiled row is not started with less than this left. On the 2026-12-04 H200 run a compiled BERT-base or GPT-2
# row (compile, 3 warm-ups, 20 repeats) took about 6 s; a Llama-3.2-1B body has not been compiled there yet.
COMPILE_MARGIN_S = 30
COMPILE_MARGIN_LLAMA_S = 35  # a Llama body compiles one decoder layer (regional compilation) and reuses it
PROBE_LIMITS = {0.25: 1.23, 0.5: 1.58, 0.75: 2.21}  # the probe: H200, BERT-base, bf16, batch 256 x 128, uniform


def speed_settings(dry: bool) -> list[dict]:
    """(model, batch, compile, plan kinds) groups in the order they are timed: what matters most first, so a time
    box cuts the least important rows. Eager rows of both models first, then compiled BERT-base at batch 256
    (the probe's setting), then the rest. The dry run times one batch size and two compiled groups."""
    every, main = ("uniform", "uneven", "uneven+r64"), ("uniform", "uneven")
    if dry:
        models = ("tiny-bert", "tiny-gpt2")
        groups = [dict(model=m, batch=2, compile=False, kinds=every) for m in models]
        return groups + [dict(model=m, batch=2, compile=True, kinds=(k,)) for m, k in zip(models, main)]
    models = ("bert-base (random)", "gpt2-small (random)")
    groups = [dict(model=m, batch=b, compile=False, kinds=every) for b in (256, 64) for m in models]
    groups += [dict(model=m, batch=256, compile=True, kinds=("uniform",)) for m in models]
    groups += [dict(model=m, batch=256, compile=True, kinds=("uneven",)) for m in models]
    return groups + [dict(model=m, batch=64, compile=True, kinds=main) for m in models]


def speed_part(dry: bool, deadline: float, on_rows=None) -> dict:
    """bf16 (weights cast) latency rows, dense vs pruned, eager and ``torch.compile``, with the uniform and uneven plans
    of the committed CPU rows at 25/50/75% and the package's rounding of each uneven plan to multiples of 64
    (``speed.rounded_plan``: ``PruningPlan.from_scores(..., ffn_multiple_of=64)``). ``deadline`` is a
    ``time.monotonic()`` value after which no group is started."""
    from speed import speed

    device = device_of(dry)
    builders = {
        "bert-base (random)": lambda: BertModel(BertConfig()),
        "gpt2-small (random)": lambda: GPT2Model(GPT2Config()),
        "tiny-bert": speed.tiny_bert,
        "tiny-gpt2": speed.tiny_gpt2,
    }
    seq = 8 if dry else 128
    backend = "eager" if dry else "inductor"
    repeats, warmup = (2, 1) if dry else (20, 3)
    bases, plans, geometries, dense_ms, rows, problems, not_reached = {}, {}, {}, {}, [], [], []
    compile_failures = 0

    start = time.monotonic()

    def keep(row):  # every row is kept (and written) as soon as it is made: a kill at the time box loses none
        row["made_at_s"] = round(time.monotonic() - start, 1)  # for sizing the time box
        speed.print_row(row)
        rows.append(row)
        if on_rows is not None:
            on_rows(rows)

    for group in speed_settings(dry):
        name, batch, compiled = group["model"], group["batch"], group["compile"]
        label = f"{name} b{batch} {'compile' if compiled else 'eager'} {'/'.join(group['kinds'])}"
        if time.monotonic() > deadline:
            not_reached.append(label)
            continue
        if compiled and compile_failures >= 2:
            not_reached.append(f"{label} (torch.compile failed twice before)")
            continue
        if name not in bases:
            torch.manual_seed(0)
            bases[name] = builders[name]().eval()
            g = current_plan(bases[name]).geometry
            geometries[name] = g.to_dict()
            if dry:  # the committed BERT-base rows' uneven shapes mapped onto the tiny model; uniform plans of its own
                recorded = speed.recorded_plans(BERT_BASE, CPU_SPEED, "bert-base (random)")
                plans[name] = {("uniform", f): speed.uniform_plan(g, f) for f in speed.FRACTIONS}
                plans[name].update({k: speed.shaped_plan(g, p) for k, p in recorded.items() if k[0] == "uneven"})
            else:  # the uniform and uneven plans of the committed CPU rows of this model
                recorded = speed.recorded_plans(g, CPU_SPEED, name)
                plans[name] = {k: p for k, p in recorded.items() if k[0] in ("uniform", "uneven")}
            # uneven+r64: the package's rounding of each uneven plan (speed.rounded_plan), not the committed rows' own
            plans[name].update(
                {("uneven+r64", k[1]): speed.rounded_plan(p) for k, p in plans[name].items() if k[0] == "uneven"}
            )
        chosen = {k: p for k, p in sorted(plans[name].items(), key=_order) if k[0] in group["kinds"]}
        failed = []

        def row_failed(kind, target, err, label=label, failed=failed):
            failed.append(kind)
            problems.append(f"{label} {kind} {target:.0%}: {type(err).__name__}: {err}"[:2000])

        try:
            made = speed.time_rows(
                name,
                bases[name],
                chosen,
                precision="bf16+compile" if compiled else "bf16",
                batch=batch,
                seq=seq,
                repeats=repeats,
                warmup=warmup,
                dtype=torch.bfloat16,
                compile_backend=backend if compiled else None,
                device=device,
                dense_ms=dense_ms.get((name, batch, compiled)),
                deadline=deadline - (COMPILE_MARGIN_S if compiled and not dry else 0),
                on_row=keep,
                on_error=row_failed,
            )
        except Exception as err:  # noqa: BLE001 - the dense model failed: the next group still runs
            problems.append(f"{label} dense: {type(err).__name__}: {err}"[:2000])
            compile_failures += 2 if compiled else 0
            continue
        compile_failures += len(failed) if compiled else 0
        if made:
            dense_ms[(name, batch, compiled)] = made[0]["dense_ms"]
        if len(made) + len(failed) < len(chosen):
            not_reached.append(f"{label}: {len(chosen) - len(made) - len(failed)} of {len(chosen)} rows (time box)")
    probe = []
    for r in rows:
        if r["model"].startswith("bert-base") and r["batch"] == 256 and r["plan"] == "uniform":
            limit = PROBE_LIMITS[r["target"]]
            probe.append({k: r[k] for k in ("precision", "target", "speedup", "ideal_speedup")} | {"probe": limit})
    required = [r for r in rows if r["precision"] == "bf16"]
    expected_eager = sum(len(g["kinds"]) * 3 for g in speed_settings(dry) if not g["compile"])
    if len(required) < expected_eager:
        problems.append(f"only {len(required)} of {expected_eager} eager rows were made")
    if not any(r["precision"] == "bf16+compile" for r in rows):
        problems.append("no torch.compile row was made")
    return {
        "device": str(device),
        "seq": seq,
        "precision": "bf16 weights (model.to(bfloat16)), no autocast",
        "compile_backend": backend,
        "repeats": repeats,
        "warmup": warmup,
        "geometries": geometries,
        "rows": rows,
        "probe_comparison": probe,
        "not_reached": not_reached,
        "notes": (
            ["CPU dry run: tiny models, bf16 on the CPU, torch.compile with backend='eager' (no inductor build)"]
            if dry
            else []
        )
        + ["Llama-shaped rows: the speed-llama part"],
        "ok": not problems,
        "problems": problems,
    }


def _order(item):
    (kind, target), _ = item
    return (target, ("uniform", "uneven", "uneven+r64").index(kind))


# ---------------------------------------------------------------------------------------------- Llama speed rows
def llama_speed_settings(dry: bool) -> dict:
    """A Llama-3.2-1B-shaped body (``LlamaModel``: embeddings in, no LM head, no KV cache), random weights in bf16,
    SDPA; a batch of 8 x 512 (the CPU prefill rows of llm_speed.py). Tiny on the CPU."""
    from speed.llm_speed import LLAMA_1B, TINY

    if dry:
        return dict(name="tiny-llama", config=TINY, batch=2, seq=16, repeats=2, warmup=1, backend="eager")
    return dict(
        name="llama-3.2-1b (random)", config=LLAMA_1B, batch=8, seq=512, repeats=20, warmup=3, backend="inductor"
    )


def llama_plans(model) -> dict[tuple[str, float], PruningPlan]:
    """llm_speed.py's uniform plans (stock Llama shapes; random scores pick the units, which does not matter for
    speed): FFN only at 20% of block parameters, and one query head of every KV group plus FFN at 50%."""
    from speed.llm_speed import uniform_plans

    plans = uniform_plans(model)
    ffn20 = next(p for name, (f, p) in plans.items() if name.startswith("FFN only") and f == 0.2)
    heads50 = next(p for name, (f, p) in plans.items() if "q heads per group" in name)
    return {("ffn-only", 0.2): ffn20, ("heads+ffn", 0.5): heads50}


def llama_speed_part(dry: bool, deadline: float, on_rows=None) -> dict:
    """bf16 latency of the Llama shape, dense vs its uniform plans: eager (both plans), then ``torch.compile`` of
    each decoder layer (regional compilation; the 50% plan). A compiled row is not started with less than
    ``COMPILE_MARGIN_LLAMA_S`` left."""
    from speed import speed
    from transformers import LlamaConfig, LlamaModel

    s = llama_speed_settings(dry)
    device = device_of(dry)
    torch.manual_seed(0)
    start = time.monotonic()
    base = build_on(device, torch.bfloat16, lambda: LlamaModel(LlamaConfig(**s["config"], attn_implementation="sdpa")))
    # A prefill forward without a KV cache, as the BERT rows; a cache would also make every layer its own compiled
    # graph (its guards read the cache layer's state), past torch.compile's recompile limit at 16 layers.
    base.config.use_cache = False
    plans = llama_plans(base)
    rows, problems, not_reached = [], [], []

    def keep(row):
        row["made_at_s"] = round(time.monotonic() - start, 1)  # for sizing the time box
        speed.print_row(row)
        rows.append(row)
        if on_rows is not None:
            on_rows(rows)

    for compiled, chosen in ((False, plans), (True, {k: p for k, p in plans.items() if k[0] == "heads+ffn"})):
        label = f"{s['name']} b{s['batch']} {'compile' if compiled else 'eager'}"
        margin = COMPILE_MARGIN_LLAMA_S if compiled and not dry else 0
        if time.monotonic() > deadline - margin:
            not_reached.append(label)
            continue
        try:
            made = speed.time_rows(
                s["name"],
                base,
                chosen,
                precision="bf16+compile" if compiled else "bf16",
                batch=s["batch"],
                seq=s["seq"],
                repeats=s["repeats"],
                warmup=s["warmup"],
                compile_backend=s["backend"] if compiled else None,
                compile_layers="layers",  # regional: one compiled decoder layer serves all of a uniform plan's layers
                device=device,
                deadline=deadline - margin,
                on_row=keep,
                on_error=lambda kind, target, err, label=label: problems.append(
                    f"{label} {kind} {target:.0%}: {type(err).__name__}: {err}"[:2000]
                ),
            )
        except Exception as err:  # noqa: BLE001 - the dense model failed: the compiled rows still run
            problems.append(f"{label} dense: {type(err).__name__}: {err}"[:2000])
            continue
        if len(made) < len(chosen):
            not_reached.append(f"{label}: {len(chosen) - len(made)} of {len(chosen)} rows")
    for precision in ("bf16", "bf16+compile"):
        if not any(r["precision"] == precision for r in rows):
            problems.append(f"no {precision} row was made")
    return {
        "device": str(device),
        "seq": s["seq"],
        "batch": s["batch"],
        "precision": "bf16 weights, no autocast; SDPA attention",
        "compile_backend": s["backend"],
        "repeats": s["repeats"],
        "warmup": s["warmup"],
        "geometries": {s["name"]: current_plan(base).geometry.to_dict()},
        "rows": rows,
        "not_reached": not_reached,
        "notes": ["CPU dry run: a tiny Llama, torch.compile with backend='eager'"] if dry else [],
        "ok": not problems,
        "problems": problems,
    }
