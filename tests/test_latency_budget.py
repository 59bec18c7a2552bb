"""Latency tables (Kwon et al. 2022), latency budgets and balanced shapes.

No timing is asserted: tables are built by hand or measured with an injected timer that computes a time from the
model's live shape, so every check is deterministic. The one real-timer test checks only structure and that the
caller's model is left as it was.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make, make_bert, tiny_bert_config
from transformers import AutoModelForCausalLM, LlamaConfig

from hf_gradprune import GradPruneConfig, PlanError, PruningPlan, Scores, current_plan
from hf_gradprune.architectures import Geometry, get_adapter
from hf_gradprune.deploy.latency import (
    LatencyTable,
    LatencyTableError,
    cached_latency_table,
    measure_latency_table,
    table_key,
)
from hf_gradprune.state import pruning_state

G = Geometry("bert", num_layers=4, num_heads=6, head_dim=8, hidden_size=48, intermediate_size=40)


def scores(geometry=G, seed=0, layer_scale=None):
    gen = torch.Generator().manual_seed(seed)
    neurons = [torch.rand(geometry.intermediate_size, generator=gen) * 0.01 for _ in range(geometry.num_layers)]
    if layer_scale:  # some layers' neurons matter more: a plan by score gives them more width
        neurons = [n * s for n, s in zip(neurons, layer_scale)]
    return Scores(
        method="taylor",
        geometry=geometry,
        heads=[torch.rand(geometry.num_heads, generator=gen) for _ in range(geometry.num_layers)],
        neurons=neurons,
        head_ids=[list(range(geometry.num_heads)) for _ in range(geometry.num_layers)],
        neuron_ids=[list(range(geometry.intermediate_size)) for _ in range(geometry.num_layers)],
        num_examples=10,
    )


def table(geometry=G, other=5.0, batch_size=1, seq_len=16, device_name="cpu", **kw):
    """A hand-built table: attention grows faster than linearly (scores over the sequence), FFN in steps."""
    h, n = geometry.num_heads, geometry.intermediate_size
    fields = dict(
        device_name=device_name,
        dtype="torch.float32",
        torch_threads=2,
        batch_size=batch_size,
        seq_len=seq_len,
        geometry=geometry.to_dict(),
        head_counts=list(range(h + 1)),
        attention_ms=[0.4 * c + 0.02 * c * c for c in range(h + 1)],
        ffn_widths=[0, n // 4, n // 2, n],
        ffn_ms=[0.0, 1.0, 1.5, 3.0],
        other_ms=other,
    )
    fields.update(kw)
    return LatencyTable(**fields)


def by_hand(t: LatencyTable, heads, widths) -> float:
    """The table's prediction computed here, independently: other + per-layer parts, linear between samples."""

    def interp(xs, ys, x):
        for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
            if x0 <= x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        raise AssertionError(x)

    return (
        t.other_ms
        + sum(interp(t.head_counts, t.attention_ms, h) for h in heads)
        + sum(interp(t.ffn_widths, t.ffn_ms, w) for w in widths)
    )


def shape(plan):
    return [len(h) for h in plan.heads], [len(n) for n in plan.neurons]


# ---------------------------------------------------------------------- the table
def test_predict_is_the_sum_of_its_parts():
    t = table()
    plan = PruningPlan(G, [[0, 1, 2], [], [5], list(range(6))], [list(range(7)), list(range(40)), [], [3, 9]])
    assert t.predict(plan) == pytest.approx(by_hand(t, *shape(plan)))
    assert t.predict(PruningPlan.full(G)) == pytest.approx(t.dense_ms) == pytest.approx(by_hand(t, [6] * 4, [40] * 4))
    empty = PruningPlan(G, [[]] * 4, [[]] * 4)
    assert t.predict(empty) == pytest.approx(t.other_ms)


def test_a_measured_dense_time_scales_the_layers_parts():
    """With the dense model's measured time, the parts are scaled so the dense prediction is that time; the
    empty model stays ``other_ms`` and every prediction stays the same affine function of the parts."""
    plain = table()
    parts = plain.dense_ms - plain.other_ms
    t = table(dense_measured_ms=plain.other_ms + 0.8 * parts)
    assert t.scale == pytest.approx(0.8) and plain.scale == 1.0
    assert t.dense_ms == pytest.approx(t.dense_measured_ms)
    plan = PruningPlan(G, [[0, 1, 2], [], [5], list(range(6))], [list(range(7)), list(range(40)), [], [3, 9]])
    assert t.predict(plan) == pytest.approx(t.other_ms + 0.8 * (by_hand(plain, *shape(plan)) - plain.other_ms))
    assert t.predict(PruningPlan(G, [[]] * 4, [[]] * 4)) == pytest.approx(t.other_ms)
    assert table(dense_measured_ms=plain.other_ms * 0.5).scale == 1.0  # a dense time below the empty one: noise


def test_malformed_tables_are_refused():
    with pytest.raises(LatencyTableError, match="head_counts must ascend from 0 to 6"):
        table(head_counts=[0, 2, 4], attention_ms=[0, 1, 2])
    with pytest.raises(LatencyTableError, match="one finite time"):
        table(ffn_ms=[0.0, 1.0, float("nan"), 2.0])
    with pytest.raises(LatencyTableError, match="other_ms"):
        table(other=-1.0)


# issue 20, cases 7 and 10: every field is checked when a table is built or loaded, and named in the error
BAD_FIELDS = [
    ("dense_measured_ms", float("nan")),
    ("dense_measured_ms", float("inf")),
    ("dense_measured_ms", -3.0),
    ("dense_measured_ms", 0.0),
    ("dense_measured_ms", "12.5"),
    ("other_ms", None),
    ("other_ms", "5"),
    ("other_ms", float("inf")),
    ("attention_ms", [0.0, 0.4, None, 1.4, 2.0, 2.5, 3.1]),
    ("attention_ms", [0.0, 0.4, "0.9", 1.4, 2.0, 2.5, 3.1]),
    ("ffn_ms", [0.0, 1.0, -1.5, 3.0]),
    ("ffn_ms", None),
    ("head_counts", [0, 1, 2, "3", 4, 5, 6]),
    ("ffn_widths", [0, 10, None, 40]),
    ("batch_size", None),
    ("seq_len", "16"),
    ("torch_threads", 0),
    ("device_name", None),
    ("dtype", 32),
    ("geometry", None),
    ("geometry", {**G.to_dict(), "num_heads": "6"}),
]


@pytest.mark.parametrize("name, value", BAD_FIELDS, ids=[f"{n}={v!r}" for n, v in BAD_FIELDS])
def test_every_field_of_a_table_is_checked_and_named(tmp_path, name, value):
    """A NaN dense time used to plan a model that removed nothing (predicted ms NaN, no error); a null or a
    string gave a bare TypeError. Each is now one LatencyTableError naming the field, when built and loaded."""
    field = name.split("[")[0]
    data = table().to_dict() | {name: value}
    with pytest.raises(LatencyTableError, match=rf"{field}\b.*measure") as built:
        LatencyTable(**data)
    assert "latency table" in str(built.value)
    path = tmp_path / "table.json"
    path.write_text(json.dumps(data))  # json writes NaN and Infinity, which json.loads reads back
    with pytest.raises(LatencyTableError, match=rf"{field}\b"):
        LatencyTable.load(path)


def test_a_nan_dense_time_never_reaches_a_plan(tmp_path):
    """The issue's case 7 end to end: the table is refused before any plan is made from it."""
    data = table().to_dict() | {"dense_measured_ms": float("nan")}
    (tmp_path / "nan.json").write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match="dense_measured_ms must be None or a finite time > 0"):
        t = LatencyTable.load(tmp_path / "nan.json")
        PruningPlan.from_scores(scores(), latency_budget=0.3, latency_table=t)
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(LatencyTableError, match="cannot read a latency table"):
        LatencyTable.load(tmp_path / "binary.json")


def test_save_load_round_trip_is_atomic(tmp_path):
    t = table(dense_measured_ms=17.5)
    path = t.save(tmp_path / "sub" / "table.json")
    assert LatencyTable.load(path) == t
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.json"]  # no temporary file left behind
    t2 = table(other=9.0)
    t2.save(path)  # replaces the old one
    assert LatencyTable.load(path).other_ms == 9.0
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LatencyTableError, match="cannot read"):
        LatencyTable.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({**t.to_dict(), "version": 0}))
    with pytest.raises(LatencyTableError, match="measure it again"):
        LatencyTable.load(tmp_path / "old.json")


def test_a_stale_table_is_refused(tmp_path):
    t = table()
    path = t.save(tmp_path / "t.json")
    other = Geometry("bert", num_layers=4, num_heads=6, head_dim=8, hidden_size=48, intermediate_size=44)
    with pytest.raises(LatencyTableError, match="another model"):
        LatencyTable.load(path, other)
    with pytest.raises(LatencyTableError, match="stale.*batch_size 1 \\(wanted 32\\)"):
        LatencyTable.load(path, G, batch_size=32)
    with pytest.raises(LatencyTableError, match="stale.*device_name"):
        t.check(G, device_name="NVIDIA H200")
    with pytest.raises(LatencyTableError, match="another model"):
        t.predict(PruningPlan.full(other))
    with pytest.raises(PlanError, match="latency_table: .*another model"):
        PruningPlan.from_scores(scores(other), latency_budget=0.3, latency_table=t)
    assert LatencyTable.load(path, G, batch_size=1, seq_len=16) == t  # a matching key loads


# ---------------------------------------------------------------------- latency budgets
@pytest.mark.parametrize("budget", [0.1, 0.3, 0.5, 0.7])
@pytest.mark.parametrize(
    "options",
    [
        {"ffn_multiple_of": 1},
        {"ranking": "per_layer", "ffn_multiple_of": 1},
        {"budget_split": "ratio", "ffn_multiple_of": 1},
        {"uniform": True, "ffn_multiple_of": 1},
        {"balanced": True, "ffn_multiple_of": 1},
        {"balanced": True, "ffn_multiple_of": 8},
        {"ffn_multiple_of": 8},
        {},
    ],
    ids=["global", "per_layer", "ratio", "uniform", "balanced", "balanced8", "round8", "default64"],
)
def test_latency_budget_is_met_by_prediction(budget, options):
    t = table()
    plan = PruningPlan.from_scores(scores(), latency_budget=budget, latency_table=t, **options)
    predicted = by_hand(t, *shape(plan))
    removed = 1 - predicted / t.dense_ms
    assert removed >= budget - 1e-9 and plan.meta["budget_met"] is True
    assert plan.meta["latency_budget"] == budget
    assert plan.meta["latency_predicted_ms"] == pytest.approx(predicted, abs=1e-4)
    assert plan.meta["latency_dense_ms"] == pytest.approx(t.dense_ms, abs=1e-4)
    assert plan.meta["latency_removed"] == pytest.approx(removed, abs=1e-5)
    assert plan.meta["latency_table"]["batch_size"] == 1 and plan.meta["latency_table"]["seq_len"] == 16
    if options == {"ffn_multiple_of": 1}:  # the search stops at the first cut that meets the budget: one atom more
        steps = [b - a for a, b in zip(t.attention_ms, t.attention_ms[1:])]
        steps += [(b - a) / (x1 - x0) for a, b, x0, x1 in zip(t.ffn_ms, t.ffn_ms[1:], t.ffn_widths, t.ffn_widths[1:])]
        assert removed <= budget + max(steps) / t.dense_ms + 1e-9


def test_a_larger_latency_budget_removes_more():
    t, s = table(), scores()
    removed = [
        PruningPlan.from_scores(s, latency_budget=b, latency_table=t).meta["latency_removed"] for b in (0.2, 0.4, 0.6)
    ]
    assert removed == sorted(removed) and removed[0] < removed[-1]


def test_the_prices_follow_the_table_not_the_flops():
    # The same scores, two tables: where heads are slow, a latency budget removes more heads than where they are
    # nearly free (ratio split: the price per unit decides the order).
    s = scores()
    slow_heads = table(attention_ms=[2.0 * c for c in range(7)])
    cheap_heads = table(attention_ms=[0.01 * c for c in range(7)])
    kw = dict(latency_budget=0.3, budget_split="ratio")
    slow = PruningPlan.from_scores(s, latency_table=slow_heads, **kw)
    cheap = PruningPlan.from_scores(s, latency_table=cheap_heads, **kw)
    assert slow.num_heads < cheap.num_heads


def test_the_lookup_prices_a_layers_last_neurons_as_the_table_says():
    # The FFN's first 8 neurons cost 0.25 ms each (its fixed overhead), the others 0.01 ms: once a layer is down to
    # 8 neurons, emptying it saves 25x more per neuron, so at most the layer being emptied when the budget is met
    # is left with 1-7 neurons.
    t = table(ffn_widths=[0, 8, 40], ffn_ms=[0.0, 2.0, 2.32])
    s = scores(layer_scale=[1, 0.2, 1, 0.1])
    for budget in (0.2, 0.35, 0.5):
        plan = PruningPlan.from_scores(s, latency_budget=budget, latency_table=t, ffn_multiple_of=1)
        widths = shape(plan)[1]
        assert plan.meta["budget_met"] and sum(0 < w < 8 for w in widths) <= 1, widths
    # without the overhead (the same slope everywhere) layers may stop anywhere: the property comes from the table
    flat = table(ffn_widths=[0, 8, 40], ffn_ms=[0.0, 0.08, 0.4])
    widths = shape(PruningPlan.from_scores(scores(), latency_budget=0.6, latency_table=flat, ffn_multiple_of=1))[1]
    assert sum(0 < w < 8 for w in widths) > 1, widths


def test_an_unreachable_latency_budget_fails_at_once_or_is_flagged():
    t = table(other=30.0)  # dense is 30 + 4 * (3.12 + 3) = 54.48 ms: at most 44.9% can go
    with pytest.raises(PlanError, match="cannot be met.*at most 44.9% removed; lower latency_budget"):
        PruningPlan.from_scores(scores(), latency_budget=0.5, latency_table=t)
    # reachable in principle, but every layer must keep 6 heads: flagged, and the largest cut allowed
    plan = PruningPlan.from_scores(scores(), latency_budget=0.4, latency_table=t, min_heads_per_layer=6)
    assert plan.meta["budget_met"] is False and plan.num_neurons == 0 and plan.num_heads == 24


def test_a_table_without_a_latency_budget_only_reports():
    t = table()
    plan = PruningPlan.from_scores(scores(), flops_budget=0.5, latency_table=t)
    assert plan.meta["latency_predicted_ms"] == pytest.approx(by_hand(t, *shape(plan)), abs=1e-4)
    assert shape(plan) == shape(PruningPlan.from_scores(scores(), flops_budget=0.5))  # the table changes nothing


def test_grouped_query_attention_plans_under_a_latency_budget():
    g = Geometry(
        "llama", num_layers=3, num_heads=8, head_dim=8, hidden_size=32, intermediate_size=40, num_key_value_heads=2
    )
    s = scores(g)
    s.groups = [torch.rand(2) for _ in range(3)]
    t = table(g, head_counts=[0, 2, 4, 6, 8], attention_ms=[0.0, 1.0, 2.0, 3.0, 4.0])
    for unit in ("head", "kv_group"):
        plan = PruningPlan.from_scores(s, latency_budget=0.4, latency_table=t, attention_unit=unit)
        assert plan.meta["budget_met"] and 1 - by_hand(t, *shape(plan)) / t.dense_ms >= 0.4 - 1e-9


# ---------------------------------------------------------------------- balanced shapes
@pytest.mark.parametrize("target", [{"flops_budget": 0.5}, {"params_budget": 0.4}, {"flops_budget": 0.7}])
@pytest.mark.parametrize("multiple", [1, 8])
def test_balanced_plans_keep_equal_heads_and_rounded_widths_and_meet_the_budget(target, multiple):
    s = scores(layer_scale=[1, 4, 1, 0.25])
    plan = PruningPlan.from_scores(s, balanced=True, ffn_multiple_of=multiple, **target)
    heads, widths = shape(plan)
    assert len(set(heads)) == 1 and heads[0] >= 1
    assert all(w % multiple == 0 for w in widths)
    assert len(set(widths)) > 1  # unlike uniform=True, widths follow the scores
    assert widths[1] >= widths[3]  # layer 1's neurons matter 16x more than layer 3's
    done = plan.flops_removed(128) if "flops_budget" in target else plan.params_removed()
    assert done >= next(iter(target.values())) - 1e-9 and plan.meta["budget_met"] and plan.meta["balanced"]
    for layer, kept in enumerate(plan.heads):  # which heads: each layer's most important
        assert set(kept) == set(s.heads[layer].topk(heads[0]).indices.tolist())
    for layer, kept in enumerate(plan.neurons):  # which neurons: each layer's most important
        assert set(kept) == set(s.neurons[layer].topk(len(kept)).indices.tolist())


def test_plans_round_to_the_nearest_multiple_then_fix_up():
    # Rounding each width up (what plans without balanced once did) may break the budget; every plan now rounds to
    # the nearest multiple and steps down until the budget holds, so it removes no less and stays close.
    s = scores(layer_scale=[1, 3, 1, 0.5])
    full = PruningPlan.full(G)
    one_neuron = 1 - PruningPlan(G, full.heads, [list(range(39))] + full.neurons[1:]).block_flops() / full.block_flops()
    missed = 0
    for budget in (0.3, 0.45, 0.6):
        plain = PruningPlan.from_scores(s, flops_budget=budget, ffn_multiple_of=1)
        up = PruningPlan(G, plain.heads, [list(range(min(math.ceil(w / 16) * 16, 40))) for w in shape(plain)[1]])
        missed += up.flops_removed() < budget - 1e-9
        for options in ({}, {"balanced": True}):
            plan = PruningPlan.from_scores(s, flops_budget=budget, ffn_multiple_of=16, **options)
            assert plan.flops_removed() >= budget - 1e-9 and plan.meta["budget_met"]
            assert all(w % 16 == 0 or w == 40 for w in shape(plan)[1])
            if not options:  # the heads as without rounding; the neurons within one block of the budget
                assert plan.heads == plain.heads and plan.flops_removed() < budget + 17 * one_neuron
    assert missed  # rounding up alone misses the budget somewhere: the case this rounding is for


@pytest.mark.parametrize(
    "options",
    [{}, {"ranking": "per_layer"}, {"uniform": True}, {"balanced": True}],
    ids=["global", "per_layer", "uniform", "balanced"],
)
@pytest.mark.parametrize("budget", [0.2, 0.6])
def test_default_rounded_latency_plans_meet_the_budget_on_wide_ffns(budget, options):
    # the default multiple (64) on FFNs of width 1536: the bisection over rounded plans still meets the budget
    wide = Geometry("bert", num_layers=4, num_heads=8, head_dim=32, hidden_size=256, intermediate_size=1536)
    t = table(wide, ffn_widths=[0, 8, 384, 1536], ffn_ms=[0.0, 0.5, 1.5, 4.0])
    plan = PruningPlan.from_scores(
        scores(wide, layer_scale=[1, 3, 0.5, 1.5]), latency_budget=budget, latency_table=t, **options
    )
    assert plan.meta["budget_met"] is True and plan.meta["ffn_multiple_of"] == 64
    assert 1 - by_hand(t, *shape(plan)) / t.dense_ms >= budget - 1e-9
    assert all(w % 64 == 0 for w in shape(plan)[1]), shape(plan)


def test_balanced_under_count_targets():
    s = scores(layer_scale=[1, 4, 1, 0.25])
    plan = PruningPlan.from_scores(s, head_sparsity=0.5, ffn_sparsity=0.5, balanced=True, ffn_multiple_of=8)
    heads, widths = shape(plan)
    assert heads == [3] * 4
    assert sum(widths) <= 80 and sum(widths) >= 80 - 8 and all(w % 8 == 0 for w in widths) and len(set(widths)) > 1


def test_balanced_is_not_uniform():
    s = scores(layer_scale=[1, 4, 1, 0.25])
    uni = PruningPlan.from_scores(s, flops_budget=0.5, uniform=True)
    bal = PruningPlan.from_scores(s, flops_budget=0.5, balanced=True)
    assert uni.is_uniform() and not bal.is_uniform() and len(set(shape(bal)[0])) == 1


# ---------------------------------------------------------------------- option errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(latency_budget=0.3, flops_budget=0.3), "cannot be combined"),
        (dict(latency_budget=0.3, head_sparsity=0.3), "cannot be combined"),
        (dict(latency_budget=1.0), "fraction in \\[0, 1\\)"),
        (dict(latency_budget=0.3, latency_table=None), "pass latency_table="),
        (dict(flops_budget=0.3, balanced=True, uniform=True), "choose one"),
        (dict(flops_budget=0.3, balanced=True, heads_kept=8), "heads_kept cannot be combined with balanced"),
        (dict(flops_budget=0.3, balanced=1), "balanced must be True or False"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    kwargs.setdefault("latency_table", table() if "latency_budget" in kwargs else None)
    with pytest.raises(PlanError, match=message):
        PruningPlan.from_scores(scores(), **kwargs)


# ---------------------------------------------------------------------- measuring
def shape_timer(calls=None):
    """A fake timer: 2 ms + per layer 0.5 ms per head (+ 0.1 ms for any attention) and 0.01 ms per neuron."""

    def timer(model):
        if calls is not None:
            calls.append(1)
        state = pruning_state(model)
        adapter = state.adapter
        ms = 2.0
        for layer in state.layers:
            heads = adapter.num_heads(layer)
            ms += 0.5 * heads + (0.1 if heads else 0.0) + 0.01 * adapter.ffn_width(layer)
        return ms

    return timer


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, model.training, type(model), model.config.to_dict()


def same(model, snap):
    params, training, cls, config = snap
    now = model.state_dict()
    return (
        set(now) == set(params)
        and all(torch.equal(now[k], params[k]) for k in params)
        and model.training == training
        and type(model) is cls
        and model.config.to_dict() == config
    )


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_measuring_recovers_the_parts_and_leaves_the_model_alone(kind):
    model = make(kind).train()  # in training mode: it must stay so
    snap = snapshot(model)
    t = measure_latency_table(model, 2, 8, ffn_widths=[0, 24, 48, 96], timer=shape_timer())
    assert same(model, snap)
    g = current_plan(model).geometry
    assert t.head_counts == list(range(g.num_heads + 1)) and t.ffn_widths == [0, 24, 48, 96]
    assert t.other_ms == pytest.approx(2.0)
    assert t.attention_ms == pytest.approx([0.0] + [0.5 * h + 0.1 for h in range(1, g.num_heads + 1)])
    assert t.ffn_ms == pytest.approx([0.01 * w for w in t.ffn_widths])
    assert t.dense_measured_ms == pytest.approx(t.dense_ms)  # the fake timer is additive, so the sum is exact
    assert (t.batch_size, t.seq_len) == (2, 8) and Geometry(**t.geometry) == g
    plan = PruningPlan(g, [[0], [1, 2], []], [list(range(30)), [], list(range(96))])
    assert t.predict(plan) == pytest.approx(shape_timer()(_pruned(model, plan)))


def _pruned(model, plan):
    import copy

    from hf_gradprune import prune_model

    return prune_model(copy.deepcopy(model), plan)


def test_measuring_with_the_real_timer_runs_and_changes_nothing():
    model = make_bert().eval()
    snap = snapshot(model)
    t = measure_latency_table(model, 1, 8, ffn_samples=3, repeats=1, warmup=0)
    assert same(model, snap)
    assert t.ffn_widths == [0, 48, 96] and len(t.attention_ms) == 5
    assert all(b >= a for a, b in zip(t.attention_ms, t.attention_ms[1:]))  # made non-decreasing
    assert t.other_ms > 0 and t.dense_measured_ms > 0 and t.key() == table_key(model, 1, 8)


def test_measuring_grouped_query_attention_times_whole_groups():
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    snap = snapshot(model)
    t = measure_latency_table(model, 1, 8, ffn_widths=[0, 40], timer=shape_timer())
    assert same(model, snap) and t.head_counts == [0, 4, 8]
    assert t.attention_ms == pytest.approx([0.0, 2.1, 4.1])
    with pytest.raises(ValueError, match="multiples of the key/value group size"):
        measure_latency_table(model, 1, 8, head_counts=[0, 3, 8], timer=shape_timer())


def test_measuring_a_pruned_model_is_refused():
    model = make_bert()
    from hf_gradprune import prune_model

    prune_model(model, PruningPlan(current_plan(model).geometry, [[0]] * 3, [list(range(10))] * 3))
    with pytest.raises(LatencyTableError, match="needs the unpruned model"):
        measure_latency_table(model, 1, 8, timer=shape_timer())


def test_the_cache_loads_instead_of_measuring_again(tmp_path):
    model = make_bert()
    calls = []
    first = cached_latency_table(model, 1, 8, tmp_path, ffn_widths=[0, 96], timer=shape_timer(calls))
    measured = len(calls)
    assert measured == 2 * (1 + 4 + 1 + 1)  # two rounds of: empty, 1..4 heads, 96 neurons, dense
    second = cached_latency_table(model, 1, 8, tmp_path, ffn_widths=[0, 96], timer=shape_timer(calls))
    assert len(calls) == measured and second == first  # loaded
    other = cached_latency_table(model, 2, 8, tmp_path, ffn_widths=[0, 96], timer=shape_timer(calls))
    assert len(calls) == 2 * measured and other.batch_size == 2  # another shape: measured, stored beside it
    bf16 = cached_latency_table(
        model, 1, 8, tmp_path, ffn_widths=[0, 96], autocast_dtype=torch.bfloat16, timer=shape_timer(calls)
    )
    assert len(calls) == 3 * measured and bf16.dtype == "torch.bfloat16"  # autocast's dtype is part of the key
    assert len(list(tmp_path.glob("*.json"))) == 3


# ---------------------------------------------------------------------- GradPruneConfig and the trainer
def config(tmp_path, **kw):
    return GradPruneConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, **kw)


def test_config_validates_the_latency_fields(tmp_path):
    path = table(Geometry(**get_adapter(make_bert()).geometry(tiny_bert_config()).to_dict())).save(tmp_path / "t.json")
    assert config(tmp_path, latency_budget=0.3, latency_table=str(path)).latency_budget == 0.3
    assert config(
        tmp_path, latency_budget=0.3, latency_table_batch_size=1, latency_table_seq_len=8, balanced=True
    ).balanced
    bad = [
        (dict(latency_budget=0.3), "needs a latency table"),
        (dict(latency_budget=0.3, latency_table_batch_size=1), "needs a latency table"),
        (dict(latency_budget=0.3, latency_table=str(tmp_path / "missing.json")), "cannot read"),
        (dict(latency_budget=0.3, latency_table=str(path), latency_table_batch_size=4), "stale"),
        (
            dict(latency_budget=0.3, latency_table_batch_size=0, latency_table_seq_len=8),
            "latency_table_batch_size must be an integer",
        ),
        (dict(flops_budget=0.3, latency_table_seq_len=8), "set latency_budget too"),
        (dict(latency_budget=0.3, flops_budget=0.3, latency_table=str(path)), "cannot be combined"),
        (dict(flops_budget=0.3, balanced=True, uniform=True), "choose one"),
    ]
    for kw, message in bad:
        with pytest.raises(PlanError, match=message):
            config(tmp_path, **kw)


def test_trainer_plans_with_a_latency_budget(tmp_path):
    from trainer_helpers import make_trainer

    model = make_bert()
    g = current_plan(model).geometry
    path = table(g, device_name=table_key(model, 1, 1)["device_name"], torch_threads=torch.get_num_threads()).save(
        tmp_path / "t.json"
    )
    trainer = make_trainer(
        tmp_path / "run",
        model=model,
        max_steps=4,
        scoring_steps=2,
        head_sparsity=None,
        ffn_sparsity=None,
        latency_budget=0.4,
        latency_table=str(path),
        balanced=True,
    )
    trainer.train()
    plan = current_plan(trainer.model)
    t = LatencyTable.load(path)
    assert 1 - t.predict(plan) / t.dense_ms >= 0.4 - 1e-9 and len({len(h) for h in plan.heads}) == 1
    assert plan.meta["budget_met"] and plan.meta["latency_budget"] == 0.4


def test_trainer_refuses_a_table_of_another_model(tmp_path):
    from trainer_helpers import make_trainer

    other = Geometry("bert", num_layers=3, num_heads=4, head_dim=16, hidden_size=64, intermediate_size=128)
    path = table(other).save(tmp_path / "t.json")
    with pytest.raises(LatencyTableError, match="another model"):
        make_trainer(
            tmp_path / "run", head_sparsity=None, ffn_sparsity=None, latency_budget=0.3, latency_table=str(path)
        )


def test_trainer_measures_the_table_through_the_cache(tmp_path, monkeypatch):
    import functools

    from trainer_helpers import make_trainer

    import hf_gradprune.deploy.latency as latency

    monkeypatch.setenv("HF_GRADPRUNE_CACHE", str(tmp_path / "cache"))
    calls = []
    fake = functools.partial(latency.measure_latency_table, ffn_widths=[0, 48, 96], timer=shape_timer(calls))
    monkeypatch.setattr(latency, "measure_latency_table", fake)  # what the cache calls to measure
    trainer = make_trainer(
        tmp_path / "run",
        head_sparsity=None,
        ffn_sparsity=None,
        latency_budget=0.3,
        latency_table_batch_size=1,
        latency_table_seq_len=8,
    )
    t = trainer.latency_table
    assert (t.batch_size, t.seq_len) == (1, 8) and len(list((tmp_path / "cache" / "latency").glob("*.json"))) == 1
    assert calls and t.ffn_widths == [0, 48, 96] and math.isfinite(t.dense_ms)


def test_balanced_after_an_uneven_prune_keeps_the_smaller_layers_whole():
    # scores of a model whose layer 2 kept 2 heads and layer 0 kept 12 neurons: balanced keeps one count for the
    # other layers; a layer with fewer live heads keeps those; a tiny budget is still met
    s = scores()
    s.heads[2], s.head_ids[2] = s.heads[2][:2], [0, 4]
    s.neurons[0], s.neuron_ids[0] = s.neurons[0][:12], list(range(12))
    for budget in (0.3, 0.6):
        plan = PruningPlan.from_scores(s, flops_budget=budget, balanced=True, ffn_multiple_of=8)
        heads, widths = shape(plan)
        assert len({h for i, h in enumerate(heads) if i != 2}) == 1 and heads[2] <= 2 and heads[2] <= heads[0]
        assert set(plan.heads[2]) <= {0, 4} and set(plan.neurons[0]) <= set(range(12))
        assert plan.meta["budget_met"] and all(w % 8 == 0 or w == 12 for w in widths)


def test_a_slow_spell_in_one_round_does_not_reach_the_table():
    model = make_bert()
    exact = shape_timer()
    calls = []

    def spell(m):  # the machine is 50x slower for the first four timings
        calls.append(1)
        return exact(m) * (50 if len(calls) <= 4 else 1)

    t = measure_latency_table(model, 1, 8, ffn_widths=[0, 96], rounds=3, timer=spell)
    assert len(calls) == 3 * 7
    assert t.other_ms == pytest.approx(2.0) and t.attention_ms == pytest.approx([0.0, 0.6, 1.1, 1.6, 2.1])


@pytest.mark.parametrize("dense_ms", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_table_like_object_that_predicts_no_finite_dense_time_is_refused(dense_ms):
    """Any object with ``predict`` is taken as a table; one whose dense time is not a finite time > 0 plans nothing."""

    class Predictor:
        def predict(self, plan):
            return dense_ms

    with pytest.raises(PlanError, match="finite time above 0"):
        PruningPlan.from_scores(scores(), latency_budget=0.3, latency_table=Predictor())
