"""The ``semi-structured`` part of ``make gpu-check``: 2:4 weights through torch's semi-structured kernels
(``hf_gradprune.deploy.semi_structured.to_semi_structured``) against the same weights dense with exact zeros, fp16 on
CUDA: a Llama-3.2-1B-shaped MLP (hidden 2048, intermediate 8192; its input ``batch`` tokens) and BERT-base (built
from its config, random weights made 2:4 by magnitude; ``batch`` x 128 tokens), at batch 64 and 256.

Per row: dense and semi-structured milliseconds (``deploy.latency.measure_latency``, medians), the speedup, and the
largest difference between the two outputs (absolute, and relative to the dense output's largest value). It records
the device's name and compute capability and what ``to_semi_structured`` said: on Hopper (sm_90) its warning
(pytorch #132009, #153825), and where the device refuses the kernels the error, in the rows and the notes: a refusal
is a finding, not a failure. The part fails on anything else (an exception of ours, non-finite or different outputs).

``dry=True`` (CPU): tiny shapes, the same code, with the CUDA device and torch's converter emulated (the dense weight
stands in for the compressed one, so the times are the dense ones twice); the real call's refusal on the CPU is
recorded in the notes.
"""

from __future__ import annotations

import contextlib
import copy
import time

import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from hf_gradprune.deploy import semi_structured as ss
from hf_gradprune.deploy.latency import measure_latency
from hf_gradprune.sparsity import WeightMasks, satisfies_nm, weight_targets

MAX_REL_DIFF = 0.02  # fp16 sums in another order: the semi-structured output may differ by this much, relative


def settings(dry: bool) -> dict:
    if dry:
        return {
            "batches": (2, 4),
            "seq": 16,
            "repeats": 3,
            "warmup": 1,
            "llama": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),
            "bert": dict(
                vocab_size=128, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2
            ),
        }
    return {
        "batches": (64, 256),
        "seq": 128,
        "repeats": 20,
        "warmup": 5,
        # Llama-3.2-1B's layer: 32 query heads and 8 key/value heads of 64
        "llama": dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8),
        "bert": {},  # BertConfig's defaults are BERT-base's
    }


def make_two_four(model) -> None:
    """Zero the 2 smallest |w| of every 4 consecutive inputs in each block linear: the dense-zeros model."""
    targets = weight_targets(model)
    scores = {t.name: t.matrix.detach().abs().float() for t in targets}
    WeightMasks.from_scores(targets, scores, 0.5, "2:4").apply_(model)
    assert all(satisfies_nm(t.matrix.detach(), 2, 4) for t in targets)


def build(kind: str, s: dict, device: torch.device):
    """``(model, config)``: fp16, eval, its block linears 2:4 with exact zeros."""
    torch.manual_seed(0)
    if kind == "llama-mlp":
        config = LlamaConfig(num_hidden_layers=1, vocab_size=128, head_dim=64, **s["llama"])
        model = LlamaForCausalLM(config)
    else:
        config = BertConfig(**s["bert"])
        model = BertForSequenceClassification(config)
    model = model.to(device=device, dtype=torch.float16).eval()
    make_two_four(model)
    return model, config


def timed(kind: str, model):
    """The module a row times: the MLP of the Llama layer, or the whole BERT."""
    return model.model.layers[0].mlp if kind == "llama-mlp" else model


@torch.inference_mode()
def output(kind: str, model, inputs: dict) -> torch.Tensor:
    if kind == "llama-mlp":
        return timed(kind, model)(**inputs).float()
    return model(**inputs, output_hidden_states=True).hidden_states[-1].float()


def dense_stand_in(weight: torch.Tensor) -> torch.Tensor:
    """The dry run's converter: the dense weight itself (F.linear takes it as torch's compressed one)."""
    return weight.clone()


@contextlib.contextmanager
def emulated_kernels():
    """CPU dry run: a CUDA device of compute capability 8.0 and a converter that returns the dense weight."""
    saved = (
        ss._cuda_device,
        torch.cuda.get_device_capability,
        torch.cuda.get_device_name,
        torch.backends.cusparselt.is_available,
        torch.sparse.to_sparse_semi_structured,
    )
    ss._cuda_device = lambda w: torch.device("cuda", 0)
    torch.cuda.get_device_capability = lambda d=None: (8, 0)
    torch.cuda.get_device_name = lambda d=None: "emulated (CPU dry run)"
    torch.backends.cusparselt.is_available = lambda: True
    torch.sparse.to_sparse_semi_structured = lambda w: dense_stand_in(w)
    try:
        yield
    finally:
        (
            ss._cuda_device,
            torch.cuda.get_device_capability,
            torch.cuda.get_device_name,
            torch.backends.cusparselt.is_available,
            torch.sparse.to_sparse_semi_structured,
        ) = saved


def device_info(dry: bool) -> dict:
    if dry or not torch.cuda.is_available():
        return {"device": "cpu", "compute_capability": None}
    major, minor = torch.cuda.get_device_capability(0)
    cusparselt = getattr(torch.backends, "cusparselt", None)
    return {
        "device": torch.cuda.get_device_name(0),
        "compute_capability": f"{major}.{minor}",
        "hopper_or_newer": major >= 9,
        "cusparselt": cusparselt.version() if cusparselt is not None and cusparselt.is_available() else None,
    }


def model_rows(kind: str, s: dict, device: torch.device, deadline: float) -> tuple[list[dict], dict]:
    """The rows of one model, and what converting it said (the report, or the error)."""
    model, config = build(kind, s, device)
    inputs = {}
    gen = torch.Generator(device="cpu").manual_seed(1)
    for b in s["batches"]:
        if kind == "llama-mlp":
            inputs[b] = {"x": torch.randn(b, config.hidden_size, generator=gen).to(device, torch.float16)}
        else:
            inputs[b] = {"input_ids": torch.randint(0, config.vocab_size, (b, s["seq"]), generator=gen).to(device)}
    sparse = copy.deepcopy(model)
    try:
        with warnings_caught() as caught:
            report = ss.to_semi_structured(sparse)
        converted = {"report": report.to_dict(), "warnings": caught}
    except ss.SemiStructuredError as err:  # the device or its torch refuses: recorded, the dense rows still run
        converted = {"error": str(err)}
        sparse = None
    rows = []
    for b in s["batches"]:
        row = {"model": kind, "batch": b, "tokens": b if kind == "llama-mlp" else b * s["seq"], "dtype": "float16"}
        if time.monotonic() > deadline:
            row["error"] = "not reached: out of time"
            rows.append(row)
            continue
        x = inputs[b]
        row["dense_ms"] = round(measure_latency(timed(kind, model), b, 0, s["repeats"], s["warmup"], inputs=x), 3)
        if sparse is None:
            row["error"] = converted["error"]
        else:
            row["sparse_ms"] = round(measure_latency(timed(kind, sparse), b, 0, s["repeats"], s["warmup"], inputs=x), 3)
            row["speedup"] = round(row["dense_ms"] / row["sparse_ms"], 3)
            ref, got = output(kind, model, x), output(kind, sparse, x)
            diff = (got - ref).abs().max().item()
            row.update(
                finite=bool(torch.isfinite(got).all()),
                max_abs_diff=diff,
                max_rel_diff=diff / max(ref.abs().max().item(), 1e-12),
            )
        rows.append(row)
    del model, sparse
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, converted


@contextlib.contextmanager
def warnings_caught():
    """The warnings ``to_semi_structured`` gives (Hopper's), as text, still shown."""
    import warnings

    texts = []
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        yield texts
    texts.extend(
        str(w.message) for w in got if issubclass(w.category, UserWarning) and "prototype" not in str(w.message)
    )
    for text in texts:
        print(f"warning: {text}", flush=True)


def semi_structured_part(dry: bool, deadline: float, on_rows=None) -> dict:
    """Every row (``on_rows`` gets them as they are made); see the module's docstring."""
    device = torch.device("cpu" if dry else "cuda")
    s = settings(dry)
    info = device_info(dry)
    rows, problems, notes, conversions = [], [], [], {}
    if dry:
        notes.append(
            "CPU dry run: the CUDA device and torch's converter are emulated (dense weights stand in for the "
            "semi-structured ones): the code runs, the times are not the kernels'"
        )
        try:
            ss.to_semi_structured(build("bert", s, device)[0])
        except ss.SemiStructuredError as err:
            notes.append(f"on this CPU the real call refuses: {err}")
    for kind in ("llama-mlp", "bert-base"):
        try:
            with emulated_kernels() if dry else contextlib.nullcontext():
                made, converted = model_rows(kind, s, device, deadline)
        except Exception as err:  # noqa: BLE001 - reported; the next model still runs
            problems.append(f"{kind}: {type(err).__name__}: {err}"[:2000])
            continue
        conversions[kind] = converted
        if "error" in converted:
            notes.append(f"{kind}: to_semi_structured refused on {info['device']}: {converted['error']}"[:2000])
        notes += [f"{kind}: warning: {w}" for w in converted.get("warnings", [])]
        for row in made:
            if "max_rel_diff" in row and not (row["finite"] and row["max_rel_diff"] <= MAX_REL_DIFF):
                problems.append(
                    f"{kind} batch {row['batch']}: semi-structured output differs from the dense-zeros one by "
                    f"{row['max_rel_diff']:.3g} (relative; finite: {row['finite']})"
                )
        rows += made
        if on_rows is not None:
            on_rows(rows)
    return {**info, "rows": rows, "conversions": conversions, "notes": notes, "ok": not problems, "problems": problems}


def summary(result: dict) -> str:
    bits = []
    for r in result.get("rows", []):
        what = f"{r['model']} b{r['batch']}"
        bits.append(f"{what}: {r['speedup']:.2f}×" if "speedup" in r else f"{what}: {r.get('error', '')[:60]}")
    where = result.get("device", "")
    cc = result.get("compute_capability")
    return f"{where}{f' (sm {cc})' if cc else ''}; " + "; ".join(bits)


def markdown(result: dict) -> str:
    cc = result.get("compute_capability")
    out = [
        f"## 2:4 semi-structured kernels (fp16, {result.get('device')}{f', compute capability {cc}' if cc else ''})",
        "",
        "| model | batch | tokens | dense ms | 2:4 ms | speedup | max abs diff | max rel diff | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.get("rows", []):
        cells = [r["model"], r["batch"], r["tokens"], r.get("dense_ms", ""), r.get("sparse_ms", "")]
        cells.append(f"{r['speedup']:.2f}×" if "speedup" in r else "")
        cells += [f"{r[k]:.3g}" if k in r else "" for k in ("max_abs_diff", "max_rel_diff")]
        cells.append(r.get("error", "")[:200])
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out) + "\n"
