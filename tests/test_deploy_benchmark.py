"""`benchmarks/deploy/deploy.py --quick`: the deployment benchmark's pipeline (export, int8, fused attention, accuracy,
timing in rounds) on a tiny BERT with uneven heads. No timing is asserted: only the structure of the results, that
every derived number agrees with what it is derived from, and that ONNX Runtime fp32 predicts what torch fp32 does."""

import json
import statistics
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("hf_gradprune.deploy.onnx_export")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

VARIANTS = ("torch-fp32", "ort-fp32", "ort-int8", "ort-int8-fused")
ROUNDS = 2


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from deploy import deploy

    out = tmp_path_factory.mktemp("deploy-quick")
    argv = ["--quick", "--out", str(out), "--work", str(out / "onnx"), "--variants", ",".join(reversed(VARIANTS))]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        result = deploy.main([*argv, "--rounds", str(ROUNDS), "--repeats", "2"])
    return deploy, result, json.loads((out / "deploy.json").read_text())


def _rows(result):
    return {(r["model"], r["variant"]): r for r in result["rows"]}


def test_file_is_the_result_and_every_row_is_there_once_in_order(quick):
    _, result, data = quick
    assert data == json.loads(json.dumps(result))
    keys = [(r["model"], r["variant"]) for r in data["rows"]]
    assert keys == [(m, v) for m in ("dense", "pruned") for v in VARIANTS]  # torch-fp32 first, whatever was asked
    assert not [r for r in data["rows"] if "error" in r]
    assert data["eval_examples"] == 64 and data["shapes"] == ["1x16", "4x16"]
    m = data["machine"]
    assert m["onnxruntime"] and m["torch"] and m["cpu"] and m["threads"] == m["torch_threads"] >= 1
    assert data["timing"]["ort_session"]["intra_op_num_threads"] == m["threads"]


def test_ort_fp32_predicts_what_torch_fp32_predicts(quick):
    _, _, data = quick
    rows = _rows(data)
    for model in ("dense", "pruned"):
        torch_row, ort_row = rows[(model, "torch-fp32")], rows[(model, "ort-fp32")]
        assert ort_row["accuracy"] == torch_row["accuracy"]
        assert ort_row["agree_with_torch"] == 1.0
        assert ort_row["max_abs_logit_diff_vs_torch"] < 1e-4
        assert torch_row["agree_with_torch"] == 1.0 and torch_row["max_abs_logit_diff_vs_torch"] == 0.0
        assert rows[(model, "ort-fp32")]["path"].endswith(".onnx") and torch_row["path"] is None
    assert rows[("dense", "torch-fp32")]["accuracy"] == data["dense_accuracy"]


def test_fused_attention_keeps_each_layers_head_count(quick):
    """The quick pruned model keeps 3 and 2 of 4 heads: the fused Attention nodes must say so, and still agree."""
    _, _, data = quick
    rows = _rows(data)
    assert rows[("dense", "ort-int8-fused")]["attention_heads"] == [4, 4]
    pruned = rows[("pruned", "ort-int8-fused")]
    assert pruned["attention_heads"] == [3, 2]
    assert pruned["fused_ops"]["Attention"] == 2
    assert pruned["agree_with_torch"] >= 0.95  # int8: a prediction or two may flip on 64 sentences


def test_latency_cells_are_derived_from_their_rounds(quick):
    _, _, data = quick
    rows = _rows(data)
    for shape in data["shapes"]:
        ref = rows[("dense", "torch-fp32")]["latency"][shape]
        for row in data["rows"]:
            cell = row["latency"][shape]
            medians = cell["round_medians"]
            assert len(medians) == ROUNDS and all(ms > 0 for ms in medians)
            assert cell["spread"] == [min(medians), max(medians)]
            assert cell["ms"] == pytest.approx(statistics.median(medians), abs=1e-3)
            # times and speedups are kept to 3 decimals and tiny models run in ~0.1 ms: tolerances from that rounding
            ref_ms, fast, ref_fast = statistics.median(ref["round_medians"]), min(medians), min(ref["round_medians"])
            rounding = 0.0006 * (1 / cell["ms"] + 1 / ref_ms) + 1e-3
            assert cell["speedup"] == pytest.approx(ref_ms / cell["ms"], rel=rounding, abs=6e-4)
            rounding = 0.0006 * (1 / fast + 1 / ref_fast) + 1e-3
            assert cell["speedup_fastest_rounds"] == pytest.approx(ref_fast / fast, rel=rounding, abs=6e-4)
        assert ref["speedup"] == 1.0
        # issue 20: the dense model's first and last rounds, flagged past 10%
        (drift,) = [d for d in data["dense_drift"]["runs"] if d["where"] == f"dense/torch-fp32 {shape}"]
        first, last = ref["round_medians"][0], ref["round_medians"][-1]
        assert (drift["first_ms"], drift["last_ms"]) == (first, last)
        assert drift["flagged"] == (abs(last / first - 1) > 0.1)
    assert set(data["load_average"]) == {"start", "end"}


def test_goals_are_judged_from_the_rows(quick):
    _, _, data = quick
    goals, rows = data["goals"], _rows(data)
    b1, b32 = data["shapes"]
    assert set(goals["rows"]) == {"pruned/ort-int8", "pruned/ort-int8-fused"}  # the pruned model's int8 rows only
    for key, checks in goals["rows"].items():
        row = rows[tuple(key.split("/"))]
        assert checks[f"speedup_{b1}"] == (row["latency"][b1]["speedup"] >= 5.0)
        assert checks[f"speedup_{b32}"] == (row["latency"][b32]["speedup"] >= 4.0)
        assert checks["accuracy"] == (data["dense_accuracy"] - row["accuracy"] <= 0.005 + 1e-12)
        assert checks["all"] == (checks[f"speedup_{b1}"] and checks[f"speedup_{b32}"] and checks["accuracy"])
    assert goals["met"] == bool(goals["met_by"]) == any(c["all"] for c in goals["rows"].values())


def test_markdown_table_has_a_line_per_row_and_the_verdict(quick, tmp_path, capsys):
    deploy, result, data = quick
    text = deploy.markdown(data)
    body = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert len(body) == len(data["rows"])
    for line, row in zip(body, data["rows"]):
        assert f"| {row['model']} | {row['variant']} | {row['accuracy']:.4f} |" in line
    assert ("**missed**" in text) != data["goals"]["met"]
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps(data))
    deploy.main(["--table", str(path)])
    assert capsys.readouterr().out.strip() == text


def test_unknown_variant_is_refused(quick):
    deploy, _, _ = quick
    with pytest.raises(SystemExit, match="unknown variants"):
        deploy.main(["--quick", "--variants", "torch-fp32,ort-int4"])
