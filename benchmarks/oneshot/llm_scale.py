"""One-shot pruning at LLM scale (issue 22): ``prune_oneshot`` step by step on random-weight Llama shapes.

One call per shape, ``prune_oneshot(model, batches, params_budget=0.2)`` with issue 22's steps (Fisher, the budget
search, reconstruction), on random-token calibration batches. Shapes (``SHAPES``, built in code: no hub):
SmolLM2-135M, SmolLM2-360M and Llama-3.2-1B on the CPU (fp32, 8 batches of 1 x 256 tokens by default, the issue's
CPU setting); Llama-3.2-1B and Llama-3-8B on a GPU (bf16, 128 sequences x 2,048 tokens, ``GPU_CALIBRATION``), which
``make gpu-check`` runs (its ``llm-scale`` part, ``gpu/gpu_parts.py``). Each model is built directly in its dtype on
its device, seeded.

A row: for each step (score, split, prune, reconstruct, total) the seconds, peak memory and tokens/s as the call's
``OneShotReport`` gives them (``peak_memory``, ``tokens``, ``memory_kind`` and ``reference`` are read only where the
report has them); the ratios reconstruct/score and split/score; where the dense reference lived; the parameters
after; and the peak memory measured here around the whole call as a cross-check (CUDA: ``max_memory_allocated``;
CPU: the process's peak resident set, reset before the call). The issue's goals are judged in each row they apply
to (``goals``) and the numbers from before issue 22 are kept beside them (``TODAY``).

``python benchmarks/oneshot/llm_scale.py`` writes ``results/cpu/llm_scale.json`` (not in ``make bench``);
``--quick``: a tiny Llama, in seconds. Public API only.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import bench_args, machine, write_json
from speed.llm_speed import LLAMA_1B, SMOLLM2, TINY
from transformers import AutoModelForCausalLM, LlamaConfig

from hf_gradprune import current_plan, prune_oneshot
from hf_gradprune.deploy.latency import random_inputs

SMOLLM2_360M = dict(SMOLLM2, hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                    num_key_value_heads=5)  # fmt: skip
LLAMA_8B = dict(LLAMA_1B, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, head_dim=128,
                tie_word_embeddings=False)  # fmt: skip
SHAPES = {
    "SmolLM2-135M": SMOLLM2,
    "SmolLM2-360M": SMOLLM2_360M,
    "Llama-3.2-1B": LLAMA_1B,
    "Llama-3-8B": LLAMA_8B,
    "tiny": TINY,  # --quick, and the GPU check's dry run
    "tiny-untied": dict(TINY, tie_word_embeddings=False, vocab_size=512),  # the dry run's stand-in for the 8B
}
CPU_SHAPES = ("SmolLM2-135M", "SmolLM2-360M", "Llama-3.2-1B")
CPU_CALIBRATION = dict(batches=8, batch_size=1, seq=256)  # the CPU numbers: 8 x 256 tokens
QUICK_CALIBRATION = dict(batches=4, batch_size=2, seq=32)
# 128 sequences x 2,048 tokens (SparseGPT's and Wanda's calibration) in 16 batches of 8: scoring sees all 128,
# reconstruction its default 16 batches (all 128), the budget search its default 4 (32 sequences).
GPU_CALIBRATION = dict(batches=16, batch_size=8, seq=2048)
# Keywords given to prune_oneshot on the GPU when its signature has them (issue 22 adds micro-batched, checkpointed
# scoring); a row lists the ones the API lacked.
GPU_OPTIONS = {"micro_batch_size": 1, "gradient_checkpointing": True}
TARGET = {"params_budget": 0.2}
STEPS = ("score", "split", "prune", "reconstruct", "total")

# The numbers before issue 22 (its text; ../shared/gpu-runs/2026-12-04-h200/scale_probe.jsonl), same call.
TODAY = {
    "cpu": {
        "source": "issue 22: 2 cores, fp32, random SmolLM2-135M shape, 8 x 256 calibration tokens",
        "SmolLM2-135M": {"score": 9.7, "split": 26.3, "prune": 0.1, "reconstruct": 14.9, "total": 51.0},
    },
    "gpu": {
        "source": "scale_probe.jsonl, H200, bf16, SDPA, 16 batches of 4 x 512 tokens (32,768), commit 5dd57ae",
        "Llama-3.2-1B": {
            "score": 1.07,
            "split": 10.3,
            "prune": 0.07,
            "reconstruct": 78.58,
            "total": 90.07,
            "peak_gib": 8.65,
        },  # fmt: skip
        "Llama-3-8B": {"not_done": "not done in 250 s"},
    },
}
for _t in (TODAY["cpu"]["SmolLM2-135M"], TODAY["gpu"]["Llama-3.2-1B"]):
    _t["reconstruct/score"] = round(_t["reconstruct"] / _t["score"], 2)
    _t["split/score"] = round(_t["split"] / _t["score"], 2)

# The goals, judged where they apply: on the CPU for these shapes, on a GPU for the 8B shape.
CPU_GOAL_SHAPES = ("SmolLM2-135M", "Llama-3.2-1B")
GPU_GOAL_SHAPES = ("Llama-3-8B",)
GPU_TOTAL_LIMIT_S = 300.0
GPU_PEAK_LIMIT = 1.6  # x the model's bf16 weight bytes


# ---------------------------------------------------------------------------------------------- measuring
class ProcessPeak:
    """The process's peak resident set from ``start()`` on: Linux's VmHWM, reset by writing 5 to
    /proc/self/clear_refs. Where that cannot be reset, the lifetime peak (``ru_maxrss``), and ``kind`` says so."""

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.kind = "cpu: process peak RSS (VmHWM, reset before the call)"
        except OSError:
            self.kind = "cpu: process peak RSS since the process started (ru_maxrss: VmHWM could not be reset)"

    def peak(self) -> int:
        with contextlib.suppress(OSError):
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed_oneshot(model, batches, device: torch.device, **kwargs):
    """``prune_oneshot(model, batches, **kwargs)`` with the wall time and peak memory of the whole call measured
    here: ``(model, report, measured)``. CUDA: ``max_memory_allocated`` (reset before); CPU: ``ProcessPeak``."""
    cuda = device.type == "cuda"
    rss = ProcessPeak()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        kind = "cuda: max_memory_allocated"
    else:
        gc.collect()
        rss.start()
        before = rss.peak()
        kind = rss.kind
    t = time.perf_counter()
    # issue 22's path: the steps fixed (reconstruction on, rearrangement off) as they were its default, so the rows stay
    # comparable; the held-out choice among the steps (issue 24's default) is oneshot/default_path.py's question
    kwargs = {"reconstruct": True, "rearrange": False, **kwargs}
    model, report = prune_oneshot(model, batches, **kwargs)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if cuda else rss.peak()
    return model, report, {"wall_s": round(wall, 2), "peak_bytes": peak, "before_bytes": before, "kind": kind}


def build_llama(config: dict, device: torch.device, dtype: torch.dtype):
    """A random-weight Llama of ``config`` made directly in ``dtype`` on ``device`` (no fp32 copy on the way)."""
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config, attn_implementation="sdpa"), dtype=dtype)
    return model.eval()


def api_options(options: dict) -> tuple[dict, list[str]]:
    """The ``options`` that ``prune_oneshot`` takes, and the names of those it does not (recorded, not passed)."""
    from hf_gradprune.oneshot.prune import PLAN_OPTIONS, SEARCH_OPTIONS

    accepted = set(inspect.signature(prune_oneshot).parameters) | set(PLAN_OPTIONS) | set(SEARCH_OPTIONS)
    return {k: v for k, v in options.items() if k in accepted}, sorted(k for k in options if k not in accepted)


def _gib(x) -> float | None:
    return None if x is None else round(x / 2**30, 3)


def step_table(report, batch_tokens: int, all_tokens: int) -> dict:
    """Per step: seconds, peak memory and tokens (the report's where it has them) and tokens/s. Without the
    report's ``tokens``, a step's tokens are its batches (``report.batches``) times ``batch_tokens``."""
    peaks = getattr(report, "peak_memory", None) or {}
    tokens = dict(getattr(report, "tokens", None) or {})
    if not tokens:
        used = report.batches
        tokens = {"score": used.get("score", 0), "split": used.get("search", 0), "reconstruct": used.get("reconstruct")}
        tokens = {k: v * batch_tokens for k, v in tokens.items() if v}
    if "search" in tokens and "split" not in tokens:
        tokens["split"] = tokens.pop("search")
    tokens.setdefault("total", all_tokens)
    out = {}
    for step in STEPS:
        if step not in report.seconds:
            continue
        seconds = report.seconds[step]
        n = tokens.get(step)
        out[step] = {
            "seconds": round(seconds, 3),
            "peak_memory_bytes": peaks.get(step),
            "peak_memory_gib": _gib(peaks.get(step)),
            "tokens": n,
            "tokens_per_s": round(n / seconds, 1) if n and seconds > 0 else None,
        }
    return out


def judge(value, limit, what: str) -> dict:
    status = "unknown" if value is None else "met" if value <= limit else "missed"
    return {"goal": what, "value": value, "limit": limit, "status": status}


def goals(row: dict) -> list[dict]:
    """The issue's goals that apply to ``row``: on the CPU, reconstruction and the split search take no longer
    than scoring (SmolLM2-135M and Llama-3.2-1B shapes); on a GPU, the 8B shape in <= 300 s with a peak of at most
    1.6x its bf16 weights. A row that did not finish has ``status`` unknown, or missed when it ran past the limit."""
    out = []
    if row["device"] == "cpu" and row["shape"] in CPU_GOAL_SHAPES:
        ratios = row.get("ratios") or {}
        out.append(judge(ratios.get("reconstruct/score"), 1.0, "reconstruct <= score (seconds)"))
        out.append(judge(ratios.get("split/score"), 1.0, "split search <= score (seconds)"))
    if row["device"].startswith("cuda") and row["shape"] in GPU_GOAL_SHAPES:
        total = (row.get("steps") or {}).get("total", {}).get("seconds")
        limit_bytes = GPU_PEAK_LIMIT * row["params"] * 2
        time_goal = judge(total, GPU_TOTAL_LIMIT_S, f"total <= {GPU_TOTAL_LIMIT_S:.0f} s")
        if total is None and (row.get("stopped_after_s") or 0) > GPU_TOTAL_LIMIT_S:
            time_goal["status"] = "missed"  # killed at its box, past the limit
        peak = (row.get("measured") or {}).get("peak_bytes")
        peak_goal = judge(peak, round(limit_bytes), f"peak <= {GPU_PEAK_LIMIT} x bf16 weights (bytes)")
        out += [time_goal, peak_goal]
    return out


def scale_row(shape: str, device: torch.device, dtype: torch.dtype, calibration: dict, options=None, seed=0) -> dict:
    """One ``prune_oneshot`` call on the ``shape`` (a ``SHAPES`` name): the row described in the module docstring."""
    config = SHAPES[shape]
    passed, lacking = api_options(options or {})
    torch.manual_seed(seed)
    t = time.perf_counter()
    model = build_llama(config, device, dtype)
    build_s = time.perf_counter() - t
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    n, b, s = calibration["batches"], calibration["batch_size"], calibration["seq"]
    batches = [random_inputs(model, b, s, seed=seed + i) for i in range(n)]
    model, report, measured = timed_oneshot(model, batches, device, seq_len=s, **TARGET, **passed)
    plan = current_plan(model)
    with torch.inference_mode():
        probe = batches[0]["input_ids"][:1, :64]
        finite = bool(torch.isfinite(model(input_ids=probe).logits.float()).all())
    steps = step_table(report, b * s, n * b * s)
    sec = report.seconds
    rec = report.reconstruction
    row = {
        "shape": shape,
        "status": "done",
        "config": config,
        "params": params,
        "weight_bytes": weight_bytes,
        "device": str(device) if device.type == "cpu" else f"cuda ({torch.cuda.get_device_name(device)})",
        "dtype": str(dtype).removeprefix("torch."),
        "calibration": dict(calibration, tokens=n * b * s),
        "target": TARGET,
        "options": passed,
        "options_not_in_api": lacking,
        "build_s": round(build_s, 2),
        "steps": steps,
        "memory_kind": getattr(report, "memory_kind", None),
        "measured": dict(measured, peak_gib=_gib(measured["peak_bytes"]), before_gib=_gib(measured["before_bytes"])),
        "ratios": {
            "reconstruct/score": round(sec["reconstruct"] / sec["score"], 3) if sec.get("score") else None,
            "split/score": round(sec["split"] / sec["score"], 3) if sec.get("score") else None,
        },
        "reference": getattr(report, "reference", None)
        or {"where": "device", "why": "not reported: this code keeps a full copy of the model where it is"},
        "batches_used": report.batches,
        "params_after": sum(p.numel() for p in model.parameters()),
        "params_removed": round(plan.params_removed(), 4),
        "heads_kept": plan.num_heads,
        "neurons_kept": plan.num_neurons,
        "split": None if report.split is None else {k: v for k, v in report.split.items() if k != "candidates"},
        "reconstruction": None
        if rec is None
        else {"tokens": rec.tokens, "sublayers": len(rec.sublayers), "skipped": len(rec.skipped)},
        "finite_after": finite,
    }
    row["goals"] = goals(row)
    del model, batches, report
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def failed_row(shape: str, device: torch.device, dtype, calibration: dict, status: str, **extra) -> dict:
    """The row of a shape that did not finish (an error, its time box, no time left): what was asked, and why."""
    config = SHAPES[shape]
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(LlamaConfig(**config)).parameters())
    n, b, s = calibration["batches"], calibration["batch_size"], calibration["seq"]
    row = {
        "shape": shape,
        "status": status,
        "config": config,
        "params": params,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "calibration": dict(calibration, tokens=n * b * s),
        "target": TARGET,
        **extra,
    }
    row["goals"] = goals(row)
    return row


# ---------------------------------------------------------------------------------------------- report
def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _cell(v, fmt="{:.1f}") -> str:
    return "" if v is None else fmt.format(v)


def markdown(rows: list[dict]) -> str:
    """The rows as the tables of benchmarks/README.md: seconds and tokens/s per step, peak memory, ratios, goals."""
    out = [
        "| shape | params | device, dtype | calibration | score | split | prune | reconstruct | total | "
        "reconstruct/score | split/score | peak GiB (measured) | reference | params after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["calibration"]
        calib = f"{c['batches']} x {c['batch_size']} x {c['seq']}"
        head = f"| {r['shape']} | {_count(r['params'])} | {r['device']}, {r['dtype']} | {calib} |"
        if r["status"] != "done":
            out.append(f"{head} {r['status']} |||||||||| ")
            continue
        steps = r["steps"]
        cells = []
        for step in STEPS:
            x = steps.get(step, {})
            rate = f" ({x['tokens_per_s']:,.0f} tok/s)" if x.get("tokens_per_s") and step != "prune" else ""
            cells.append(f"{_cell(x.get('seconds'))} s{rate}" if x else "")
        ref = r["reference"]
        out.append(
            f"{head} {' | '.join(cells)} | {_cell(r['ratios']['reconstruct/score'], '{:.2f}×')} | "
            f"{_cell(r['ratios']['split/score'], '{:.2f}×')} | {_cell(r['measured']['peak_gib'], '{:.2f}')} | "
            f"{ref.get('where')} | {_count(r['params_after'])} |"
        )
    judged = [(r["shape"], g) for r in rows for g in r.get("goals", [])]
    if judged:
        out += ["", "| shape | goal | value | limit | status |", "|---|---|---|---|---|"]
        for shape, g in judged:
            out.append(f"| {shape} | {g['goal']} | {g['value']} | {g['limit']} | **{g['status']}** |")
    return "\n".join(out) + "\n"


def summary(row: dict) -> str:
    """One line per row for the console and the GPU check's table."""
    if row["status"] != "done":
        return f"{row['shape']}: {row['status']}"
    sec = {k: v["seconds"] for k, v in row["steps"].items()}
    steps = ", ".join(f"{k} {v:.1f}" for k, v in sec.items() if k != "total")
    goals_text = "".join(f"; {g['goal']}: {g['status']}" for g in row["goals"])
    return f"{row['shape']}: {sec['total']:.1f} s ({steps}), peak {row['measured']['peak_gib']:.2f} GiB{goals_text}"


# ---------------------------------------------------------------------------------------------- run
def run(shapes, device: torch.device, dtype: torch.dtype, calibration: dict, options: dict, out: Path, name: str):
    """Every shape in turn (a failing one is recorded and the next still runs); the results file is rewritten
    after each row, so an interrupted run keeps the rows before it."""
    result = {
        "machine": machine(),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "calibration": calibration,
        "target": TARGET,
        "today": TODAY,
        "rows": [],
    }
    for shape in shapes:
        try:
            row = scale_row(shape, device, dtype, calibration, options)
        except Exception as err:  # noqa: BLE001 - recorded; the next shape still runs
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            row = failed_row(shape, device, dtype, calibration, f"error: {type(err).__name__}: {err}"[:2000])
        result["rows"].append(row)
        print(summary(row), flush=True)
        write_json(out / f"{name}.json", result)
    print(markdown(result["rows"]), flush=True)
    return result


def _options(pairs) -> dict:
    out = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        out[key] = json.loads(value) if value else True
    return out


def main(argv=None):
    def add(parser: argparse.ArgumentParser):
        parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=None)
        parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
        parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                            help="default: float32 on the CPU, bfloat16 on CUDA")  # fmt: skip
        parser.add_argument("--batches", type=int, default=None)
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--seq", type=int, default=None)
        parser.add_argument("--option", action="append", metavar="KEY=JSON",
                            help="a prune_oneshot keyword (passed only if its signature has it; CUDA default: "
                                 f"{GPU_OPTIONS})")  # fmt: skip
        parser.add_argument("--name", default="llm_scale", help="results file name (without .json)")

    args = bench_args(argv, __doc__.split("\n\n")[0], add)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    base = QUICK_CALIBRATION if args.quick else GPU_CALIBRATION if cuda else CPU_CALIBRATION
    calibration = {
        "batches": args.batches or base["batches"],
        "batch_size": args.batch_size or base["batch_size"],
        "seq": args.seq or base["seq"],
    }
    shapes = args.shapes or (("tiny",) if args.quick else ("Llama-3.2-1B", "Llama-3-8B") if cuda else CPU_SHAPES)
    options = _options(args.option) if args.option else (dict(GPU_OPTIONS) if cuda else {})
    return run(shapes, device, dtype, calibration, options, args.out, args.name)


if __name__ == "__main__":
    main()
