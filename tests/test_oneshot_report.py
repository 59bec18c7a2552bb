"""Issue 22: every one-shot step reports its seconds, peak memory and tokens (``oneshot.report``)."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_gradprune.architectures.base import Geometry
from hf_gradprune.oneshot import report as report_module
from hf_gradprune.oneshot.report import (
    CPU_MEMORY,
    CUDA_MEMORY,
    OneShotReport,
    StepMeter,
    batch_tokens,
    cuda_devices,
    steps_table,
)
from hf_gradprune.planning.plan import PruningPlan

MB200 = 50_000_000  # float32 elements: 200 MB


def test_a_large_touched_cpu_tensor_is_the_steps_peak_and_a_freed_one_is_sampled():
    meter = StepMeter("cpu")
    assert meter.memory_kind == CPU_MEMORY == "cpu: peak process RSS (sampled)"
    with meter.step("idle"):
        pass
    with meter.step("held"):
        x = torch.ones(MB200)  # ones: every page touched, so resident
    del x
    with meter.step("freed"):  # gone before the step ends: only the sampler thread can see it
        x = torch.ones(MB200)
        time.sleep(0.05)
        del x
    assert list(meter.seconds) == ["idle", "held", "freed"]
    for step in ("held", "freed"):
        assert meter.peak_memory[step] - meter.peak_memory["idle"] >= 0.95 * MB200 * 4, meter.peak_memory
    assert meter.peak_memory["idle"] > 0  # absolute: the process's resident set, not the rise above the start


def test_seconds_tokens_and_the_total_row():
    meter = StepMeter(nn.Linear(2, 2))  # a module on the CPU: measured as the CPU
    with meter.step("score", tokens=1234):
        time.sleep(0.05)
    with meter.step("prune"):
        pass
    assert meter.seconds["score"] >= 0.05 and meter.tokens == {"score": 1234, "prune": 0}
    meter.finish()
    assert list(meter.seconds) == list(meter.peak_memory) == ["score", "prune", "total"]
    assert meter.seconds["total"] >= meter.seconds["score"] + meter.seconds["prune"]
    assert meter.peak_memory["total"] >= max(meter.peak_memory["score"], meter.peak_memory["prune"])
    assert "total" not in meter.tokens
    with pytest.raises(ValueError, match="finished"):
        with meter.step("late"):
            pass


def test_each_step_is_measured_once():
    meter = StepMeter()
    with meter.step("score"):
        pass
    for name in ("score", "total"):
        with pytest.raises(ValueError, match="once"):
            with meter.step(name):
                pass


def test_the_sampler_thread_stops_when_the_step_raises():
    before = threading.active_count()
    meter = StepMeter("cpu")
    with pytest.raises(RuntimeError, match="boom"):
        with meter.step("boom"):
            assert threading.active_count() == before + 1  # the sampler runs during the step
            raise RuntimeError("boom")
    assert threading.active_count() == before
    assert meter.peak_memory["boom"] > 0 and "boom" in meter.seconds


@pytest.fixture
def fake_cuda(monkeypatch):
    """``torch.cuda``'s peak-memory calls as a log, on a machine without a GPU: ``peaks`` holds each device's
    max_memory_allocated, which a reset sets to 0."""
    log, peaks = [], {}

    def reset(d):
        log.append(("reset", str(d)))
        peaks[str(d)] = 0

    def read(d):
        log.append(("read", str(d)))
        return peaks.get(str(d), 0)

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", read)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d: log.append(("sync", str(d))))
    monkeypatch.setattr(report_module, "_RssSampler", None)  # a CUDA meter never samples the CPU
    return SimpleNamespace(log=log, peaks=peaks)


def test_cuda_resets_the_peak_when_a_step_starts_and_reads_it_when_it_ends(fake_cuda):
    meter = StepMeter(torch.device("cuda:0"))
    assert meter.memory_kind == CUDA_MEMORY == "cuda: max_memory_allocated"
    fake_cuda.peaks["cuda:0"] = 7 * 2**30  # before the step: not the step's
    fake_cuda.log.clear()
    with meter.step("score", tokens=10):
        fake_cuda.log.append(("body", ""))
        fake_cuda.peaks["cuda:0"] = 3 * 2**30
    body = fake_cuda.log.index(("body", ""))
    assert ("reset", "cuda:0") in fake_cuda.log[:body] and ("reset", "cuda:0") not in fake_cuda.log[body:]
    assert fake_cuda.log[body + 1 :] == [("sync", "cuda:0"), ("read", "cuda:0")]  # synchronized, then read
    assert fake_cuda.log[:body].index(("sync", "cuda:0")) < fake_cuda.log[:body].index(("reset", "cuda:0"))
    assert meter.peak_memory["score"] == 3 * 2**30
    with meter.step("prune"):
        pass  # allocates nothing: reads 0 after the reset, not the step before's 3 GiB
    assert meter.peak_memory["prune"] == 0
    meter.finish()
    assert meter.peak_memory["total"] == 7 * 2**30  # the time before the first step counts for the call


def test_a_model_on_several_cuda_devices_records_the_max_over_them(fake_cuda):
    meter = StepMeter([torch.device("cuda:0"), "cuda:1", "cpu", "cuda:1"])
    assert meter.devices == [torch.device("cuda:0"), torch.device("cuda:1")]
    assert meter.memory_kind == "cuda: max_memory_allocated, max over cuda:0, cuda:1"
    with meter.step("reconstruct"):
        fake_cuda.peaks.update({"cuda:0": 2**30, "cuda:1": 5 * 2**30})
    assert meter.peak_memory["reconstruct"] == 5 * 2**30
    assert {e for e in fake_cuda.log if e[0] == "reset"} == {("reset", "cuda:0"), ("reset", "cuda:1")}


def test_the_devices_of_a_module_skip_the_cpu_and_offloaded_meta_weights():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2, device="meta"))
    assert cuda_devices(model) == [] and StepMeter(model).memory_kind == CPU_MEMORY
    assert cuda_devices("cuda") == [torch.device("cuda")] and cuda_devices(["cpu", "meta"]) == []


def test_batch_tokens_counts_the_attention_mask():
    padded = {
        "input_ids": torch.ones(2, 4, dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]),
    }
    assert batch_tokens([padded, {"input_ids": torch.ones(3, 5, dtype=torch.long)}]) == 4 + 15
    assert batch_tokens([]) == 0


def plan() -> PruningPlan:
    g = Geometry(model_type="bert", num_layers=1, num_heads=2, head_dim=4, hidden_size=8, intermediate_size=4)
    return PruningPlan(g, [[0]], [[1, 2]])


def test_the_report_records_the_meter_and_its_dict_is_json():
    meter = StepMeter()
    with meter.step("score", tokens=4096):
        time.sleep(0.01)
    with meter.step("prune"):
        pass
    report = OneShotReport(plan=plan(), batches={"score": 2})
    report.record(meter)
    report.reference = {"where": "cpu", "why": "a full copy would not fit on cuda:0"}
    assert list(report.seconds) == list(report.peak_memory) == ["score", "prune", "total"]
    assert report.tokens == {"score": 4096, "prune": 0} and report.memory_kind == CPU_MEMORY
    got = json.loads(json.dumps(report.to_dict()))
    expected = {"plan", "split", "batches", "rearrangement", "reconstruction", "seconds"}  # the keys before issue 22
    assert set(got) == expected | {"peak_memory", "memory_kind", "tokens", "reference", "selection"}
    assert got["peak_memory"] == report.peak_memory and got["reference"]["where"] == "cpu"
    table = report.steps_table()
    lines = table.splitlines()
    assert lines[0] == "| step | seconds | peak memory | tokens/s |"
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| score", "| prune", "| total"]
    # the process's RSS: MiB or GiB by how much the torch build loads (1.3 GiB with a CUDA build)
    assert (" MiB |" in lines[2] or " GiB |" in lines[2]) and lines[3].endswith("| - |")  # prune: no tokens, no rate
    rate = float(lines[2].split(" | ")[3].strip(" |").replace(",", ""))
    assert rate == pytest.approx(4096 / report.seconds["score"], rel=0.01, abs=1)
    assert lines[-2:] == [f"peak memory: {CPU_MEMORY}", "dense reference: cpu (a full copy would not fit on cuda:0)"]


def test_a_report_without_memory_still_prints_its_seconds():
    """The one-shot code path before the meter (and any report with seconds only)."""
    table = steps_table(SimpleNamespace(seconds={"score": 1.25, "total": 2.0}))
    assert "| score | 1.2 | - | - |" in table and "| total | 2.0 | - | - |" in table
    assert table.splitlines()[-1] == "peak memory: not measured"
    assert "| 1.10 GiB |" in steps_table(
        SimpleNamespace(seconds={"total": 1.0}, peak_memory={"total": int(1.1 * 2**30)}, tokens={}, reference=None)
    )
