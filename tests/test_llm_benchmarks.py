"""The LLM benchmarks' quick mode (tiny random Llama with grouped-query attention, tiny text written here):
both scripts run, write their files, and their rows are complete and agree with the plans they record.

No timing is asserted.
"""

import json
import math
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from hf_gradprune import Geometry, PruningPlan  # noqa: E402
from hf_gradprune.scoring.scores import METHODS  # noqa: E402
from hf_gradprune.testing import WORDS  # noqa: E402


def _write_text(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))) for _ in range(n)]
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from oneshot import llm_quality
    from speed import llm_speed

    tmp = tmp_path_factory.mktemp("llm-bench")
    train, held_out = _write_text(tmp / "train.txt", 300, 0), _write_text(tmp / "eval.txt", 80, 1)
    out = tmp / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        q = llm_quality.main(
            ["--quick", "--out", str(out), "--work", str(tmp / "work"), "--train_file", str(train)]
            + ["--eval_file", str(held_out)]
        )
        s = llm_speed.main(["--quick", "--out", str(out)])
    return q, s, out


def _plan(geometry: dict, row: dict) -> PruningPlan:
    """A plan with the row's per-layer counts: each layer's query heads spread evenly over its KV groups."""
    g = Geometry(**geometry)
    heads = []
    for h, kv in zip(row["heads_per_layer"], row["kv_heads_per_layer"]):
        assert (h == 0) == (kv == 0) and (kv == 0 or h % kv == 0), row  # every kept group equally wide
        heads.append([k * g.group_size + j for k in range(kv) for j in range(h // max(kv, 1))])
    return PruningPlan(g, heads, [list(range(n)) for n in row["ffn_per_layer"]])


def test_files_are_what_the_runs_returned(quick):
    q, s, out = quick
    assert json.loads((out / "llm_quality.json").read_text()) == json.loads(json.dumps(q))
    assert json.loads((out / "llm_speed.json").read_text()) == json.loads(json.dumps(s))
    for data in (q, s):
        assert data["machine"]["torch"] and data["wall_seconds"] > 0


def test_quality_rows_are_complete_finite_and_match_their_plans(quick):
    from oneshot import llm_quality

    q = quick[0]
    g = Geometry(**q["geometry"])
    assert g.num_key_value_heads < g.num_heads  # the stand-in has grouped-query attention
    keys = sorted((r["method"], r["uniform"], r["target"]) for r in q["rows"])
    expected = [(m, u, t) for m in METHODS for u in llm_quality.UNIFORM for t in llm_quality.QUICK_TARGETS]
    assert keys == sorted(expected)  # each exactly once
    assert math.isfinite(q["dense_perplexity"]) and q["dense_perplexity"] > 1
    for r in q["rows"]:
        assert math.isfinite(r["perplexity"]) and r["perplexity"] > 1, r
        assert r["ratio_to_dense"] == pytest.approx(r["perplexity"] / q["dense_perplexity"])
        plan = _plan(q["geometry"], r)
        assert r["params_removed"] == round(plan.params_removed(), 4)
        assert abs(r["params_removed"] - r["target"]) < 0.05, r
        assert (r["heads_kept"], r["kv_heads_kept"], r["neurons_kept"]) == (
            plan.num_heads,
            plan.num_kv_heads,
            plan.num_neurons,
        )
        if r["uniform"]:
            assert plan.is_uniform(), r
    # the gradient methods' plans actually differ between uniform and non-uniform somewhere
    assert any(
        a["ffn_per_layer"] != b["ffn_per_layer"]
        for a in q["rows"]
        for b in q["rows"]
        if a["method"] == b["method"] == "taylor" and a["target"] == b["target"] and a["uniform"] != b["uniform"]
    )


def test_ffn_only_rows(quick):
    from oneshot import llm_quality

    q = quick[0]
    expected = sorted((m, t) for m, ts in llm_quality.QUICK_FFN_ONLY.items() for t in ts)
    assert sorted((r["method"], r["target"]) for r in q["ffn_only"]) == expected
    g = Geometry(**q["geometry"])
    for r in q["ffn_only"]:
        assert r["plan"] == "ffn-only" and math.isfinite(r["perplexity"])
        assert r["heads_per_layer"] == [g.num_heads] * g.num_layers  # every head kept
        assert len(set(r["ffn_per_layer"])) == 1 and abs(r["params_removed"] - r["target"]) < 0.02


def test_recovery_rows(quick):
    from oneshot import llm_quality

    q = quick[0]
    one_shot = {(r["method"], r["target"], r["plan"]): r["perplexity"] for r in q["rows"] + q["ffn_only"]}
    assert len(q["recovered"]) == len(llm_quality.QUICK_RECOVERY)
    for r, (method, target, kind) in zip(q["recovered"], llm_quality.QUICK_RECOVERY):
        assert (r["target"], r["plan"]) == (target, kind)
        if method == "best":  # the gradient method with the lowest one-shot perplexity in that kind of plan
            best = min(one_shot[(m, target, kind)] for m in ("taylor", "fisher"))
            assert one_shot[(r["method"], target, kind)] == best
        else:
            assert r["method"] == method
        assert r["one_shot"] == one_shot[(r["method"], target, kind)]
        assert math.isfinite(r["recovered"]) and r["recovered"] > 1
        assert r["params_removed"] == round(_plan(q["geometry"], r).params_removed(), 4)
    assert q["recovery"]["steps"] == 2


def test_one_pass_feeds_taylor_and_fisher(quick, tmp_path):
    """``common.score`` attaches the Taylor and Fisher scorers together; on the Llama adapter that gives the
    same scores as separate passes."""
    import torch
    from common import score, tiny_llama, token_blocks
    from oneshot import llm_quality
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_llama(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    blocks = token_blocks(tokenizer, _write_text(tmp_path / "t.txt", 40, 2), 8, 16)
    task = llm_quality.causal_task("tiny", tokenizer, blocks, folder)
    both = score(model, task, ["taylor", "fisher"], n_examples=8, batch_size=4)
    for method in ("taylor", "fisher"):
        alone = score(model, task, [method], n_examples=8, batch_size=4)[method]
        for a, b in zip(alone.heads + alone.neurons, both[method].heads + both[method].neurons):
            torch.testing.assert_close(a, b)
        assert both[method].num_examples == alone.num_examples == 8


def test_speed_rows_are_complete_and_self_consistent(quick):
    from speed import llm_speed

    s = quick[1]
    ((name, (_, prefill, _)),) = llm_speed.QUICK_MODELS.items()
    ((batch, seq), *_) = prefill  # issue 20: the dense model's first prefill shape timed again at the end
    (drift,) = s["dense_drift"]["runs"]
    dense_first = next(
        r for r in s["rows"] if (r["plan"], r["kind"], r["batch"], r["seq"]) == ("dense", "prefill", batch, seq)
    )
    assert drift["where"] == f"{name} prefill {batch}x{seq}" and drift["first_ms"] == pytest.approx(
        dense_first["ms"], abs=0.006
    )
    assert set(s["load_average"]) == {"start", "end"}
    plans = list(llm_speed.uniform_plans(llm_speed.build(llm_speed.TINY)))
    assert len(plans) == 2 + len(llm_speed.FRACTIONS)
    keys = sorted((r["plan"], r["kind"], r["batch"], r["seq"]) for r in s["rows"])
    expected = [(p, "prefill", b, q) for p in plans for b, q in prefill]
    expected += [(p, "decode", 1, llm_speed.QUICK_PROMPT_LEN) for p in plans]
    assert keys == sorted(expected) and {r["model"] for r in s["rows"]} == {name}
    g = Geometry(**s["geometries"][name])
    for r in s["rows"]:
        assert r["ms" if r["kind"] == "prefill" else "generate_ms"] > 0
        if r["plan"] == "dense":
            assert r["speedup"] == 1.0 and r["params_removed"] == 0
        else:
            assert abs(r["params_removed"] - r["target"]) < 0.05, r
        kv = r["kv_heads_per_layer"]
        row = {
            "heads_per_layer": [r["heads_per_layer"]] * g.num_layers,
            "kv_heads_per_layer": [kv] * g.num_layers,
            "ffn_per_layer": [r["ffn_per_layer"]] * g.num_layers,
        }
        assert r["params_removed"] == round(_plan(s["geometries"][name], row).params_removed(), 4)
        if r["kind"] == "decode":
            assert r["new_tokens"] == llm_speed.QUICK_NEW_TOKENS
            assert r["ms_per_token"] == pytest.approx(
                (r["generate_ms"] - r["first_token_ms"]) / (r["new_tokens"] - 1), abs=2e-3
            )


def test_tables_render_every_row(quick):
    import tables

    q, s, _ = quick
    text = tables.llm_quality_tables(q)
    for r in q["rows"]:
        assert f"{tables._ppl(r['perplexity'])} ({tables._times(r['perplexity'] / q['dense_perplexity'])})" in text
    for r in q["ffn_only"]:
        assert f"| {tables._ppl(r['perplexity'])} ({tables._times(r['perplexity'] / q['dense_perplexity'])}) |" in text
    for r in q["recovered"]:
        cells = f"| {r['params_removed']:.1%} | {tables._ppl(r['one_shot'])} | {tables._ppl(r['recovered'])} |"
        assert f"| {r['method']} | {r['plan']} {cells}" in text
    text = tables.llm_speed_tables(s)
    for r in s["rows"]:
        cell = f"{r['ms']:,.0f} ms" if r["kind"] == "prefill" else f"{r['tokens_per_s']:.1f} ({r['speedup']:.2f}×)"
        assert cell in text


def test_readme_shows_the_committed_llm_results():
    """benchmarks/README.md shows exactly what tables.py makes of the committed llm_*.json."""
    import tables

    readme = (ROOT / "benchmarks" / "README.md").read_text()
    folder = ROOT / "benchmarks" / "results" / "cpu"
    for name, render in (("llm_quality", tables.llm_quality_tables), ("llm_speed", tables.llm_speed_tables)):
        path = folder / f"{name}.json"
        if not path.exists():
            pytest.skip(f"{path} not committed yet")
        rendered = render(json.loads(path.read_text()))
        missing = [line for line in rendered.splitlines() if line.strip() and line not in readme]
        assert not missing, f"{name}: README lines out of date, e.g. {missing[:2]}"
