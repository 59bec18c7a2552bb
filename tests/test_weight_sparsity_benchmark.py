"""benchmarks/quality/weight_sparsity.py --quick on a tiny BERT: every row x method once, each row's numbers agree
with each other and with what the config recorded (no accuracy asserted: a few steps on a tiny model)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from quality import weight_sparsity

    out = tmp_path_factory.mktemp("weight-sparsity-quick")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        result = weight_sparsity.main(["--quick", "--out", str(out)])
    return weight_sparsity, result, json.loads((out / "weight_sparsity.json").read_text())


def test_every_row_and_method_ran_once_and_the_file_is_the_result(quick):
    module, result, data = quick
    assert data["complete"] is True and data["rows"] == result["rows"]
    pairs = [(r["row"], r["method"]) for r in data["rows"]]
    assert pairs == [(row[0], m) for row in module.ROWS for m in module.METHODS]
    assert data["methods"] == ["taylor", "magnitude"] and data["scope"] == "layer"
    assert data["recovery_steps"] == 6 and data["quickstart_recovery_steps"] == 8  # 256 sentences / 32
    assert data["schedule"]["sparsity_start_step"] == 0 and data["schedule"]["sparsity_end_step"] == 2
    assert {"platform", "torch", "cpu_count"} <= set(data["machine"]) and "load_average" in data
    assert set(data["gradient_beats_magnitude"]) == {row[0] for row in module.ROWS}


def test_rows_agree_with_their_goals_weights_and_records(quick):
    module, _, data = quick
    goals = {row[0]: row for row in module.ROWS}
    for r in data["rows"]:
        name, sparsity, pattern, units, goal = goals[r["row"]]
        assert r["drop_points"] == pytest.approx(round(100 * (data["dense_accuracy"] - r["accuracy"]), 2))
        assert r["goal_points"] == goal and r["goal_met"] == (r["drop_points"] <= goal)
        target = 0.5 if sparsity is None else sparsity
        assert r["weight_sparsity"] == target and abs(r["measured_sparsity"] - target) < 0.01, r
        assert r["pattern"] == pattern
        assert r.get("all_2_4") is (True if pattern == "2:4" else None)
        rec = r["recorded"]
        assert rec["pattern"] == pattern and rec["method"] == r["method"] and rec["sparsity"] == target
        assert abs(rec["measured"] - r["measured_sparsity"]) < 1e-3
        heads, total_heads = map(int, r["heads_kept"].split("/"))
        neurons, total_neurons = map(int, r["neurons_kept"].split("/"))
        assert heads == round(total_heads * (1 - units)) and neurons == round(total_neurons * (1 - units)), r
        assert r["seconds"] > 0
