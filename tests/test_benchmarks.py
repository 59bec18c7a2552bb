"""`make bench-quick` on tiny models: every benchmark runs, and its results are complete and self-consistent.

No timing is asserted: only that every (method x target), (model x batch x target x plan) and configuration is
there exactly once, that every derived number agrees with what it is derived from (the plan recorded in the row,
the times in the row), and that ``tables.py`` renders every row.
"""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from hf_gradprune import Geometry, PruningPlan  # noqa: E402
from hf_gradprune.scoring.scores import GRADIENT_METHODS, METHODS  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    import run_all

    out = tmp_path_factory.mktemp("bench-quick")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        results = run_all.main(["--quick", "--out", str(out)])
    files = {name: json.loads((out / f"{name}.json").read_text()) for name in ("quality", "speed", "overhead")}
    return results, files, out


def _plan(geometry: dict, row: dict) -> PruningPlan:
    """A plan with the row's per-layer widths (FLOPs and parameters depend on the widths only)."""
    heads = [list(range(h)) for h in row["heads_per_layer"]]
    neurons = [list(range(n)) for n in row["ffn_per_layer"]]
    return PruningPlan(Geometry(**geometry), heads, neurons)


def _table(markdown: str, title_start: str) -> list[list[str]]:
    """The body rows (lists of cells) of the markdown table after the line starting with ``title_start``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_start))
    body = []
    for line in lines[start + 1 :]:
        if not line.strip() and body:
            break
        if line.startswith("|") and not line.startswith("|---"):
            body.append([c.strip() for c in line.strip("|").split("|")])
    return body[1:]  # without the header


def test_all_three_ran_and_wrote_their_files(quick):
    results, files, out = quick
    assert set(results) == {"quality", "speed", "overhead"}
    for name, data in files.items():
        assert data == json.loads(json.dumps(results[name])), name  # the file is what run() returned
        assert data["machine"]["torch"] and data["machine"]["cpu_count"] >= 1
        assert set(data["load_average"]) == {"start", "end"}  # issue 20: the machine's load around the run
    drift = files["speed"]["dense_drift"]  # one re-timing of the dense model per model and batch
    assert len(drift["runs"]) == len(files["speed"]["geometries"]) * 2 and drift["limit"] == 0.1
    assert drift["flagged"] == any(abs(r["last_ms"] / r["first_ms"] - 1) > 0.1 for r in drift["runs"])
    assert (out / "quality.png").read_bytes()[:4] == b"\x89PNG"


def test_quality_rows_are_complete_and_match_their_plans(quick):
    from quality import quality

    q = quick[1]["quality"]
    seq = q["flops_seq_len"]
    keys = [(r["method"], r["target"]) for r in q["rows"]]
    assert sorted(keys) == sorted((m, t) for m in METHODS for t in quality.QUICK_TARGETS)  # each exactly once
    for r in q["rows"]:
        plan = _plan(q["geometry"], r)
        assert r["flops_removed"] == round(plan.flops_removed(seq), 4)
        assert abs(r["flops_removed"] - r["target"]) < 0.1
        assert (r["heads_kept"], r["neurons_kept"]) == (plan.num_heads, plan.num_neurons)
        assert 0 <= r["one_shot"] <= 1 and 0 <= r["recovered"] <= 1
    assert 0 <= q["dense_accuracy"] <= 1 and q["recovery_steps"] == 6
    extra = q["ranking_and_schedule"]
    assert set(extra) == {"taylor_per_layer_50", "taylor_iterative3_50", "type_balanced_50"}
    assert set(extra["type_balanced_50"]) == set(GRADIENT_METHODS)
    g = Geometry(**q["geometry"])
    for r in extra["type_balanced_50"].values():  # half of the heads and half of the neurons: half the FLOPs
        assert r["heads_kept"] == g.num_layers * g.num_heads // 2 and r["flops_removed"] == 0.5
    for r in (extra["taylor_per_layer_50"], extra["taylor_iterative3_50"]):
        assert abs(r["flops_removed"] - 0.5) < 0.1 and 0 <= r["recovered"] <= 1
    peer = q["torch_pruning"]
    if "skipped" not in peer:
        assert set(peer) == {str(t) for t in quality.QUICK_PEER_TARGETS}
        for v in peer.values():
            assert v["block_flops_removed"] == pytest.approx(PruningPlan.from_dict(v["plan"]).flops_removed(seq))


def test_speed_rows_are_complete_and_self_consistent(quick):
    from speed import speed

    s = quick[1]["speed"]
    names = [name for name, _ in speed.models(quick=True)]
    assert set(s["geometries"]) == set(names)
    keys = sorted((r["model"], r["batch"], r["target"], r["plan"]) for r in s["rows"])
    expected = [(m, b, t, p) for m in names for b in (1, 4) for t in speed.FRACTIONS for p in speed.PLAN_KINDS]
    assert keys == sorted(expected)  # every model x batch x target x plan, once
    for r in s["rows"]:
        plan = _plan(s["geometries"][r["model"]], r)
        removed = plan.flops_removed(r["seq"])
        assert r["flops_removed"] == round(removed, 4)
        assert r["ideal_speedup"] == round(1 / (1 - removed), 3) >= 1
        # speedup comes from the unrounded times (3 places); the times are rounded to 0.01 ms, which on tiny models
        # moves their ratio by up to 0.005 / time each
        slack = 0.005 / r["dense_ms"] + 0.005 / r["pruned_ms"] + 1e-3
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["pruned_ms"], rel=slack, abs=6e-4)
        assert r["throughput_pruned"] == pytest.approx(1000 * r["batch"] / r["pruned_ms"], rel=0.01)
        assert r["throughput_dense"] == pytest.approx(1000 * r["batch"] / r["dense_ms"], rel=0.01)
        if r["plan"] == "uniform":
            assert abs(removed - r["target"]) < 0.05
        if r["plan"] == "uneven+r64":
            assert all(n % 64 == 0 or n == plan.geometry.intermediate_size for n in r["ffn_per_layer"])
    for model, batch in {(r["model"], r["batch"]) for r in s["rows"]}:  # one dense time per (model, batch)
        assert len({r["dense_ms"] for r in s["rows"] if (r["model"], r["batch"]) == (model, batch)}) == 1


def test_overhead_rows_are_self_consistent(quick):
    o = quick[1]["overhead"]
    (row,) = o["training_step"]
    assert row["model"] == "tiny" and row["step_ms_with"] > 0 and row["step_ms_without"] > 0
    ratio = row["step_ms_with"] / row["step_ms_without"]
    rounding = 0.05 * (2 + ratio) / row["step_ms_without"] + 1e-4  # the times are rounded to 0.1 ms
    assert row["time_overhead"] == pytest.approx(ratio - 1, abs=rounding)
    assert row["memory_overhead"] == pytest.approx(row["peak_rss_mb_with"] / row["peak_rss_mb_without"] - 1, abs=2e-3)
    (wall,) = o["pruning_step"]
    assert wall["examples"] == 64
    parts = wall["score_s"] + wall["plan_s"] + wall["surgery_s"]
    assert wall["total_s"] == pytest.approx(parts, abs=0.02)


def test_tables_render_every_row(quick):
    import tables

    _, files, _ = quick
    q = files["quality"]
    for key, title in (("one_shot", "**One-shot"), ("recovered", "**After")):
        table = {cells[0]: cells[1:] for cells in _table(tables.quality_tables(q), title)}
        assert set(table) >= set(METHODS)
        for r in q["rows"]:
            column = sorted({x["target"] for x in q["rows"]}).index(r["target"])
            assert table[r["method"]][column] == f"{r[key]:.4f}"
    s = files["speed"]
    text = tables.speed_tables(s)
    for model in s["geometries"]:
        rows = [r for r in s["rows"] if r["model"] == model]
        cells = {(int(c[0]), c[1]): c[2:] for c in _table(text, f"**{model}**")}
        assert len(cells) == len({(r["batch"], r["plan"]) for r in rows})
        for r in rows:
            assert cells[(r["batch"], r["plan"])][(0.25, 0.5, 0.75).index(r["target"])] == (
                f"{r['speedup']:.2f}× ({r['ideal_speedup']:.2f}×)"
            )
        dense = re.search(rf"\*\*{re.escape(model)}\*\*.*?Dense latency: (.*?)\.\n", text, re.S).group(1)
        assert dense.count("batch ") == len({r["batch"] for r in rows})
    o = files["overhead"]
    text = tables.overhead_tables(o)
    for r in o["training_step"]:
        assert f"| {r['model']} | {r['batch']} × {r['seq']} | {r['step_ms_without']:.0f} ms" in text
    for w in o["pruning_step"]:
        assert f"| {w['model']} | {w['examples']} × {w['seq']} tokens |" in text


def test_readme_tables_are_the_committed_results():
    """benchmarks/README.md shows exactly what tables.py makes of the committed CPU results."""
    import tables

    readme = (ROOT / "benchmarks" / "README.md").read_text()
    folder = ROOT / "benchmarks" / "results" / "cpu"
    for name, render in (
        ("quality", tables.quality_tables),
        ("speed", tables.speed_tables),
        ("overhead", tables.overhead_tables),
    ):
        rendered = render(json.loads((folder / f"{name}.json").read_text()))
        missing = [line for line in rendered.splitlines() if line.strip() and line not in readme]
        assert not missing, f"{name}: README lines out of date, e.g. {missing[:2]}"


@pytest.fixture(scope="module")
def latency_quick(tmp_path_factory):
    from speed import latency_budget

    out = tmp_path_factory.mktemp("latency-quick")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        result = latency_budget.main(["--quick", "--out", str(out)])
    return result, json.loads((out / "latency_budget.json").read_text())


def test_latency_budget_rows_are_complete_and_match_their_tables(latency_quick):
    from speed import latency_budget, speed

    from hf_gradprune.deploy.latency import LatencyTable

    result, data = latency_quick
    assert data == json.loads(json.dumps(result))  # the file is what run() returned
    assert len(data["dense_drift"]["runs"]) == len(data["geometries"]) * 2 and "load_average" in data
    names = [name for name, _ in speed.models(quick=True)]
    kinds = [(k, f) for k in latency_budget.SHAPE_KINDS for f in latency_budget.FRACTIONS]
    kinds += [(k, b) for k in latency_budget.LATENCY_KINDS for b in latency_budget.LATENCY_BUDGETS]
    keys = sorted((r["model"], r["batch"], r["plan"], r["target"]) for r in data["rows"])
    skipped = sorted((u["model"], u["batch"], u["plan"], u["target"]) for u in data["unreachable"])
    for u in data["unreachable"]:  # only a latency budget can be out of reach, and the error says why
        assert u["plan"] in latency_budget.LATENCY_KINDS and "cannot be met" in u["error"]
    expected = sorted((m, b, k, t) for m in names for b in (1, 4) for k, t in kinds)
    assert sorted(keys + skipped) == expected  # each exactly once: timed, or unreachable by the table
    multiple = data["ffn_multiple_of"]
    for r in data["rows"]:
        plan = _plan(data["geometries"][r["model"]], r)
        table_data = {k: v for k, v in data["tables"][r["model"]][str(r["batch"])].items() if k != "measure_s"}
        table = LatencyTable.from_dict(table_data)
        assert (table.batch_size, table.seq_len) == (r["batch"], r["seq"]) and r["seq"] == data["seq"]
        assert r["predicted_ms"] == pytest.approx(table.predict(plan), abs=0.006)
        assert r["predicted_dense_ms"] == pytest.approx(table.dense_ms, abs=0.006)
        # Both times are rounded to 0.01 ms in the row: their ratio is known to 0.005 * (1 + ratio) / predicted
        # (a row timed on a loaded machine can be many times its prediction), plus the error's own rounding.
        ratio = r["pruned_ms"] / r["predicted_ms"]
        assert r["prediction_error"] == pytest.approx(ratio - 1, abs=1e-4 + 0.0051 * (1 + ratio) / r["predicted_ms"])
        assert r["predicted_removed"] == pytest.approx(1 - table.predict(plan) / table.dense_ms, abs=1e-4)
        removed = plan.flops_removed(r["seq"])
        assert r["flops_removed"] == round(removed, 4)
        if r["plan"] in ("uneven", "balanced"):  # the FLOPs budget holds
            assert removed >= r["target"] - 1e-6
        if r["plan"] in ("balanced", "latency+balanced"):
            assert len(set(r["heads_per_layer"])) == 1
            assert all(n % multiple == 0 or n == plan.geometry.intermediate_size for n in r["ffn_per_layer"])
        if r["plan"] in latency_budget.LATENCY_KINDS:  # the flag says what the table predicts
            assert r["budget_met"] is (r["predicted_removed"] >= r["target"] - 1e-4)
        if r["plan"] == "latency":  # unconstrained: met whenever reachable (else the row is in "unreachable")
            assert r["budget_met"] is True, r
        # balanced shapes keep attention in every layer: a noisy table can put the budget out of their reach
    for entry in data["summary"]:
        cell = {
            (r["plan"], r["target"]): r
            for r in data["rows"]
            if (r["model"], r["batch"]) == (entry["model"], entry["batch"])
        }
        for kind in ("uneven", "balanced"):
            for f, ratio in entry[f"{kind}_vs_uniform"].items():
                assert ratio == pytest.approx(
                    cell[(kind, float(f))]["speedup"] / cell[("uniform", float(f))]["speedup"], abs=1e-3
                )
        latency_rows = [r for r in cell.values() if r["plan"] in latency_budget.LATENCY_KINDS]
        assert [(e["plan"], e["target"], e["measured_removed"]) for e in entry["latency_budgets"]] == [
            (r["plan"], r["target"], r["measured_removed"]) for r in latency_rows
        ]
        errors = [abs(r["prediction_error"]) for r in cell.values()]
        assert entry["rows"] == len(errors) and entry["within_10pct"] == sum(e <= 0.1 for e in errors)
        assert entry["prediction_error_max"] == pytest.approx(max(errors), abs=1e-4)


def test_uneven_r64_is_the_packages_rounding_of_the_uneven_plan():
    """speed.py rounds no width itself: ``rounded_plan`` asks ``PruningPlan.from_scores(ffn_multiple_of=...)``, on
    scores that stand for the uneven plan exactly (with a multiple of 1 they give its widths back)."""
    from speed import speed

    g = Geometry("bert", num_layers=12, num_heads=12, head_dim=64, hidden_size=768, intermediate_size=3072)
    recorded = speed.recorded_plans(g, ROOT / "benchmarks" / "results" / "cpu" / "speed.json", "bert-base (random)")
    uneven = {t: p for (kind, t), p in recorded.items() if kind == "uneven"}
    assert sorted(uneven) == list(speed.FRACTIONS)
    for plan in uneven.values():
        widths = [len(n) for n in plan.neurons]
        assert [len(n) for n in speed.rounded_plan(plan, 1).neurons] == widths
        rounded = speed.rounded_plan(plan)
        assert rounded.heads == plan.heads and rounded.meta["ffn_multiple_of"] == 64
        assert all(len(n) % 64 == 0 or len(n) == g.intermediate_size for n in rounded.neurons)
        assert all(abs(len(r) - w) < 64 for r, w in zip(rounded.neurons, widths))  # each width moves to a neighbour
    variants = speed.plan_variants(g, uneven[0.5], 0.5)
    assert variants["uneven"].heads == uneven[0.5].heads  # a 12-layer template maps onto itself
    assert [len(n) for n in variants["uneven+r64"].neurons] == [len(n) for n in speed.rounded_plan(uneven[0.5]).neurons]


# ---------------------------------------------------------------------- issue 20: benchmark hygiene
def test_write_json_is_atomic_and_records_the_load_average(tmp_path):
    """A failed write leaves the previous results whole (it used to truncate them) and no temporary file; a
    written file has the load average at the benchmark's start and end."""
    import common

    path = tmp_path / "results" / "speed.json"
    common.write_json(path, {"rows": [1]})
    data = json.loads(path.read_text())
    assert data["rows"] == [1] and set(data["load_average"]) == {"start", "end"}
    for when in ("start", "end"):
        load = data["load_average"][when]
        assert load is None or (len(load) == 3 and all(x >= 0 for x in load))
    before = path.read_bytes()
    with pytest.raises(TypeError):
        common.write_json(path, {"rows": [object()]})  # not JSON: fails half way through the dump
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["speed.json"]


def test_a_dense_time_that_drifts_over_ten_percent_is_flagged(capsys):
    import common

    calm, drifted = common.dense_drift("a", 10.0, 10.9), common.dense_drift("b", 10.0, 11.2)
    assert not calm["flagged"] and calm["drift"] == pytest.approx(0.09)
    assert drifted["flagged"] and drifted["drift"] == pytest.approx(0.12)
    assert common.dense_drift("c", 10.0, 8.5)["flagged"]  # faster counts too
    printed = capsys.readouterr().out
    assert "[drift] b:" in printed and "[drift] c:" in printed and "[drift] a:" not in printed
    assert common.drift_record([calm])["flagged"] is False
    assert common.drift_record([calm, drifted]) == {"limit": 0.1, "flagged": True, "runs": [calm, drifted]}


def test_time_rows_times_the_dense_model_again_at_the_end(monkeypatch):
    """speed.time_rows (speed and latency_budget) times the dense model after its last row and records the drift."""
    from conftest import tiny_bert_config
    from speed import speed
    from transformers import BertModel

    base = BertModel(tiny_bert_config()).eval()
    g = Geometry(**speed.current_plan(base).geometry.to_dict())
    plans = {("uniform", 0.5): PruningPlan(g, [[0, 1]] * g.num_layers, [list(range(48))] * g.num_layers)}
    times = iter([10.0, 6.0, 12.0])  # dense, the pruned row, dense again: 20% slower
    monkeypatch.setattr(speed, "measure_latency", lambda *args, **kwargs: next(times))
    drifts = []
    rows = speed.time_rows("tiny", base, plans, precision="fp32", batch=1, seq=8, repeats=1, drifts=drifts)
    assert [r["dense_ms"] for r in rows] == [10.0]
    assert drifts == [{"where": "tiny fp32 1x8", "first_ms": 10.0, "last_ms": 12.0, "drift": 0.2, "flagged": True}]


# ---------------------------------------------------------------------- issue 22: one-shot at LLM scale
@pytest.fixture(scope="module")
def scale_quick(tmp_path_factory):
    from oneshot import llm_scale

    out = tmp_path_factory.mktemp("llm-scale-quick")
    result = llm_scale.main(["--quick", "--out", str(out)])
    return result, json.loads((out / "llm_scale.json").read_text())


def test_llm_scale_quick_row_is_complete_and_self_consistent(scale_quick):
    from oneshot import llm_scale

    result, data = scale_quick
    assert data == json.loads(json.dumps(result)) and "load_average" in data and data["machine"]["torch"]
    assert data["today"]["cpu"]["SmolLM2-135M"]["split/score"] == 2.71  # the issue's numbers, kept beside
    (row,) = data["rows"]
    assert (row["shape"], row["status"], row["device"], row["dtype"]) == ("tiny", "done", "cpu", "float32")
    assert row["calibration"] == {"batches": 4, "batch_size": 2, "seq": 32, "tokens": 256}
    steps = row["steps"]
    assert list(steps) == list(llm_scale.STEPS)
    assert sum(s["seconds"] for k, s in steps.items() if k != "total") <= steps["total"]["seconds"] + 0.01
    assert steps["total"]["seconds"] <= row["measured"]["wall_s"] + 0.01 and steps["total"]["tokens"] == 256
    for s in steps.values():
        if s["tokens_per_s"] is not None:  # from the unrounded seconds: within the rounding of the stored ones
            fastest, slowest = s["tokens"] / max(s["seconds"] - 0.0005, 1e-9), s["tokens"] / (s["seconds"] + 0.0005)
            assert slowest - 0.1 <= s["tokens_per_s"] <= fastest + 0.1
    assert steps["score"]["tokens"] == 256 and steps["reconstruct"]["tokens"] == 256  # 4 batches of 2 x 32
    score = steps["score"]["seconds"]
    for step in ("reconstruct", "split"):  # from the unrounded seconds: within the rounding of the stored ones
        top, bottom = steps[step]["seconds"], score
        low, high = (top - 0.0005) / (bottom + 0.0005), (top + 0.0005) / max(bottom - 0.0005, 1e-9)
        assert low - 0.01 <= row["ratios"][f"{step}/score"] <= high + 0.01
    assert row["params_after"] < row["params"] and abs(row["params_removed"] - 0.2) < 0.05 and row["finite_after"]
    assert row["weight_bytes"] == 4 * row["params"] and row["measured"]["peak_bytes"] > 0
    assert row["reference"]["where"] and row["goals"] == []  # a tiny shape: no goal applies
    assert row["reconstruction"]["sublayers"] == 2 * row["config"]["num_hidden_layers"]
    assert "| tiny | 0.2M | cpu, float32 | 4 x 2 x 32 |" in llm_scale.markdown(data["rows"])


def test_llm_scale_reads_the_reports_new_fields_and_does_without_them():
    """Issue 22 adds ``peak_memory``, ``tokens``, ``memory_kind`` and ``reference`` to ``OneShotReport``: the rows
    use them when the report has them, and derive tokens from ``report.batches`` when it does not."""
    from types import SimpleNamespace

    from oneshot import llm_scale

    seconds = {"score": 2.0, "split": 1.0, "prune": 0.1, "reconstruct": 4.0, "total": 7.5}
    old = SimpleNamespace(seconds=seconds, batches={"score": 8, "search": 4, "reconstruct": 8})
    steps = llm_scale.step_table(old, 256, 2048)
    assert {k: s["tokens"] for k, s in steps.items()} == {
        "score": 2048, "split": 1024, "prune": None, "reconstruct": 2048, "total": 2048,
    }  # fmt: skip
    assert steps["score"]["tokens_per_s"] == 1024.0 and steps["score"]["peak_memory_bytes"] is None
    new = SimpleNamespace(seconds=seconds, batches={}, peak_memory={"score": 2**30}, tokens={"score": 100})
    steps = llm_scale.step_table(new, 256, 2048)
    assert steps["score"]["peak_memory_gib"] == 1.0 and steps["score"]["tokens_per_s"] == 50.0
    passed, lacking = llm_scale.api_options({"seq_len": 64, "no_such_option": 1})
    assert passed == {"seq_len": 64} and lacking == ["no_such_option"]


def test_llm_scale_goals_are_judged_where_the_issue_sets_them():
    from oneshot import llm_scale

    cpu = {"device": "cpu", "shape": "SmolLM2-135M", "ratios": {"reconstruct/score": 0.9, "split/score": 1.2}}
    assert [g["status"] for g in llm_scale.goals(cpu)] == ["met", "missed"]
    assert llm_scale.goals(dict(cpu, shape="SmolLM2-360M")) == []  # the goals name the 135M and 1B shapes
    params = 8_030_261_248
    gpu = {
        "device": "cuda (NVIDIA H200)",
        "shape": "Llama-3-8B",
        "params": params,
        "steps": {"total": {"seconds": 280.0}},
        "measured": {"peak_bytes": int(1.7 * 2 * params)},
    }
    time_goal, peak_goal = llm_scale.goals(gpu)
    assert (time_goal["status"], peak_goal["status"]) == ("met", "missed")
    assert peak_goal["limit"] == round(1.6 * 2 * params)
    stopped = {"device": "cuda", "shape": "Llama-3-8B", "params": params, "stopped_after_s": 320.0}
    assert [g["status"] for g in llm_scale.goals(stopped)] == ["missed", "unknown"]  # killed past 300 s
    short = dict(stopped, stopped_after_s=200.0)
    assert [g["status"] for g in llm_scale.goals(short)] == ["unknown", "unknown"]
