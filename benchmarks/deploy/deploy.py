"""Deployment: pruning stacked with ONNX Runtime int8 (issue 13 §2) — accuracy and latency on CPU.

Models: the dense fine-tune (``--dense``, default ``.cache/bench/dense-finetuned``, made by ``common.dense_model``)
and the quickstart's pruned model (``--pruned``, default ``outputs/quickstart``, made by ``make demo``: 50% of
heads and 50% of FFN neurons cut with Taylor importance, recovered by distillation). Data: the quickstart's
Rotten Tomatoes validation split (1,057 sentences), tokenized as the benchmarks do (``common.load_task``).
``--extra NAME=FOLDER`` adds another pruned model (e.g. one made with ``--balanced true``), measured and judged
like ``pruned``.

Rows, for each model (``--variants`` picks a subset):
- ``torch-fp32``: the model in PyTorch (eval mode, asserted), timed by ``hf_gradprune.deploy.latency.measure_latency``;
- ``ort-fp32`` / ``ort-int8``: ``export_onnx(folder, int8=True)`` (dynamo exporter; int8 = onnxruntime's dynamic
  quantization, QInt8 weights, uint8 activations);
- ``ort-int8-opt``: the same with ``optimize=True`` (onnxruntime's transformer optimizer before quantizing);
- ``ort-int8-opt-pre``: ``optimize=True, quant_preprocess=True`` (``quant_pre_process`` before quantizing);
- ``ort-int8-perchannel`` / ``ort-int8-u8``: ``quantize_dynamic`` on the exported fp32 graph with per-channel
  weight scales, or with QUInt8 instead of QInt8 weights (dynamic quantization's activations are always uint8);
- ``ort-fp32-fused`` / ``ort-int8-fused`` / ``ort-int8-fused-perchannel``: ``export_onnx(optimize=True)``'s fused
  graph (attention fused from a TorchScript export with eager attention, each fused ``Attention`` node with its
  own layer's head count, checked against torch) and its int8 (``-perchannel``: per-channel weight scales).
  ``ort-int8-opt`` is the same export's int8 graph as ``ort-int8-fused``, kept under its earlier name.

Columns: accuracy (batches of 32 padded to their longest; ORT runs the very same tokenized batches), agreement of
predictions with the same model in PyTorch fp32, latency at batch 1 x 64 and 32 x 64 tokens and the speedup over
dense PyTorch fp32. ONNX Runtime sessions: ``intra_op_num_threads`` = torch's threads, one inter-op thread,
``ORT_ENABLE_ALL``. **Timing in rounds:** each round times every variant once (the order rotates between
rounds) with ``--repeats`` passes after one warm-up; a cell is the median of its round medians and the JSON keeps
every round median (``spread`` = min/max). ``--quick``: the same pipeline on a tiny BERT and synthetic sentences.

    python benchmarks/deploy/deploy.py                 # full: writes benchmarks/results/cpu/deploy.json
    python benchmarks/deploy/deploy.py --table FILE    # the markdown table of a results file
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import numpy as np
import torch
from common import ROOT, bench_args, bench_work, dense_drift, dense_model, drift_record, load_task, machine, write_json

from hf_gradprune import PruningPlan, current_plan, load_pruned, prune_model, save_pruned
from hf_gradprune.deploy.latency import measure_latency

GOALS = {"speedup_batch1": 5.0, "speedup_batch32": 4.0, "max_accuracy_drop": 0.005}
VARIANTS = (
    "torch-fp32",
    "ort-fp32",
    "ort-int8",
    "ort-int8-opt",
    "ort-int8-opt-pre",
    "ort-int8-perchannel",
    "ort-int8-u8",
    "ort-fp32-fused",
    "ort-int8-fused",
    "ort-int8-fused-perchannel",
)
EVAL_BATCH = 32
PAUSE_S = 0.05


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------------------- ONNX variants


def _quantize(src: Path, dst: Path, per_channel: bool = False, u8_weights: bool = False) -> Path:
    """onnxruntime's dynamic quantization of ``src`` (contrib ops of a fused graph have no ONNX shape inference:
    ``DefaultTensorType`` says their outputs are float)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QUInt8 if u8_weights else QuantType.QInt8,
        per_channel=per_channel,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return dst


def attention_heads(path: Path) -> list[int]:
    """The head count of each fused ``Attention`` node of a graph, in graph order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [next(a.i for a in n.attribute if a.name == "num_heads") for n in graph.node if n.op_type == "Attention"]


def build_onnx(name: str, folder: Path, model, out: Path, tokenizer, cache: dict) -> tuple[Path, dict]:
    """The ONNX file of ``name`` for the model saved in ``folder`` (exports under ``out``); its notes."""
    from hf_gradprune.deploy.onnx_export import export_onnx

    def export(key, **kw):
        if key not in cache:
            t = time.perf_counter()
            report = export_onnx(str(folder), out / key, tokenizer=tokenizer, overwrite=True, **kw)
            cache[key] = (report, time.perf_counter() - t)
        return cache[key]

    def info(report, seconds):
        data = {"export_s": round(seconds, 1), "max_abs_diff": report.max_abs_diff}
        for attr in ("int8_max_abs_diff", "fused_operators"):
            if getattr(report, attr, None) is not None:
                data[attr] = getattr(report, attr)
        notes = getattr(report, "notes", None)
        if notes:
            data["export_notes"] = list(notes)
        return data

    if name in ("ort-fp32", "ort-int8", "ort-int8-perchannel", "ort-int8-u8"):
        report, seconds = export("base", int8=True)
        fp32 = Path(report.onnx_path)
        if name == "ort-fp32":
            return fp32, info(report, seconds)
        if name == "ort-int8":
            return Path(report.int8_path), info(report, seconds)
        dst = out / f"{name}.onnx"
        if not dst.exists():
            _quantize(fp32, dst, per_channel=name.endswith("perchannel"), u8_weights=name.endswith("u8"))
        return dst, info(report, seconds)
    if name == "ort-int8-opt":
        report, seconds = export("opt", int8=True, optimize=True)
        return Path(report.int8_path), info(report, seconds)
    if name == "ort-int8-opt-pre":
        report, seconds = export("opt-pre", int8=True, optimize=True, quant_preprocess=True)
        return Path(report.int8_path), info(report, seconds)
    if name in ("ort-fp32-fused", "ort-int8-fused", "ort-int8-fused-perchannel"):
        report, seconds = export("opt", int8=True, optimize=True)
        if report.optimized_path is None:
            raise RuntimeError(f"export_onnx kept no optimized graph: {report.notes}")
        fused = Path(report.optimized_path)
        data = {**info(report, seconds), "fused_ops": dict(report.fused_operators)}
        data["attention_heads"] = attention_heads(fused)
        if name == "ort-fp32-fused":
            return fused, data
        if name == "ort-int8-fused":
            return Path(report.int8_path), data
        dst = out / "fused-int8-perchannel.onnx"
        if not dst.exists():
            _quantize(fused, dst, per_channel=True)
        return dst, data
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtRunner:
    """An ONNX Runtime session fed with the same (torch) batches as the model, logits out as a tensor."""

    def __init__(self, path: Path, threads: int):
        self.session = ort_session(path, threads)
        self.names = [i.name for i in self.session.get_inputs()]
        self.output = self.session.get_outputs()[0].name

    def feed(self, batch: dict) -> dict:
        """The session's inputs from a torch batch (token types default to zeros, as in the torch model)."""
        ids = batch["input_ids"]
        return {k: (batch[k] if k in batch else torch.zeros_like(ids)).numpy().astype(np.int64) for k in self.names}

    def __call__(self, feed: dict) -> torch.Tensor:
        return torch.from_numpy(self.session.run([self.output], feed)[0])


# ------------------------------------------------------------------------------------------ accuracy and timing


def eval_batches(task) -> list[dict]:
    loader = torch.utils.data.DataLoader(task.dev, batch_size=EVAL_BATCH, collate_fn=task.collator)
    return [dict(batch) for batch in loader]


@torch.inference_mode()
def predictions(run, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted labels and logits of ``run`` (a torch model or an ``OrtRunner``) on every batch."""
    preds, logits = [], []
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if isinstance(run, OrtRunner):
            out = run(run.feed(inputs))
        else:
            assert not run.training, "torch rows must be measured in eval mode"
            out = run(**inputs).logits
        logits.append(out.float())
        preds.append(out.argmax(-1))
    return torch.cat(preds), torch.cat(logits)


def latency_inputs(vocab_size: int, batch: int, seq: int) -> dict:
    gen = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(min(5, vocab_size - 1), vocab_size, (batch, seq), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def time_ort(runner: OrtRunner, inputs: dict, repeats: int, warmup: int = 1) -> float:
    """Median milliseconds of one ``session.run`` (``measure_latency``'s discipline for an ORT session)."""
    feed = runner.feed(inputs)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        runner(feed)
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return float(sorted(times)[len(times) // 2])


def time_rounds(runs: dict, shape: tuple[int, int], vocab_size: int, rounds: int, repeats: int) -> dict:
    """Round medians of every run: each round times every run once, in an order rotated by the round."""
    batch, seq = shape
    inputs = latency_inputs(vocab_size, batch, seq)
    names = list(runs)
    out = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = runs[name]
            time.sleep(PAUSE_S)  # the previous run's thread pool (ORT's spinning workers, OpenMP) goes idle first
            if isinstance(run, OrtRunner):
                ms = time_ort(run, inputs, repeats)
            else:
                assert not run.training, "torch rows must be measured in eval mode"
                ms = measure_latency(run, batch, seq, repeats=repeats, warmup=1, inputs=inputs)
            out[name].append(round(ms, 3))
    return out


# ---------------------------------------------------------------------------------------------------- models


def _load(folder: Path, **kwargs):
    """A saved model, pruned or not (``load_pruned`` reads both), in eval mode."""
    return load_pruned(folder, **kwargs).eval()


def quick_models(task, work: Path) -> tuple[Path, Path]:
    """The tiny dense fine-tune and a pruned copy with uneven heads and FFN widths (no recovery: seconds)."""
    dense = dense_model(task, work, quick=True)
    dense_dir = work / "dense-finetuned"
    pruned_dir = work / "pruned"
    if not (pruned_dir / "config.json").exists():
        g = current_plan(dense).geometry
        heads = [list(range(max(1, g.num_heads - 1 - i % 2))) for i in range(g.num_layers)]
        neurons = [list(range(g.intermediate_size // 2 + 8 * (i % 2))) for i in range(g.num_layers)]
        prune_model(dense, PruningPlan(g, heads, neurons))
        save_pruned(dense, pruned_dir, tokenizer=task.tokenizer)
    return dense_dir, pruned_dir


def quickstart_accuracies(pruned_dir: Path):
    """The accuracies the quickstart run itself reported (its own dense fine-tune, and the pruned model after
    recovery), from its ``all_results.json``; None without one."""
    import json

    path = pruned_dir / "all_results.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    out = {k: data[k] for k in ("dense_accuracy", "recovered_accuracy") if isinstance(data.get(k), (int, float))}
    if not out:
        return None
    out["source"] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return out


# ------------------------------------------------------------------------------------------------------ run


def run(args) -> dict:
    quick = args.quick
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    work = bench_work(quick)
    task = load_task(quick, work)
    if quick:
        dense_dir, pruned_dir = quick_models(task, work)
        shapes = ((1, 16), (4, 16))
    else:
        dense_dir, pruned_dir = args.dense, args.pruned
        if not (dense_dir / "config.json").exists():
            if dense_dir.resolve() != (work / "dense-finetuned").resolve():
                raise SystemExit(f"deploy: no model in {dense_dir}")
            dense_model(task, work, quick=False)  # the benchmarks' cached dense fine-tune, made once
        if not (pruned_dir / "config.json").exists():
            raise SystemExit(f"deploy: no pruned model in {pruned_dir}: run `make demo` first (or pass --pruned)")
        shapes = ((1, 64), (32, 64))
    repeats = {shapes[0]: args.repeats or (20 if not quick else 5), shapes[1]: args.repeats or (5 if not quick else 3)}
    chosen = [v.strip() for v in args.variants.split(",")] if args.variants else list(VARIANTS)
    unknown = sorted(set(chosen) - set(VARIANTS))
    variants = [v for v in VARIANTS if v in chosen]  # torch-fp32 first: the other rows compare with it
    if unknown or "torch-fp32" not in variants:
        raise SystemExit(f"deploy: unknown variants {unknown}" if unknown else "deploy: torch-fp32 is the reference")
    load_at_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    onnx_dir = args.work or (ROOT / ".cache" / ("deploy-quick" if quick else "deploy"))
    batches = eval_batches(task)
    labels = torch.cat([b["labels"] for b in batches])

    rows, runs = [], {}
    torch_preds = {}
    models = {"dense": dense_dir, "pruned": pruned_dir}
    for spec in args.extra or []:
        name, _, folder = spec.partition("=")
        if not name or not folder or name in models or name.startswith("dense"):
            raise SystemExit(f"deploy: --extra takes NAME=FOLDER with a new name, got {spec!r}")
        if not (Path(folder) / "config.json").exists():
            raise SystemExit(f"deploy: --extra {name}: no model in {folder}")
        models[name] = Path(folder)
    for model_name, folder in models.items():
        model = _load(folder)
        cache: dict = {}
        for variant in variants:
            key = f"{model_name}/{variant}"
            row = {"model": model_name, "variant": variant, "folder": str(folder)}
            try:
                if variant == "torch-fp32":
                    run_ = model
                    row["path"] = None
                else:
                    path, notes = build_onnx(variant, folder, model, onnx_dir / model_name, task.tokenizer, cache)
                    row.update(notes)
                    row["path"] = str(path)
                    row["onnx_mb"] = round(path.stat().st_size / 2**20, 1)
                    run_ = OrtRunner(path, threads)
                preds, logits = predictions(run_, batches)
            except Exception as err:  # a variant that does not build or run is a row with its error, not a crash
                row["error"] = f"{type(err).__name__}: {str(err)[:500]}"
                print(f"[deploy] {key}: {row['error']}", flush=True)
                rows.append(row)
                continue
            if variant == "torch-fp32":
                torch_preds[model_name] = (preds, logits)
            ref_preds, ref_logits = torch_preds.get(model_name, (None, None))
            row["accuracy"] = float((preds == labels).float().mean())
            if ref_preds is not None:
                row["agree_with_torch"] = float((preds == ref_preds).float().mean())
                row["max_abs_logit_diff_vs_torch"] = float((logits - ref_logits).abs().max())
            rows.append(row)
            runs[key] = run_
            print(f"[deploy] {key}: accuracy {row['accuracy']:.4f}", flush=True)

    timings = {}
    for shape in shapes:
        print(f"[deploy] timing batch {shape[0]} x {shape[1]}: {args.rounds} rounds x {len(runs)} runs", flush=True)
        timings[shape] = time_rounds(runs, shape, task.tokenizer.vocab_size, args.rounds, repeats[shape])

    ref_key = "dense/torch-fp32"
    dense_acc = next(r["accuracy"] for r in rows if r["model"] == "dense" and r["variant"] == "torch-fp32")
    for row in rows:
        key = f"{row['model']}/{row['variant']}"
        if key not in runs:
            continue
        row["latency"] = {}
        for shape in shapes:
            medians = timings[shape][key]
            ms = statistics.median(medians)
            ref = statistics.median(timings[shape][ref_key])
            row["latency"][f"{shape[0]}x{shape[1]}"] = {
                "ms": round(ms, 3),
                "round_medians": medians,
                "spread": [min(medians), max(medians)],
                "speedup": round(ref / ms, 3),
                # the fastest round of each, a check on the median when other processes come and go
                "speedup_fastest_rounds": round(min(timings[shape][ref_key]) / min(medians), 3),
            }
        row["accuracy_drop_vs_dense"] = round(dense_acc - row["accuracy"], 4)

    goals = judge(rows, shapes, dense_acc)
    drifts = [
        dense_drift(f"{ref_key} {b}x{s}", timings[(b, s)][ref_key][0], timings[(b, s)][ref_key][-1]) for b, s in shapes
    ]
    result = {
        "task": task.name,
        "eval_examples": int(len(labels)),
        "eval_batch_size": EVAL_BATCH,
        "shapes": [f"{b}x{s}" for b, s in shapes],
        "timing": {
            "rounds": args.rounds,
            "repeats_per_round": {f"{b}x{s}": repeats[(b, s)] for b, s in shapes},
            "warmup_per_round": 1,
            "cell": "median of the round medians; spread = min/max round median",
            "order": "every round times every run once; the order rotates by one each round",
            "torch_timer": "hf_gradprune.deploy.latency.measure_latency",
            "ort_session": {
                "intra_op_num_threads": threads,
                "inter_op_num_threads": 1,
                "graph_optimization_level": "ORT_ENABLE_ALL",
                "execution_mode": "ORT_SEQUENTIAL",
            },
        },
        "machine": {**machine_info(threads, args.load_note), "loadavg_at_start": load_at_start},
        "models": {name: str(folder) for name, folder in models.items()},
        "dense_accuracy": dense_acc,
        "quickstart_reported": None if quick else quickstart_accuracies(pruned_dir),
        "goals": goals,
        "rows": rows,
        "dense_drift": drift_record(drifts),
    }
    return result


def machine_info(threads: int, load_note: str | None) -> dict:
    info = machine()
    info["cpu"] = cpu_name()
    info["threads"] = threads
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import onnx

        info["onnx"] = onnx.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    if load_note:
        info["load_note"] = load_note
    return info


def judge(rows: list[dict], shapes, dense_acc: float) -> dict:
    """Each int8 row of a pruned model (``pruned`` and any ``--extra``) against the goals; ``met`` if one row
    meets all three."""
    b1, b32 = (f"{b}x{s}" for b, s in shapes)
    out = {
        "targets": {
            f"speedup_{b1}": GOALS["speedup_batch1"],
            f"speedup_{b32}": GOALS["speedup_batch32"],
            "max_accuracy_drop": GOALS["max_accuracy_drop"],
        },
        "reference": "dense/torch-fp32",
        "rows": {},
    }
    for row in rows:
        if row["model"] == "dense" or "int8" not in row["variant"] or "latency" not in row:
            continue
        checks = {
            f"speedup_{b1}": row["latency"][b1]["speedup"] >= GOALS["speedup_batch1"],
            f"speedup_{b32}": row["latency"][b32]["speedup"] >= GOALS["speedup_batch32"],
            "accuracy": dense_acc - row["accuracy"] <= GOALS["max_accuracy_drop"] + 1e-12,
        }
        out["rows"][f"{row['model']}/{row['variant']}"] = {**checks, "all": all(checks.values())}
    out["met"] = any(r["all"] for r in out["rows"].values())
    out["met_by"] = [v for v, r in out["rows"].items() if r["all"]]
    return out


# ---------------------------------------------------------------------------------------------------- tables


def markdown(result: dict) -> str:
    """The deployment table: one line per (model, variant), then the goals."""
    shapes = result["shapes"]
    head = ["model", "variant", "accuracy", "agree w/ torch"]
    for s in shapes:
        head += [f"ms {s} (round min–max)", f"speedup {s}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [row["model"], row["variant"]]
        if "error" in row:
            cells += [f"failed: {row['error'][:80]}", ""] + ["", ""] * len(shapes)
        else:
            agree = row.get("agree_with_torch")
            cells += [f"{row['accuracy']:.4f}", "—" if row["variant"] == "torch-fp32" else f"{agree:.4f}"]
            for s in shapes:
                cell = row["latency"][s]
                lo, hi = cell["spread"]
                cells += [f"{cell['ms']:.2f} ({lo:.2f}–{hi:.2f})", f"{cell['speedup']:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    goals = result["goals"]
    t = goals["targets"]
    b1, b32 = shapes
    lines.append("")
    lines.append(
        f"Goals (pruned + int8 in ONNX Runtime vs dense PyTorch fp32): ≥ {t['speedup_' + b1]}× at {b1}, "
        f"≥ {t['speedup_' + b32]}× at {b32}, accuracy within {100 * t['max_accuracy_drop']:.1f} point of dense "
        f"({result['dense_accuracy']:.4f}): **{'met by ' + ', '.join(goals['met_by']) if goals['met'] else 'missed'}**."
    )
    for variant, checks in goals["rows"].items():
        missed = [k for k, ok in checks.items() if k != "all" and not ok]
        lines.append(f"- {variant}: {'all met' if not missed else 'missed ' + ', '.join(missed)}")
    qs = result.get("quickstart_reported")
    if qs:
        said = [f"{k.replace('_accuracy', '')} {v:.4f}" for k, v in qs.items() if k.endswith("_accuracy")]
        lines.append(f"- The quickstart run itself reported: {', '.join(said)} ({qs['source']}).")
    m = result["machine"]
    # the load at the end counts this run's own threads: only the load at the start says whether others ran
    busy = [x for x in (m.get("loadavg_at_start") or [])[:1] if x is not None]
    if busy and max(busy) > 0.5 * (m.get("cpu_count") or 1):
        lines.append(
            f"- **Warning: the machine was busy** (1-minute load {busy[0]:.1f} at the start on "
            f"{m.get('cpu_count')} cores). PyTorch's multi-threaded CPU forward stalls when another process holds a "
            "core (a tiny BERT went from 0.9 ms to 60-150 ms per pass); run alone before reading the speedups."
        )
    lines.append(
        f"- Machine: {m.get('cpu')}, {m.get('cpu_count')} cores, {m.get('threads')} threads; torch {m.get('torch')}, "
        f"onnxruntime {m.get('onnxruntime')}" + (f"; {m['load_note']}" if m.get("load_note") else "") + "."
    )
    return "\n".join(lines)


def main(argv=None) -> dict:
    def add(parser: argparse.ArgumentParser):
        parser.add_argument("--dense", type=Path, default=ROOT / ".cache" / "bench" / "dense-finetuned")
        parser.add_argument("--pruned", type=Path, default=ROOT / "outputs" / "quickstart")
        parser.add_argument(
            "--extra",
            action="append",
            metavar="NAME=FOLDER",
            help="another pruned model to measure like --pruned (e.g. a balanced plan's), repeatable",
        )
        parser.add_argument("--work", type=Path, default=None, help="where the ONNX files go (.cache/deploy)")
        parser.add_argument("--variants", default=None, help=f"comma-separated subset of: {', '.join(VARIANTS)}")
        parser.add_argument("--rounds", type=int, default=5)
        parser.add_argument("--repeats", type=int, default=None, help="passes per round (20 at batch 1, 5 at 32)")
        parser.add_argument("--threads", type=int, default=None, help="torch and ORT intra-op threads")
        parser.add_argument("--load_note", default=None, help="a word on the machine's load, kept in the JSON")
        parser.add_argument("--name", default="deploy", help="results file stem: OUT/NAME.json (e.g. deploy_threads1)")
        parser.add_argument("--table", type=Path, default=None, help="print the markdown table of a results file")

    args = bench_args(argv, __doc__.splitlines()[0], add)
    if args.table is not None:
        import json

        result = json.loads(args.table.read_text())
        print(markdown(result))
        return result
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    result = run(args)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    write_json(args.out / f"{args.name}.json", result)
    print(markdown(result))
    return result


if __name__ == "__main__":
    sys.exit(main() and None)
