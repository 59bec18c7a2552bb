"""The one place that times a model: median forward latency, dense-vs-pruned comparisons, and latency tables
(``LatencyTable``: one layer's attention and FFN time by units kept, measured once, predicting any plan's time).

Reports, benchmarks, the examples and the GPU check all call these, so every latency in the project is
measured the same way (warm-up passes, CUDA synchronisation, median of the repeats).
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import hashlib
import json
import math
import numbers
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ..architectures import Geometry


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


# ---------------------------------------------------------------------- latency tables (Kwon et al. 2022)
class LatencyTableError(ValueError):
    """A latency table that is malformed, or measured for another model, shape or machine."""


TABLE_VERSION = 1


@dataclass
class LatencyTable:
    """What one layer's attention and FFN cost in milliseconds, measured once on one machine at one shape.

    ``attention_ms[i]``: one layer's attention time with ``head_counts[i]`` query heads kept; ``ffn_ms[i]``:
    one layer's FFN time at ``ffn_widths[i]`` neurons (both 0 at 0: a layer's norms and residual adds are in
    ``other_ms``, the time of the model with every head and neuron removed: embeddings, norms, pooler).
    Between samples, times are interpolated linearly. ``dense_measured_ms``: the dense model's own measured time;
    when given, the layers' parts are scaled so that the dense prediction equals it (the parts are measured one
    kind at a time, and at a few milliseconds a layer with both kinds costs less than their sum: without the
    scale MiniLM at batch 1 was predicted 10-19% slow). Plain data: ``planning/`` (``latency_budget.py``,
    ``plan.py``) reads a table only through ``predict(plan)`` and ``seq_len``, so planning never imports deploy.
    """

    device_name: str
    dtype: str
    torch_threads: int
    batch_size: int
    seq_len: int
    geometry: dict
    head_counts: list[int]
    attention_ms: list[float]
    ffn_widths: list[int]
    ffn_ms: list[float]
    other_ms: float
    dense_measured_ms: float | None = None
    version: int = TABLE_VERSION

    def __post_init__(self):
        # every field, here, once: a table read from JSON may hold anything, and a NaN or a string found later
        # would plan silently wrong (a NaN dense time removes nothing) or fail deep in the arithmetic
        for name in ("device_name", "dtype"):
            _require(name, getattr(self, name), isinstance(getattr(self, name), str), "a string")
        for name in ("torch_threads", "batch_size", "seq_len"):
            _require(name, getattr(self, name), _is_int(getattr(self, name), 1), "an integer >= 1")
        _require("geometry", self.geometry, isinstance(self.geometry, dict), "a Geometry's fields (a dict)")
        for name in ("num_layers", "num_heads", "head_dim", "hidden_size", "intermediate_size"):
            value = self.geometry.get(name)
            _require(f"geometry.{name}", value, _is_int(value, 1), "an integer >= 1")
        try:
            geometry = Geometry(**self.geometry)
        except (TypeError, ValueError) as e:
            raise LatencyTableError(
                f"a latency table's geometry must be a Geometry's fields: {e}; {_REMEASURE}"
            ) from None
        for name, counts, times_name, times, top in (
            ("head_counts", self.head_counts, "attention_ms", self.attention_ms, geometry.num_heads),
            ("ffn_widths", self.ffn_widths, "ffn_ms", self.ffn_ms, geometry.intermediate_size),
        ):
            _require(name, counts, isinstance(counts, (list, tuple)), "a list of unit counts")
            _require(times_name, times, isinstance(times, (list, tuple)), "a list of times in ms")
            for i, count in enumerate(counts):
                _require(f"{name}[{i}]", count, _is_int(count, 0), "an integer >= 0")
            counts = list(counts)
            if counts != sorted(set(counts)) or not counts or counts[0] != 0 or counts[-1] != top:
                raise LatencyTableError(f"{name} must ascend from 0 to {top} without repeats, got {counts}")
            _require(times_name, times, len(times) == len(counts), f"one time per {name} sample ({len(counts)})")
            for i, t in enumerate(times):
                _require(f"{times_name}[{i}]", t, _is_time(t), "one finite time >= 0 per sample (ms)")
        _require("other_ms", self.other_ms, _is_time(self.other_ms), "a finite time >= 0 (ms)")
        dense = self.dense_measured_ms
        _require(
            "dense_measured_ms",
            dense,
            dense is None or _is_time(dense, strict=True),
            "None or a finite time > 0 (ms)",
        )
        _require("version", self.version, self.version == TABLE_VERSION, f"{TABLE_VERSION}")

    # ------------------------------------------------------------------ prediction
    @property
    def geometry_obj(self) -> Geometry:
        return Geometry(**self.geometry)

    def attention_time(self, heads: int) -> float:
        """One layer's attention ms with ``heads`` query heads (interpolated between the samples)."""
        return _interpolate(self.head_counts, self.attention_ms, heads)

    def ffn_time(self, width: int) -> float:
        """One layer's FFN ms at ``width`` neurons (interpolated between the samples)."""
        return _interpolate(self.ffn_widths, self.ffn_ms, width)

    def predict_shape(self, heads_per_layer, ffn_per_layer) -> float:
        """Predicted forward ms of the model with these per-layer counts: ``other_ms`` plus the layers' parts,
        scaled by ``scale``."""
        parts = sum(self.attention_time(h) for h in heads_per_layer) + sum(self.ffn_time(n) for n in ffn_per_layer)
        return self.other_ms + self.scale * parts

    @property
    def scale(self) -> float:
        """The factor on the layers' parts that makes the dense prediction the measured dense time (1 without a
        measured time, or when the parts are all 0)."""
        g = self.geometry_obj
        parts = g.num_layers * (self.attention_time(g.num_heads) + self.ffn_time(g.intermediate_size))
        if self.dense_measured_ms is None or parts <= 0 or self.dense_measured_ms <= self.other_ms:
            return 1.0
        return (self.dense_measured_ms - self.other_ms) / parts

    def predict(self, plan) -> float:
        """Predicted forward ms (at ``batch_size`` x ``seq_len``, on this table's machine) of a model cut to
        ``plan`` (anything with ``geometry``, ``heads`` and ``neurons``, e.g. a ``PruningPlan``)."""
        self.check(plan.geometry)
        return self.predict_shape([len(h) for h in plan.heads], [len(n) for n in plan.neurons])

    @property
    def dense_ms(self) -> float:
        """The predicted time of the unpruned model."""
        g = self.geometry_obj
        return self.predict_shape([g.num_heads] * g.num_layers, [g.intermediate_size] * g.num_layers)

    # ------------------------------------------------------------------ staleness
    def key(self) -> dict:
        """What the table is valid for: its machine, dtype, threads, input shape and model geometry."""
        return {
            "device_name": self.device_name,
            "dtype": self.dtype,
            "torch_threads": self.torch_threads,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "geometry": Geometry(**self.geometry).to_dict(),
        }

    def check(self, geometry: Geometry | None = None, **expected) -> None:
        """Refuse (``LatencyTableError``) a table measured for another geometry, or whose key differs from
        ``expected`` (any of ``device_name``, ``dtype``, ``torch_threads``, ``batch_size``, ``seq_len``)."""
        key = self.key()
        if geometry is not None and Geometry(**self.geometry) != geometry:
            raise LatencyTableError(
                f"this latency table was measured for another model ({key['geometry']}), not {geometry.to_dict()}: "
                "measure one for this model (measure_latency_table / cached_latency_table)"
            )
        unknown = set(expected) - set(key)
        if unknown:
            raise TypeError(f"unknown latency table key(s): {', '.join(sorted(unknown))}")
        stale = {k: (key[k], v) for k, v in expected.items() if v is not None and key[k] != v}
        if stale:
            diff = ", ".join(f"{k} {have!r} (wanted {want!r})" for k, (have, want) in stale.items())
            raise LatencyTableError(
                f"this latency table is stale: it was measured with {diff}; measure one for this machine and shape "
                "(measure_latency_table / cached_latency_table)"
            )

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        version = data.get("version") if isinstance(data, dict) else None
        if version != TABLE_VERSION:
            raise LatencyTableError(
                f"not a version-{TABLE_VERSION} latency table (version {version!r}): measure it again"
            )
        names = {f.name for f in fields(cls)}
        missing = names - set(data) - {"dense_measured_ms"}
        if missing:
            raise LatencyTableError(f"latency table lacks {', '.join(sorted(missing))}: measure it again")
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON, atomically (a temporary sibling renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # ours: the temporary file made just above
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, geometry: Geometry | None = None, **expected) -> LatencyTable:
        """Read a table; with ``geometry`` / ``expected`` keys (see ``check``) a stale one is refused."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LatencyTableError(f"cannot read a latency table from {os.fspath(path)!r}: {e}") from None
        table = cls.from_dict(data)
        table.check(geometry, **expected)
        return table


_REMEASURE = "measure the table again (measure_latency_table / cached_latency_table)"


def _is_int(value, least: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def _is_time(value, least: float = 0.0, strict: bool = False) -> bool:
    """A finite number of milliseconds >= ``least`` (> with ``strict``); NaN, inf, None, strings and bools fail."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return value > least if strict else value >= least


def _require(name: str, value, ok: bool, what: str) -> None:
    if not ok:
        raise LatencyTableError(f"latency table field {name} must be {what}, got {value!r}: {_REMEASURE}")


def _interpolate(xs: list[int], ys: list[float], x: float) -> float:
    if not xs[0] <= x <= xs[-1]:
        raise LatencyTableError(f"{x} is outside the table's samples [{xs[0]}, {xs[-1]}]")
    i = bisect.bisect_left(xs, x)
    if xs[i] == x:
        return float(ys[i])
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def _dtype_name(model: nn.Module) -> str:
    return str(next(model.parameters()).dtype)


def table_key(model: nn.Module, batch_size: int, seq_len: int, autocast_dtype: torch.dtype | None = None) -> dict:
    """The key a table measured now for ``model`` at ``batch_size`` x ``seq_len`` (under ``autocast_dtype``, when
    given: its dtype is the table's) would have."""
    from ..state import pruning_state

    device = next(model.parameters()).device
    return {
        "device_name": device_name(device),
        "dtype": str(autocast_dtype) if autocast_dtype is not None else _dtype_name(model),
        "torch_threads": torch.get_num_threads(),
        "batch_size": int(batch_size),
        "seq_len": int(seq_len),
        "geometry": pruning_state(model).geometry.to_dict(),
    }


def _default_samples(top: int, count: int, step: int = 1) -> list[int]:
    """``count`` samples from 0 to ``top`` (both included), evenly spaced, on multiples of ``step``."""
    points = {0, top}
    for i in range(1, max(count, 2) - 1):
        points.add(min(top, step * round(top * i / (max(count, 2) - 1) / step)))
    return sorted(points)


def measure_latency_table(
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    *,
    head_counts: list[int] | None = None,
    ffn_widths: list[int] | None = None,
    ffn_samples: int = 17,
    repeats: int = 5,
    warmup: int = 1,
    rounds: int = 2,
    autocast_dtype: torch.dtype | None = None,
    timer=None,
) -> LatencyTable:
    """Measure a ``LatencyTable`` for an unpruned ``model`` at ``batch_size`` x ``seq_len`` on its device.

    Times copies of the model pruned uniformly (through ``prune_model``, so the family's own surgery) to
    ``h`` heads and no FFN for each ``h`` of ``head_counts``, to no heads and ``n`` neurons for each ``n`` of
    ``ffn_widths``, and to nothing at all (``other_ms``); a layer's part is the difference from the empty
    model, divided by the layers, and made non-decreasing in the count (timing noise must not make a larger
    layer look faster). Every shape is timed once per round (``rounds``, alternating the order) and its median
    kept, so a slow spell of the machine spreads over all shapes instead of skewing a few. ``head_counts``
    defaults to every count the key/value groups allow (multiples of the group size), ``ffn_widths`` to
    ``ffn_samples`` evenly spaced widths (multiples of 8 where the width allows).
    ``autocast_dtype``: time under ``torch.autocast`` (e.g. bf16 on a GPU); the table's dtype is then that one. The
    caller's model is never changed. ``timer(model) -> ms`` replaces ``measure_latency`` (tests).
    """
    from ..planning.plan import PruningPlan  # latency.py builds plans to time them; plan.py never imports latency.py
    from ..state import pruning_state
    from ..surgery import prune_model

    checks = (("batch_size", batch_size), ("seq_len", seq_len), ("repeats", repeats), ("rounds", rounds))
    for name, value, least in ((name, value, 1) for name, value in checks):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    state = pruning_state(model)
    g = state.geometry
    full_heads, full_neurons = list(range(g.num_heads)), list(range(g.intermediate_size))
    if any(h != full_heads for h in state.head_ids) or any(n != full_neurons for n in state.neuron_ids):
        raise LatencyTableError(
            "measure_latency_table needs the unpruned model (a table describes every head count from 0 to the "
            "original); measure it on the dense model before pruning and pass the table along"
        )
    if head_counts is None:
        head_counts = list(range(0, g.num_heads + 1, g.group_size))
    if ffn_widths is None:
        ffn_widths = _default_samples(
            g.intermediate_size, ffn_samples, 8 if g.intermediate_size >= 8 * ffn_samples else 1
        )
    head_counts, ffn_widths = sorted(set(head_counts)), sorted(set(ffn_widths))
    if head_counts[0] != 0 or head_counts[-1] != g.num_heads or any(h % g.group_size for h in head_counts):
        raise ValueError(
            f"head_counts must include 0 and {g.num_heads} and be multiples of the key/value group size "
            f"({g.group_size}), got {head_counts}"
        )
    if ffn_widths[0] != 0 or ffn_widths[-1] != g.intermediate_size:
        raise ValueError(f"ffn_widths must include 0 and {g.intermediate_size}, got {ffn_widths}")
    if timer is None:
        inputs = random_inputs(model, batch_size, seq_len, seed=0)

        def timer(m):
            return measure_latency(
                m, batch_size, seq_len, repeats, warmup, inputs=inputs, autocast_dtype=autocast_dtype
            )

    def time_shape(heads: int, width: int) -> float:
        plan = PruningPlan(g, [list(range(heads))] * g.num_layers, [list(range(width))] * g.num_layers)
        pruned = copy.deepcopy(model)
        try:
            if heads < g.num_heads or width < g.intermediate_size:
                prune_model(pruned, plan)
            return float(timer(pruned))
        finally:
            del pruned

    shapes = [(0, 0), *((h, 0) for h in head_counts[1:]), *((0, n) for n in ffn_widths[1:])]
    shapes.append((g.num_heads, g.intermediate_size))
    times = {shape: [] for shape in shapes}
    for r in range(rounds):
        for shape in shapes if r % 2 == 0 else reversed(shapes):
            times[shape].append(time_shape(*shape))
    ms = {shape: statistics.median(t) for shape, t in times.items()}
    empty = ms[(0, 0)]
    attention = _monotone([0.0] + [max(0.0, (ms[(h, 0)] - empty) / g.num_layers) for h in head_counts[1:]])
    ffn = _monotone([0.0] + [max(0.0, (ms[(0, n)] - empty) / g.num_layers) for n in ffn_widths[1:]])
    dense = ms[(g.num_heads, g.intermediate_size)]
    key = table_key(model, batch_size, seq_len, autocast_dtype)
    return LatencyTable(
        **key,
        head_counts=head_counts,
        attention_ms=attention,
        ffn_widths=ffn_widths,
        ffn_ms=ffn,
        other_ms=empty,
        dense_measured_ms=dense,
    )


def _monotone(times: list[float]) -> list[float]:
    out, top = [], 0.0
    for t in times:
        top = max(top, t)
        out.append(top)
    return out


def default_cache_dir() -> Path:
    """``$HF_GRADPRUNE_CACHE/latency`` or ``~/.cache/hf_gradprune/latency``."""
    root = os.environ.get("HF_GRADPRUNE_CACHE") or Path.home() / ".cache" / "hf_gradprune"
    return Path(root) / "latency"


def cached_latency_table(
    model: nn.Module, batch_size: int, seq_len: int, cache_dir: str | os.PathLike | None = None, **measure_kwargs
) -> LatencyTable:
    """The table for ``model`` at this shape on this machine: loaded from ``cache_dir`` when one was measured
    with the same key (device name, dtype, threads, batch, sequence, geometry), else measured and saved there.
    ``measure_kwargs`` go to ``measure_latency_table``; of them only ``autocast_dtype`` is part of the key."""
    key = table_key(model, batch_size, seq_len, measure_kwargs.get("autocast_dtype"))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = (
        Path(cache_dir if cache_dir is not None else default_cache_dir())
        / f"{key['geometry']['model_type']}-{digest}.json"
    )
    if path.exists():
        geometry = Geometry(**key.pop("geometry"))
        return LatencyTable.load(path, geometry, **key)
    table = measure_latency_table(model, batch_size, seq_len, **measure_kwargs)
    table.save(path)
    return table


def latency_table_for(
    model: nn.Module, path: str | os.PathLike | None = None, batch_size: int | None = None, seq_len: int | None = None
) -> LatencyTable:
    """The table a ``latency_budget`` on ``model`` is planned with: the one saved at ``path`` (refused unless it
    was measured for this model's original geometry on this kind of device and dtype, with as many CPU threads,
    and at ``batch_size`` x ``seq_len`` when given), else measured now on the model, where it is, through the
    cache (``cached_latency_table``; needs ``batch_size`` and ``seq_len``). ``GradPruneTrainer`` and
    ``hf-gradprune prune`` both call this."""
    from ..state import pruning_state

    if path is None:
        if batch_size is None or seq_len is None:
            raise LatencyTableError(
                "a latency budget needs a latency table: give its path, or the batch size and sequence length to "
                "measure one at"
            )
        return cached_latency_table(model, batch_size, seq_len)
    key = table_key(model, 1, 1)
    expected = {"device_name": key["device_name"], "dtype": key["dtype"]}
    if next(model.parameters()).device.type == "cpu":  # threads set a CPU's speed, not a GPU's
        expected["torch_threads"] = key["torch_threads"]
    return LatencyTable.load(path, pruning_state(model).geometry, batch_size=batch_size, seq_len=seq_len, **expected)
