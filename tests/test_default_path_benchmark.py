"""benchmarks/oneshot/default_path.py in quick mode (tiny BERT, tiny random Llama): every part runs, its rows are
complete (the default path, its candidates' held-out losses and dev accuracies, the floor, the goals), the sweep
covers every plan and setting, the markdown renders every row, and benchmarks/README.md shows the committed CPU
results.

No timing is asserted."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from oneshot import default_path

    out = tmp_path_factory.mktemp("default_path")
    result = default_path.run(True, out, "all")
    return result, out


def test_json_is_written_and_has_every_part(quick):
    result, out = quick
    assert json.loads((out / "default_path.json").read_text()) == json.loads(json.dumps(result))
    assert {"minilm", "smollm2", "sweep", "timing", "machine", "commit", "load_average"} <= set(result)


def test_minilm_rows_have_the_default_its_candidates_and_the_floor(quick):
    from oneshot import default_path

    result, _ = quick
    part = result["minilm"]
    assert 0 <= part["standard_error"] < 0.5
    assert [(r["method"], r["target"]) for r in part["rows"]] == [(m, 0.5) for m in default_path.METHODS]
    for row in part["rows"]:
        assert row["flops_removed"] >= row["target"] - 1e-4
        assert 0.0 <= row["default"] <= 1.0
        sel = row["selection"]
        assert sel["held_out_batches"] == default_path.HELD_OUT and sel["forwards"] > 0
        assert row["chosen"] == sel["chosen"] in {c["name"] for c in sel["candidates"]}
        assert len(row["candidates"]) == 4  # gradient methods: one-shot, + reconstruction, + rearrangement, + both
        assert {(c["rearrange"], c["reconstruct"]) for c in row["candidates"]} == {
            (a, b) for a in (False, True) for b in (False, True)
        }
        for c in row["candidates"]:
            assert 0.0 <= c["accuracy"] <= 1.0
            assert c["held_out_loss"] is not None and c["held_out_loss"] > 0, c
        assert isinstance(row["same_plan_as_rebuilt"], bool)
        assert row["best_candidate_accuracy"] == max(c["accuracy"] for c in row["candidates"])
        assert 0.0 <= row["floor"]["accuracy"] <= 1.0 and row["floor"]["min_ffn_per_layer"] == 0.1
        assert row["floor"]["flops_removed"] >= row["target"] - 1e-4
        assert set(row["goals"]) == {"within_1se_of_best_candidate", "within_1.0_points_of_dense"}
        assert all(isinstance(v, bool) for v in row["goals"].values())


def test_smollm2_rows_and_goals(quick):
    result, _ = quick
    part = result["smollm2"]
    shapes = [(r["method"], r["shape"]) for r in part["rows"]]
    assert shapes == [
        ("fisher", "uniform"),
        ("fisher", "non-uniform"),
        ("taylor", "uniform"),
        ("taylor", "non-uniform"),
        ("fisher", "non-uniform"),
    ]
    for row in part["rows"]:
        assert row["params_removed"] >= 0.2 - 1e-3
        assert row["perplexity"] > 1 and row["ratio"] == pytest.approx(row["perplexity"] / part["dense_perplexity"])
        assert row["chosen"] and row["forwards"] > 0
        assert row["reconstruct_skipped"] == len(row["reconstruct_skips"])
    assert len(part["goals"]) == 6 and all(isinstance(v, bool) for v in part["goals"].values())


def test_sweep_covers_every_plan_and_setting(quick):
    from oneshot import default_path

    result, _ = quick
    sweep = result["sweep"]
    assert len(sweep["minilm"]) == len(result["minilm"]["rows"])
    assert len(sweep["smollm2"]) == len(result["smollm2"]["rows"])
    for rows, classifier in ((sweep["minilm"], True), (sweep["smollm2"], False)):
        for row in rows:
            got = [(s["max_scale"], s["ridge"], s["classifier_tokens"]) for s in row["settings"]]
            assert got == default_path.sweep_settings(True, classifier)
    assert len(sweep["summary"]) == len(default_path.sweep_settings(True, True))
    assert all("minilm_mean_accuracy_gap" in s for s in sweep["summary"])
    assert sum("smollm2_mean_perplexity_ratio" in s for s in sweep["summary"]) == len(default_path.QUICK_SWEEP)


def test_timing_and_markdown(quick):
    from oneshot import default_path

    result, _ = quick
    timing = result["timing"]
    assert timing["forwards"] > 0 and timing["flops_removed"] >= 0.5 - 1e-4
    text = default_path.markdown(result)
    for row in result["minilm"]["rows"]:
        assert f"| {row['method']} | {row['flops_removed']:.1%} | {row['default']:.4f} ({row['chosen']})" in text
    for row in result["smollm2"]["rows"]:
        assert f"| {row['method']} | {row['shape']} | {row['calibration_blocks']} × " in text


def test_readme_tables_are_the_committed_result():
    from oneshot import default_path

    path = ROOT / "benchmarks" / "results" / "cpu" / "default_path.json"
    if not path.exists():
        pytest.skip("no committed CPU result yet")
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    result = json.loads(path.read_text())
    result.pop("timing", None)  # the whole-path time is the lead's run, quoted in prose
    rendered = default_path.markdown(result)
    missing = [line for line in rendered.splitlines() if line.strip() and line not in readme]
    assert not missing, f"README lines out of date, e.g. {missing[:2]}"
