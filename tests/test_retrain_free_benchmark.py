"""benchmarks/oneshot/retrain_free.py in quick mode (tiny BERT, synthetic sentences): it runs, its rows are complete and
meet their budgets, the table renders every row, and benchmarks/README.md shows the committed CPU results.

No timing is asserted."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from oneshot import retrain_free

    out = tmp_path_factory.mktemp("retrain_free")
    result = retrain_free.run(True, out, recovery_steps=2, n_score=64, n_calib=64, time_bert_base=False)
    return result, out


def test_rows_are_complete_and_meet_their_budgets(quick):
    result, out = quick
    assert json.loads((out / "retrain_free.json").read_text()) == json.loads(json.dumps(result))
    assert {r["method"] for r in result["rows"]} == {"fisher", "taylor"}
    for row in result["rows"]:
        assert row["flops_removed"] >= row["target"] - 1e-4
        assert row["heads_kept"] == sum(row["heads_per_layer"])
        for key in (
            "one_shot",
            "rearranged",
            "one_shot_reconstructed",
            "rearranged_reconstructed",
            "one_shot_recovered",
            "reconstructed_recovered",
        ):
            assert 0.0 <= row[key] <= 1.0, key
    whole = result["whole_path"]["minilm"]
    assert whole["flops_removed"] >= 0.5 - 1e-4
    assert set(whole["steps"]) >= {"score", "split", "prune", "reconstruct", "total"}  # rearrange: off by default


def test_table_renders_every_row(quick):
    import tables

    result, _ = quick
    text = tables.retrain_free_tables(result)
    for row in result["rows"]:
        assert f"| {row['method']} | {row['flops_removed']:.1%} | {row['heads_kept']} | {row['one_shot']:.4f}" in text


def test_readme_table_is_the_committed_result():
    import tables

    path = ROOT / "benchmarks" / "results" / "cpu" / "retrain_free.json"
    if not path.exists():
        pytest.skip("no committed CPU result yet")
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    rendered = tables.retrain_free_tables(json.loads(path.read_text()))
    missing = [line for line in rendered.splitlines() if line.strip() and line not in readme]
    assert not missing, f"README lines out of date, e.g. {missing[:2]}"


def test_llm_reconstruct_and_variants_run_in_quick_mode(tmp_path):
    from oneshot import llm_reconstruct, reconstruct_variants

    llm = llm_reconstruct.run(True, tmp_path)
    assert [r["plan"] for r in llm["rows"]] == ["non-uniform", "uniform"]
    for r in llm["rows"]:
        assert r["params_removed"] >= 0.2 - 1e-3 and r["one_shot"] > 1 and r["reconstructed"] > 1
    variants = reconstruct_variants.run(True, tmp_path)
    (row,) = variants["rows"]
    assert all(0.0 <= row[name] <= 1.0 for name in reconstruct_variants.VARIANTS)
    assert json.loads((tmp_path / "reconstruct_variants.json").read_text())["rows"] == variants["rows"]
