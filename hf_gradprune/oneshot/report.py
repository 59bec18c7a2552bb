"""What ``prune_oneshot`` reports, and the meter that times its steps and measures their peak memory.

``StepMeter`` measures each named step of one call: wall seconds, peak memory and the calibration tokens it
processed. On CUDA the peak is ``torch.cuda.max_memory_allocated`` (reset when a step starts: the absolute peak
of allocated memory during it, the number a budget such as "at most 1.6x the bf16 weights" is judged on; the max
over devices when the model spans several). On the CPU it is the process's resident set size, sampled by a
thread every few milliseconds and at each step's start and end: a peak shorter than the interval can be missed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..planning.plan import PruningPlan
from ..scoring.scores import Scores
from .calibration import token_mask
from .reconstruct import ReconstructionReport

CUDA_MEMORY = "cuda: max_memory_allocated"
CPU_MEMORY = "cpu: peak process RSS (sampled)"
TOTAL = "total"  # the whole call's row: from the meter's start to finish()


def batch_tokens(batches: Iterable) -> int:
    """The real (non-padding) tokens in ``batches``, by their ``attention_mask`` (as reconstruction counts them)."""
    return int(sum(int(token_mask(b).sum()) for b in batches))


def cuda_devices(where) -> list[torch.device]:
    """The CUDA devices of ``where``: a module (its parameters' and buffers' devices; offloaded ``meta`` ones are
    not memory of any device), a device, a name such as ``"cuda:1"``, or an iterable of those."""
    if isinstance(where, nn.Module):
        items = [t.device for t in (*where.parameters(), *where.buffers())]
    elif isinstance(where, (str, int, torch.device)):
        items = [where]
    else:
        items = list(where)
    found = []
    for item in items:
        device = torch.device(item)
        if device.type == "cuda" and device not in found:
            found.append(device)
    return found


class _RssSampler:
    """The process's peak resident set size from its start to ``stop()``, sampled every ``interval`` seconds by a
    daemon thread (and at start and stop, so a step shorter than the interval is still measured)."""

    def __init__(self, interval: float):
        import psutil  # accelerate's dependency, so always installed with this package

        self._process = psutil.Process()
        self._interval = interval
        self.peak = self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="StepMeter-rss", daemon=True)
        self._thread.start()

    def sample(self) -> int:
        return self._process.memory_info().rss

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self.sample())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())
        return self.peak


class StepMeter:
    """Seconds, peak memory (bytes) and tokens of each named step of one call, in the order they ran.

    ``meter = StepMeter(model)`` (or a device, or devices); ``with meter.step("score", tokens=n): ...``;
    ``meter.finish()`` adds the ``"total"`` row: the wall time since the meter was made, and the peak over the
    steps and the time between them (exact on CUDA; on the CPU the time between steps is sampled only at each
    step's start and at ``finish()``). Making a meter for CUDA devices resets their peak-memory statistics.
    """

    def __init__(self, where="cpu", *, interval: float = 0.005):
        self.devices = cuda_devices(where)
        self.interval = interval
        if len(self.devices) > 1:
            names = ", ".join(map(str, self.devices))
            self.memory_kind = f"{CUDA_MEMORY}, max over {names}"
        else:
            self.memory_kind = CUDA_MEMORY if self.devices else CPU_MEMORY
        self.seconds: dict[str, float] = {}
        self.peak_memory: dict[str, int] = {}
        self.tokens: dict[str, int] = {}
        self._peak = 0  # over the whole call so far, gaps between steps included
        self._sync()
        if self.devices:
            for d in self.devices:
                torch.cuda.reset_peak_memory_stats(d)
        else:
            self._peak = self._rss()
        self._start = time.perf_counter()

    def _sync(self) -> None:
        for d in self.devices:
            torch.cuda.synchronize(d)  # queued kernels belong to the step that launched them

    def _cuda_peak(self) -> int:
        return max(int(torch.cuda.max_memory_allocated(d)) for d in self.devices)

    def _rss(self) -> int:
        import psutil

        return psutil.Process().memory_info().rss

    @contextmanager
    def step(self, name: str, *, tokens: int = 0) -> Iterator[None]:
        """Measure the block as step ``name`` (each name once; ``tokens``: the calibration tokens it processes)."""
        if name in self.seconds or name == TOTAL:
            raise ValueError(f"step {name!r} was already measured (or is the reserved {TOTAL!r}): name each step once")
        if TOTAL in self.seconds:
            raise ValueError("this meter is finished: make a new StepMeter for another call")
        self._sync()
        sampler = None
        if self.devices:
            self._peak = max(self._peak, self._cuda_peak())  # the time since the last reset: the gap before this step
            for d in self.devices:
                torch.cuda.reset_peak_memory_stats(d)
        else:
            sampler = _RssSampler(self.interval)
            self._peak = max(self._peak, sampler.peak)
        start = time.perf_counter()
        try:
            yield
        finally:
            # also when the step raises: the sampler thread must not outlive it
            self._sync()
            self.seconds[name] = time.perf_counter() - start
            self.peak_memory[name] = self._cuda_peak() if sampler is None else sampler.stop()
            self.tokens[name] = int(tokens)
            self._peak = max(self._peak, self.peak_memory[name])

    def finish(self) -> None:
        """Add the ``"total"`` row (once; later calls keep it)."""
        if TOTAL in self.seconds:
            return
        self._sync()
        now = self._cuda_peak() if self.devices else self._rss()
        self.seconds[TOTAL] = time.perf_counter() - self._start
        self.peak_memory[TOTAL] = max(self._peak, now)


@dataclass
class OneShotReport:
    """What ``prune_oneshot`` did: the plan, each step's own report, and each step's seconds, peak memory (bytes,
    of the kind ``memory_kind`` names) and calibration tokens; ``reference`` says where the dense reference for
    reconstruction lived (``{"where": "device" | "cpu" | "disk", "why": ...}``)."""

    plan: PruningPlan
    scores: Scores | None = None
    split: dict | None = None  # the budget search's candidate table (split="search")
    rearrangement: list | None = None  # per layer and kind: objective before / after
    reconstruction: ReconstructionReport | None = None
    seconds: dict = field(default_factory=dict)
    batches: dict = field(default_factory=dict)  # calibration batches each step used ("score", "search", ...)
    peak_memory: dict = field(default_factory=dict)  # bytes per step, the keys of ``seconds``
    memory_kind: str = ""
    tokens: dict = field(default_factory=dict)  # real calibration tokens each step processed
    reference: dict | None = None
    # the candidates measured on held-out batches and the one kept (``oneshot.candidates``); None when none was
    selection: dict | None = None

    def record(self, meter: StepMeter) -> None:
        """Copy a meter's steps into the report (finishing it: its ``"total"`` row is the call's)."""
        meter.finish()
        self.seconds = dict(meter.seconds)
        self.peak_memory = dict(meter.peak_memory)
        self.tokens = dict(meter.tokens)
        self.memory_kind = meter.memory_kind

    def to_dict(self) -> dict:
        return {
            "plan": self.plan.to_dict(),
            "split": self.split,
            "batches": self.batches,
            "rearrangement": self.rearrangement,
            "reconstruction": None if self.reconstruction is None else self.reconstruction.to_dict(),
            "seconds": self.seconds,
            "peak_memory": self.peak_memory,
            "memory_kind": self.memory_kind,
            "tokens": self.tokens,
            "reference": self.reference,
            "selection": self.selection,
        }

    def steps_table(self) -> str:
        return steps_table(self)


def readable_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def steps_table(report) -> str:
    """A Markdown table of the steps (seconds, peak memory, tokens per second), then the memory's kind and where
    the dense reference lived. Reads any report with ``seconds``: one without memory shows ``-`` there."""
    peaks = getattr(report, "peak_memory", None) or {}
    tokens = getattr(report, "tokens", None) or {}
    lines = ["| step | seconds | peak memory | tokens/s |", "|---|---|---|---|"]
    for name, seconds in report.seconds.items():
        n = tokens.get(name, 0)
        rate = f"{n / seconds:,.0f}" if n and seconds > 0 else "-"
        lines.append(f"| {name} | {seconds:.1f} | {readable_bytes(peaks.get(name))} | {rate} |")
    kind = getattr(report, "memory_kind", "") or "not measured"
    lines.append(f"peak memory: {kind}")
    reference = getattr(report, "reference", None)
    if reference:
        why = f" ({reference['why']})" if reference.get("why") else ""
        lines.append(f"dense reference: {reference.get('where', '?')}{why}")
    return "\n".join(lines)
