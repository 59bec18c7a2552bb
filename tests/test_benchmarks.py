"""`make bench --quick` on tiny models: every benchmark runs and writes its results (no timing asserted)."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_quick_benchmarks_run(tmp_path, monkeypatch):
    import run_all

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    results = run_all.main(["--quick", "--out", str(tmp_path)])
    quality = json.loads((tmp_path / "quality.json").read_text())
    assert {r["method"] for r in quality["rows"]} == {"taylor", "fisher", "magnitude", "random"}
    assert all(0 <= r["one_shot"] <= 1 and 0 <= r["recovered"] <= 1 for r in quality["rows"])
    assert all(abs(r["flops_removed"] - r["target"]) < 0.1 for r in quality["rows"])
    assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert {r["plan"] for r in speed["rows"]} == {"uniform", "uneven", "uneven+r64"}
    assert all(r["ideal_speedup"] >= 1 and r["pruned_ms"] > 0 for r in speed["rows"])
    overhead = json.loads((tmp_path / "overhead.json").read_text())
    assert overhead["training_step"][0]["step_ms_with"] > 0 and overhead["pruning_step"][0]["total_s"] > 0
    assert set(results) == {"quality", "speed", "overhead"}
