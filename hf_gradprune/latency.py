"""The one place that times a model: median forward latency, and dense-vs-pruned comparisons.

Reports, benchmarks, the examples and the GPU check all call these, so every latency in the project is
measured the same way (warm-up passes, CUDA synchronisation, median of the repeats).
"""

from __future__ import annotations

import platform
import time

import torch
from torch import nn


def random_inputs(model: nn.Module, batch_size: int, seq_len: int, seed: int | None = None) -> dict:
    """``input_ids`` (random, avoiding the first few special ids) and an all-ones mask on the model's device."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch_size, seq_len), generator=gen).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def measure_latency(
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    repeats: int = 10,
    warmup: int = 2,
    *,
    autocast_dtype: torch.dtype | None = None,
    inputs: dict | None = None,
) -> float:
    """Median milliseconds of one forward pass (eval mode, no grad) on the model's device.

    ``inputs`` defaults to random ids of ``batch_size x seq_len``; ``autocast_dtype`` runs the passes under
    ``torch.autocast`` (e.g. bf16 on a GPU). The model's train/eval mode is restored afterwards.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = next(model.parameters()).device
    inputs = inputs if inputs is not None else random_inputs(model, batch_size, seq_len)
    was_training = model.training
    model.eval()
    times = []
    try:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
        ):
            for i in range(warmup + repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(**inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append(1000 * (time.perf_counter() - start))
    finally:
        model.train(was_training)
    return float(sorted(times)[len(times) // 2])


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's processor string."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def latency_comparison(dense, pruned, batch_sizes=(1, 32), seq_len: int = 128, repeats: int = 10) -> list[dict]:
    """Dense vs pruned latency rows, measured on this machine (the pruned model's device)."""
    rows = []
    device = next(pruned.parameters()).device
    for b in batch_sizes:
        d = measure_latency(dense, b, seq_len, repeats)
        p = measure_latency(pruned, b, seq_len, repeats)
        rows.append(
            {
                "batch_size": b,
                "seq_len": seq_len,
                "dense_ms": round(d, 3),
                "pruned_ms": round(p, 3),
                "speedup": round(d / p, 3),
                "device": str(device),
                "device_name": device_name(device),
                "torch_threads": torch.get_num_threads(),
                "dtype": str(next(pruned.parameters()).dtype),
            }
        )
    return rows
