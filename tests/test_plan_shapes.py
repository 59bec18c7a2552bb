"""Issue 24: every score under every shape (uniform / balanced pick their head count on a scale-free rule), and a
per-layer floor on FFN width (``min_ffn_per_layer``)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import batch, make_bert
from test_llama import batch as llama_batch
from test_llama import make_decoder

from hf_gradprune import GradPruneConfig, ImportanceScorer, PlanError, PruningPlan, Scores, current_plan
from hf_gradprune.architectures import Geometry
from hf_gradprune.oneshot.prune import prune_oneshot

METHODS = ["fisher", "taylor", "magnitude", "random"]


def _lm_batch(seed):
    b = llama_batch(seed=seed, size=4)
    b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    return b


@functools.cache
def real_scores(kind: str, method: str) -> Scores:
    """Scores from the real scorer on a tiny BERT or a tiny Llama with grouped-query attention."""
    model = make_bert() if kind == "bert" else make_decoder()
    data = [batch("bert", seed=30 + i, size=4) if kind == "bert" else _lm_batch(30 + i) for i in range(3)]
    scorer = ImportanceScorer(model, method)
    with scorer:
        for b in data:
            model.zero_grad()
            model(**b).loss.backward()
    return scorer.scores


def scaled(s: Scores, factor: float) -> Scores:
    """The same scores with every head (and key/value group) score multiplied by ``factor``."""
    return Scores(
        method=s.method,
        geometry=s.geometry,
        heads=[t * factor for t in s.heads],
        neurons=[t.clone() for t in s.neurons],
        head_ids=s.head_ids,
        neuron_ids=s.neuron_ids,
        num_examples=s.num_examples,
        groups=None if s.groups is None else [t * factor for t in s.groups],
    )


class LinearTable:
    """A latency table: fixed time plus a cost per head and per neuron."""

    def predict(self, plan):
        return 5.0 + sum(0.2 * len(h) + 0.002 * len(n) for h, n in zip(plan.heads, plan.neurons))


def shape(plan):
    return plan.heads, plan.neurons


# ---------------------------------------------------------------------- every score under every shape
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("target", [dict(params_budget=0.2), dict(flops_budget=0.5)])
@pytest.mark.parametrize("ffn_multiple_of", [1, 8])
def test_uniform_meets_the_budget_and_ignores_the_scale_of_head_scores(method, kind, target, ffn_multiple_of):
    s = real_scores(kind, method)
    opts = dict(uniform=True, seq_len=12, ffn_multiple_of=ffn_multiple_of, **target)
    plan = PruningPlan.from_scores(s, **opts)
    assert plan.is_uniform() and plan.meta["budget_met"] and plan.meta["budget_split"] == "normalized"
    assert all(plan.heads)  # every layer keeps some attention
    for factor in (1e4, 1e-4):
        assert shape(PruningPlan.from_scores(scaled(s, factor), **opts)) == shape(plan), factor


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("target", [dict(params_budget=0.2), dict(flops_budget=0.5)])
def test_balanced_meets_the_budget_and_ignores_the_scale_of_head_scores(method, kind, target):
    s = real_scores(kind, method)
    opts = dict(balanced=True, seq_len=12, ffn_multiple_of=1, **target)
    plan = PruningPlan.from_scores(s, **opts)
    assert plan.meta["budget_met"] and len({len(h) for h in plan.heads}) == 1
    for factor in (1e4, 1e-4):
        assert shape(PruningPlan.from_scores(scaled(s, factor), **opts)) == shape(plan), factor


def test_kv_group_units_ignore_the_scale_of_group_scores():
    s = real_scores("llama", "taylor")
    opts = dict(uniform=True, params_budget=0.2, attention_unit="kv_group", ffn_multiple_of=1)
    plan = PruningPlan.from_scores(s, **opts)
    assert plan.meta["budget_met"] and plan.is_uniform()
    for factor in (1e4, 1e-4):
        assert shape(PruningPlan.from_scores(scaled(s, factor), **opts)) == shape(plan)


@pytest.mark.parametrize("shape_opts", [{}, dict(uniform=True), dict(balanced=True)])
@pytest.mark.parametrize("multiple", [1, 8])
def test_latency_budgets_ignore_the_scale_of_head_scores(shape_opts, multiple):
    s = real_scores("llama", "taylor")
    opts = dict(latency_budget=0.3, latency_table=LinearTable(), ffn_multiple_of=multiple, **shape_opts)
    plan = PruningPlan.from_scores(s, **opts)
    assert plan.meta["budget_met"]
    for factor in (1e4, 1e-4):
        assert shape(PruningPlan.from_scores(scaled(s, factor), **opts)) == shape(plan), factor


def test_uniform_ratio_split_sums_raw_scores():
    # "ratio" is the raw rule: heads scaled far up keep every head, scaled far down keep the fewest
    s = real_scores("llama", "taylor")
    opts = dict(uniform=True, params_budget=0.2, ffn_multiple_of=1, budget_split="ratio")
    up = PruningPlan.from_scores(scaled(s, 1e4), **opts)
    down = PruningPlan.from_scores(scaled(s, 1e-4), **opts)
    assert up.meta["budget_split"] == "ratio" and up.meta["budget_met"] and down.meta["budget_met"]
    assert up.num_heads > down.num_heads


@pytest.mark.parametrize("method", METHODS)
def test_prune_oneshot_uniform_with_a_budget_works_for_every_method(method):
    model = make_decoder()
    data = [llama_batch(seed=20 + i, size=4) for i in range(8)]
    model, report = prune_oneshot(
        model, data, params_budget=0.2, uniform=True, method=method
    )  # the default path: the steps chosen on 4 held-out batches
    plan = current_plan(model)
    assert plan.is_uniform() and plan.params_removed() >= 0.2 - 1e-9 and all(plan.heads)
    logits = model(**data[0]).logits
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------------- a per-layer FFN floor
W = Geometry("bert", num_layers=4, num_heads=8, head_dim=32, hidden_size=256, intermediate_size=1536)


def wide_scores(geometry=W, seed=0, layer_scale=(1.0, 3.0, 0.5, 1e-3)):
    """The last layer's neurons nearly worthless: global ranking empties its FFN without a floor."""
    gen = torch.Generator().manual_seed(seed)
    return Scores(
        method="taylor",
        geometry=geometry,
        heads=[torch.rand(geometry.num_heads, generator=gen) for _ in range(geometry.num_layers)],
        neurons=[
            torch.rand(geometry.intermediate_size, generator=gen) * 0.01 * f for f in layer_scale[: geometry.num_layers]
        ],
        head_ids=[list(range(geometry.num_heads)) for _ in range(geometry.num_layers)],
        neuron_ids=[list(range(geometry.intermediate_size)) for _ in range(geometry.num_layers)],
        num_examples=10,
    )


TARGETS = [
    dict(ffn_sparsity=0.8),
    dict(head_sparsity=0.5, ffn_sparsity=0.9),
    dict(flops_budget=0.5),
    dict(params_budget=0.6),
    dict(flops_budget=0.5, heads_kept=16),
    dict(flops_budget=0.5, balanced=True),
    dict(params_budget=0.4, budget_split="ratio"),
    dict(latency_budget=0.4, latency_table=LinearTable()),
]


def _floor(fraction, multiple, width=1536):
    count = math.ceil(fraction * width)
    return min(width, -(-count // multiple) * multiple)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: "-".join(k for k in t if k != "latency_table"))
@pytest.mark.parametrize("ranking", ["global", "per_layer"])
@pytest.mark.parametrize("multiple", [1, 64])
def test_the_floor_holds_in_every_layer_and_the_budget_is_still_met(target, ranking, multiple):
    s = wide_scores()
    opts = dict(ranking=ranking, ffn_multiple_of=multiple, **target)
    without = PruningPlan.from_scores(s, **opts)
    plan = PruningPlan.from_scores(s, min_ffn_per_layer=0.2, **opts)
    floor = _floor(0.2, multiple)  # 308 neurons; 320 rounded up to 64
    assert min(len(n) for n in plan.neurons) >= floor
    if ranking == "global" and "balanced" not in target:
        assert min(len(n) for n in without.neurons) < floor  # the floor did something here
    assert plan.meta["min_ffn_per_layer"] == 0.2
    if multiple > 1:
        assert all(len(n) % multiple == 0 or len(n) == 1536 for n in plan.neurons)
    if "budget_met" in without.meta:
        assert without.meta["budget_met"] and plan.meta["budget_met"]  # reachable: still met
    if "ffn_sparsity" in target:  # a count target still removes at least what was asked where it can
        assert plan.num_neurons <= without.num_neurons + 4 * floor


@pytest.mark.parametrize("target", [dict(flops_budget=0.5), dict(params_budget=0.5), dict(ffn_sparsity=0.6)])
@pytest.mark.parametrize("multiple", [1, 64])
def test_the_floor_holds_under_uniform(target, multiple):
    s = wide_scores(layer_scale=(1.0, 1.0, 1.0, 1.0))
    plan = PruningPlan.from_scores(s, uniform=True, ffn_multiple_of=multiple, min_ffn_per_layer=0.45, **target)
    assert plan.is_uniform() and len(plan.neurons[0]) >= _floor(0.45, multiple)
    if "ffn_sparsity" not in target:
        assert plan.meta["budget_met"]


@pytest.mark.parametrize("shape_opts", [{}, dict(uniform=True), dict(balanced=True), dict(heads_kept=32)])
@pytest.mark.parametrize("multiple", [1, 64])
def test_a_floor_that_makes_the_budget_unreachable_says_so(shape_opts, multiple):
    s = wide_scores()
    opts = dict(params_budget=0.9, ffn_multiple_of=multiple, min_heads_per_layer=1, **shape_opts)
    plan = PruningPlan.from_scores(s, min_ffn_per_layer=0.5, **opts)
    assert plan.meta["budget_met"] is False
    assert min(len(n) for n in plan.neurons) >= _floor(0.5, multiple)
    assert PruningPlan.from_scores(s, **opts).meta["budget_met"] or shape_opts.get("heads_kept")


def test_a_layer_narrower_than_the_floor_keeps_all_it_has():
    s = wide_scores()
    # an earlier prune left layer 3 with 100 neurons
    s.neurons[3] = s.neurons[3][:100]
    s.neuron_ids[3] = list(range(100))
    for opts in (dict(flops_budget=0.5), dict(ffn_sparsity=0.8), dict(flops_budget=0.5, balanced=True)):
        for multiple in (1, 64):
            plan = PruningPlan.from_scores(s, min_ffn_per_layer=0.2, ffn_multiple_of=multiple, **opts)
            assert len(plan.neurons[3]) == 100
            assert min(len(n) for n in plan.neurons[:3]) >= _floor(0.2, multiple)


def test_the_floor_keeps_each_layers_most_important_neurons():
    s = wide_scores()
    plan = PruningPlan.from_scores(s, flops_budget=0.5, min_ffn_per_layer=0.1, ffn_multiple_of=1)
    assert set(s.neurons[3].topk(154).indices.tolist()) <= set(plan.neurons[3])


def test_zero_floor_changes_nothing():
    s = wide_scores()
    for target in (dict(flops_budget=0.5), dict(ffn_sparsity=0.7), dict(flops_budget=0.5, balanced=True)):
        a = PruningPlan.from_scores(s, **target)
        b = PruningPlan.from_scores(s, min_ffn_per_layer=0.0, **target)
        assert shape(a) == shape(b)


def test_the_floor_holds_on_real_scores():
    s = real_scores("llama", "fisher")
    plan = PruningPlan.from_scores(s, params_budget=0.3, min_ffn_per_layer=0.5, ffn_multiple_of=1)
    assert min(len(n) for n in plan.neurons) >= 20 and plan.meta["budget_met"]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "0.2", float("nan"), None])
def test_bad_floors_are_refused_before_anything(bad):
    with pytest.raises(PlanError, match="min_ffn_per_layer must be a fraction in \\[0, 1\\)"):
        PruningPlan.from_scores(wide_scores(), flops_budget=0.5, min_ffn_per_layer=bad)
    with pytest.raises(ValueError, match="min_ffn_per_layer"):
        GradPruneConfig(output_dir="/tmp/x", flops_budget=0.5, min_ffn_per_layer=bad)


def test_the_config_takes_a_floor():
    config = GradPruneConfig(output_dir="/tmp/x", flops_budget=0.5, min_ffn_per_layer=0.25)
    assert config.min_ffn_per_layer == 0.25
