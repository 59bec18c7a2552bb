import math

import pytest
import torch

from hf_gradprune import Geometry, PlanError, PruningPlan, Scores, ScoresError

G = Geometry("bert", num_layers=4, num_heads=6, head_dim=8, hidden_size=48, intermediate_size=40)


def scores(seed=0, method="taylor", geometry=G, examples=10):
    gen = torch.Generator().manual_seed(seed)
    return Scores(
        method=method,
        geometry=geometry,
        heads=[torch.rand(geometry.num_heads, generator=gen) for _ in range(geometry.num_layers)],
        neurons=[torch.rand(geometry.intermediate_size, generator=gen) * 0.01 for _ in range(geometry.num_layers)],
        head_ids=[list(range(geometry.num_heads)) for _ in range(geometry.num_layers)],
        neuron_ids=[list(range(geometry.intermediate_size)) for _ in range(geometry.num_layers)],
        num_examples=examples,
    )


def test_global_sparsity_keeps_the_most_important():
    s = scores()
    plan = PruningPlan.from_scores(s, head_sparsity=0.5, ffn_sparsity=0.25, ffn_multiple_of=1)
    assert plan.num_heads == 12 and plan.num_neurons == 120
    all_heads = sorted(((v.item(), layer, i) for layer, t in enumerate(s.heads) for i, v in enumerate(t)), reverse=True)
    assert {(layer, i) for _, layer, i in all_heads[:12]} == {
        (layer, i) for layer, h in enumerate(plan.heads) for i in h
    }


def test_per_layer_is_uniform_and_picks_within_each_layer():
    s = scores()
    plan = PruningPlan.from_scores(s, head_sparsity=0.5, ffn_sparsity=0.5, ranking="per_layer", ffn_multiple_of=1)
    assert [len(h) for h in plan.heads] == [3] * 4 and [len(n) for n in plan.neurons] == [20] * 4
    for layer in range(4):
        assert set(plan.heads[layer]) == set(s.heads[layer].topk(3).indices.tolist())


def test_global_ranking_may_empty_a_layer_and_min_heads_prevents_it():
    s = scores()
    s.heads[2] = s.heads[2] * 1e-3  # layer 2 is useless
    plan = PruningPlan.from_scores(s, head_sparsity=0.25)
    assert plan.heads[2] == []
    guarded = PruningPlan.from_scores(s, head_sparsity=0.25, min_heads_per_layer=2)
    assert len(guarded.heads[2]) == 2 and guarded.num_heads == plan.num_heads


def test_normalize_heads_rescales_each_layer():
    s = scores()
    s.heads[0] = s.heads[0] * 100
    raw = PruningPlan.from_scores(s, head_sparsity=0.5)
    norm = PruningPlan.from_scores(s, head_sparsity=0.5, normalize_heads=True)
    assert len(raw.heads[0]) == 6 and len(norm.heads[0]) < 6


@pytest.mark.parametrize("budget", [0.25, 0.5, 0.7])
def test_flops_budget_is_met_by_at_most_one_unit(budget):
    plan = PruningPlan.from_scores(scores(), flops_budget=budget, ffn_multiple_of=1)
    full = PruningPlan.full(G)
    removed = 1 - plan.block_flops() / full.block_flops()
    head_share = (full.block_flops() / (G.num_layers * G.num_heads)) / full.block_flops()
    assert budget <= removed + 1e-9 < budget + head_share


def test_params_budget_counts_fixed_parameters():
    plan = PruningPlan.from_scores(scores(), params_budget=0.5, ffn_multiple_of=1)
    removed = 1 - plan.block_params() / PruningPlan.full(G).block_params()
    assert 0.5 <= removed < 0.5 + 0.05


def test_budget_compares_heads_and_neurons_per_flop():
    s = scores()
    s.neurons = [t * 1e-6 for t in s.neurons]  # neurons nearly worthless: they go first
    plan = PruningPlan.from_scores(
        s, flops_budget=0.1, budget_split="ratio", ffn_multiple_of=1
    )  # FFN is ~15% of the FLOPs
    assert plan.num_heads == G.num_layers * G.num_heads and plan.num_neurons < G.num_layers * G.intermediate_size
    s.heads[1] = s.heads[1] * 1e-9  # now layer 1's heads are cheaper per FLOP than any neuron
    plan = PruningPlan.from_scores(s, flops_budget=0.1, ffn_multiple_of=1)
    assert len(plan.heads[1]) == 3 and plan.num_heads == 21 and plan.num_neurons == G.num_layers * G.intermediate_size


def test_ffn_multiple_of_rounds_every_layer_and_still_removes_what_was_asked():
    s = scores()
    plan = PruningPlan.from_scores(s, ffn_sparsity=0.37, ffn_multiple_of=8)
    assert all(len(n) % 8 == 0 for n in plan.neurons)
    unrounded = PruningPlan.from_scores(s, ffn_sparsity=0.37, ffn_multiple_of=1)
    assert unrounded.num_neurons - 8 < plan.num_neurons <= unrounded.num_neurons  # never fewer removed than asked
    for layer, (a, b) in enumerate(zip(plan.neurons, unrounded.neurons)):
        assert abs(len(a) - len(b)) <= 8  # each layer within one block of its unrounded width
        assert set(a) == set(s.neurons[layer].topk(len(a)).indices.tolist())  # the layer's most important


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_unit_interval_is_refused(bad):
    with pytest.raises(PlanError, match=r"\[0, 1\)"):
        PruningPlan.from_scores(scores(), head_sparsity=bad)
    with pytest.raises(PlanError, match=r"\[0, 1\)"):
        PruningPlan.from_scores(scores(), flops_budget=bad)


def test_bad_target_combinations():
    with pytest.raises(PlanError, match="cannot be combined"):
        PruningPlan.from_scores(scores(), head_sparsity=0.5, flops_budget=0.5)
    with pytest.raises(PlanError, match="give a target"):
        PruningPlan.from_scores(scores())
    with pytest.raises(PlanError, match="ranking"):
        PruningPlan.from_scores(scores(), head_sparsity=0.5, ranking="random")


def test_nan_inf_and_empty_scores_are_refused():
    for bad in (float("nan"), float("inf")):
        s = scores()
        s.neurons[1][3] = bad
        with pytest.raises(ScoresError, match="NaN or inf"):
            PruningPlan.from_scores(s, ffn_sparsity=0.5)
    with pytest.raises(ScoresError, match="no examples"):
        PruningPlan.from_scores(scores(examples=0), head_sparsity=0.5)
    PruningPlan.from_scores(scores(examples=0, method="magnitude"), head_sparsity=0.5)  # no data needed


def test_targets_are_fractions_of_the_original_model():
    s = scores()
    first = PruningPlan.from_scores(s, head_sparsity=0.25)
    live = Scores(
        "taylor",
        G,
        [t[torch.tensor(h, dtype=torch.long)] for t, h in zip(s.heads, first.heads)],
        s.neurons,
        first.heads,
        s.neuron_ids,
        10,
    )
    second = PruningPlan.from_scores(live, head_sparsity=0.5)
    assert second.num_heads == 12 and second.is_subset_of(first)
    again = PruningPlan.from_scores(live, head_sparsity=0.1)  # already below: nothing more goes
    assert again.num_heads == first.num_heads


def test_json_roundtrip_and_summary(tmp_path):
    plan = PruningPlan.from_scores(scores(), flops_budget=0.4, ffn_multiple_of=4)
    plan.to_json(tmp_path / "plan.json")
    back = PruningPlan.from_json(tmp_path / "plan.json")
    assert back == plan and PruningPlan.from_json(plan.to_json()) == plan
    text = plan.summary()
    assert f"heads {G.num_layers * G.num_heads} -> {plan.num_heads}" in text
    assert f"{PruningPlan.full(G).block_params():,} -> {plan.block_params():,}" in text
    assert text.count("/ 6") == G.num_layers


def test_intersect():
    a = PruningPlan(G, [[0, 1, 2]] * 4, [list(range(10))] * 4)
    b = PruningPlan(G, [[1, 2, 3]] * 4, [list(range(5, 20))] * 4)
    c = a.intersect(b)
    assert c.heads == [[1, 2]] * 4 and c.neurons == [list(range(5, 10))] * 4
    with pytest.raises(PlanError):
        a.intersect(PruningPlan.full(Geometry("bert", 4, 6, 8, 48, 41)))


def test_flops_accounting_matches_hand_count():
    full = PruningPlan.full(G)
    t, h, d = 128, G.hidden_size, G.head_dim
    per_layer = t * (2 * 4 * h * G.num_heads * d + 2 * 2 * t * G.num_heads * d + 2 * 2 * h * G.intermediate_size)
    assert full.block_flops(t) == G.num_layers * per_layer
    params = G.num_layers * (4 * h * h + 4 * h + 2 * h * G.intermediate_size + G.intermediate_size + h + 4 * h)
    assert full.block_params() == params
    assert math.isclose(PruningPlan(G, [[]] * 4, [[]] * 4).block_params(), G.num_layers * 6 * h)


# ---------------------------------------------------------------------- FFN rounding (issue 10, item 7)
def _live_scores(neuron_ids):
    """Scores of a model whose layers have ``neuron_ids`` live (e.g. after an earlier prune)."""
    s = scores()
    s.neurons = [t[torch.tensor(ids, dtype=torch.long)] for t, ids in zip(s.neurons, neuron_ids)]
    s.neuron_ids = [list(ids) for ids in neuron_ids]
    return s


@pytest.mark.parametrize("multiple", [16, 41, 64])
def test_ffn_rounding_never_removes_neurons_when_none_are_asked(multiple):
    # 40 neurons per layer: narrower than 41 and 64, and no multiple of 16 (it used to round to 0 or 32).
    plan = PruningPlan.from_scores(scores(), ffn_sparsity=0.0, ffn_multiple_of=multiple)
    assert plan.neurons == PruningPlan.full(G).neurons


def test_ffn_rounding_on_an_already_pruned_layer_keeps_its_live_width():
    live = [list(range(37)), list(range(3, 40)), list(range(0, 40, 2)), list(range(40))]
    plan = PruningPlan.from_scores(_live_scores(live), ffn_sparsity=0.0, ffn_multiple_of=8)
    assert plan.neurons == live


@pytest.mark.parametrize("ranking", ["global", "per_layer"])
@pytest.mark.parametrize("multiple", [3, 16, 64])
@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9])
def test_ffn_rounding_keeps_multiples_or_the_live_width_and_the_count_target(ranking, multiple, sparsity):
    s = _live_scores([list(range(40)), list(range(37)), list(range(5, 30)), list(range(40))])
    rounded = PruningPlan.from_scores(s, ffn_sparsity=sparsity, ffn_multiple_of=multiple, ranking=ranking)
    plain = PruningPlan.from_scores(s, ffn_sparsity=sparsity, ranking=ranking, ffn_multiple_of=1)
    for kept, live in zip(rounded.neurons, s.neuron_ids):
        assert set(kept) <= set(live)
        assert len(kept) % multiple == 0 or len(kept) == len(live)
    # at most as many kept as asked, and no whole block more removed (a step up would have fitted)
    assert plain.num_neurons - multiple < rounded.num_neurons <= plain.num_neurons
    assert rounded.meta["ffn_multiple_of"] == multiple and plain.meta["ffn_multiple_of"] == 1


# ---------------------------------------------------------------------- ids and options (issue 10, item 9)
@pytest.mark.parametrize("bad", [1.7, 2.0, True, "1", None])
def test_non_integer_ids_are_refused_not_truncated(bad):
    with pytest.raises(PlanError, match="integers"):
        PruningPlan(G, [[0, bad]] + [[0]] * 3, [[0]] * 4)
    with pytest.raises(PlanError, match="integers"):
        PruningPlan(G, [[0]] * 4, [[0]] * 3 + [[5, bad]])
    with pytest.raises(PlanError, match="integers"):
        PruningPlan.from_dict({**PruningPlan.full(G).to_dict(), "heads": [[0.0, 1.0]] * 4})
    with pytest.raises(PlanError, match="integers"):
        PruningPlan(G, [3] * 4, [[0]] * 4)  # a layer must be a list of ids


def test_integer_ids_of_numpy_and_torch_are_accepted():
    import numpy as np

    plan = PruningPlan(G, [np.array([2, 0]), torch.tensor([1]), [np.int64(5)], range(3)], [torch.arange(4)] * 4)
    assert plan.heads == [[0, 2], [1], [5], [0, 1, 2]] and plan.neurons == [[0, 1, 2, 3]] * 4
    assert all(type(i) is int for h in plan.heads + plan.neurons for i in h)


@pytest.mark.parametrize(
    "option, match",
    [
        ({"min_heads_per_layer": "1"}, "min_heads_per_layer"),
        ({"min_heads_per_layer": 1.0}, "min_heads_per_layer"),
        ({"min_heads_per_layer": 7}, "more than the 6 heads"),
        ({"ffn_multiple_of": 0}, "ffn_multiple_of"),
        ({"ffn_multiple_of": "64"}, "ffn_multiple_of"),
    ],
)
def test_bad_options_are_refused_clearly(option, match):
    with pytest.raises(PlanError, match=match):
        PruningPlan.from_scores(scores(), head_sparsity=0.5, **option)


@pytest.mark.parametrize("seq_len", [0, -5, 1.5])
def test_flops_at_a_non_positive_sequence_length_are_refused(seq_len):
    with pytest.raises(PlanError, match="seq_len"):
        PruningPlan.from_scores(scores(), flops_budget=0.5, seq_len=seq_len)
    plan = PruningPlan.full(G)
    with pytest.raises(PlanError, match="seq_len"):
        plan.block_flops(seq_len)
    with pytest.raises(PlanError, match="seq_len"):
        plan.flops_removed(seq_len)


def test_budgets_cost_units_through_the_family_adapter():
    # The geometry's family answers; an unknown family cannot be costed, but still makes count-based plans.
    from hf_gradprune import UnsupportedModelError

    toy = Geometry("toy", num_layers=4, num_heads=6, head_dim=8, hidden_size=48, intermediate_size=40)
    s = scores(geometry=toy)
    assert PruningPlan.from_scores(s, head_sparsity=0.5).num_heads == 12
    with pytest.raises(UnsupportedModelError, match="toy"):
        PruningPlan.from_scores(s, flops_budget=0.5)


def test_numpy_numbers_are_accepted_as_options_and_targets():
    import numpy as np

    from hf_gradprune.planning.validation import validate_options, validate_targets

    validate_targets(head_sparsity=np.float32(0.5), ffn_sparsity=np.float64(0.25))
    validate_options(min_heads_per_layer=np.int64(1), ffn_multiple_of=np.int32(8), seq_len=np.int64(128), num_heads=4)
    with pytest.raises(PlanError, match="min_heads_per_layer"):
        validate_options(min_heads_per_layer=np.float64(1.0))
    with pytest.raises(PlanError, match="head_sparsity"):
        validate_targets(head_sparsity=np.bool_(True))


# ---------------------------------------------------------------------- budget split (issue 12 §1)
def _ranked_heads(s, top):
    ranked = sorted(((v.item(), layer, i) for layer, t in enumerate(s.heads) for i, v in enumerate(t)), reverse=True)
    return {(layer, i) for _, layer, i in ranked[:top]}


@pytest.mark.parametrize("budget", [0.1, 0.3])
@pytest.mark.parametrize("k", [0, 5, 13, 24])
def test_heads_kept_keeps_the_best_heads_then_the_best_neurons(budget, k):
    s = scores()
    plan = PruningPlan.from_scores(s, flops_budget=budget, heads_kept=k, ffn_multiple_of=1)
    assert plan.num_heads == k
    assert {(layer, i) for layer, h in enumerate(plan.heads) for i in h} == _ranked_heads(s, k)
    removed = plan.flops_removed()
    values = [(v.item(), i in plan.neurons[layer]) for layer, t in enumerate(s.neurons) for i, v in enumerate(t)]
    kept, gone = [v for v, k in values if k], [v for v, k in values if not k]
    if not gone:  # the heads removed meet the budget alone: no neuron goes
        assert removed >= budget
    elif plan.meta["budget_met"]:
        one_neuron = 2 * 2 * G.hidden_size / (PruningPlan.full(G).block_flops() / 128)  # per-token share
        assert budget <= removed + 1e-9 < budget + one_neuron
        # the neurons kept are the most important ones, ranked among neurons only
        assert kept and max(gone) <= min(kept)
    else:  # the heads kept alone cost more than the budget leaves: every neuron goes, and the plan says so
        assert plan.num_neurons == 0 and removed < budget
    assert plan.meta["heads_kept"] == k and plan.meta["budget_split"] == "heads_kept"


def test_heads_kept_beyond_the_budget_is_recorded_not_hidden():
    plan = PruningPlan.from_scores(scores(), flops_budget=0.5, heads_kept=24)  # heads are ~85% of the FLOPs
    assert plan.num_heads == 24 and plan.num_neurons == 0 and plan.meta["budget_met"] is False
    assert PruningPlan.from_scores(scores(), flops_budget=0.5, heads_kept=8).meta["budget_met"] is True


def test_heads_kept_per_layer_spreads_heads_evenly_and_honours_min_heads():
    s = scores()
    plan = PruningPlan.from_scores(s, params_budget=0.4, heads_kept=10, ranking="per_layer", ffn_multiple_of=1)
    assert sorted(len(h) for h in plan.heads) == [2, 2, 3, 3]
    for layer, h in enumerate(plan.heads):
        assert set(h) == set(s.heads[layer].topk(len(h)).indices.tolist())
    assert max(len(n) for n in plan.neurons) - min(len(n) for n in plan.neurons) <= 1
    s.heads[2] = s.heads[2] * 1e-3
    plan = PruningPlan.from_scores(s, flops_budget=0.4, heads_kept=6, min_heads_per_layer=1)
    assert plan.num_heads == 6 and all(len(h) >= 1 for h in plan.heads)
    with pytest.raises(PlanError, match="fewer than min_heads_per_layer"):
        PruningPlan.from_scores(s, flops_budget=0.4, heads_kept=7, min_heads_per_layer=2)  # floor: 8
    guarded = PruningPlan.from_scores(s, flops_budget=0.4, heads_kept=12, min_heads_per_layer=1)
    assert guarded.num_heads == 12 and len(guarded.heads[2]) == 1


def test_heads_kept_under_grouped_query_attention_rounds_to_slices():
    gqa = Geometry(
        "llama", num_layers=2, num_heads=8, head_dim=8, hidden_size=32, intermediate_size=40, num_key_value_heads=2
    )
    s = scores(geometry=gqa)
    for k, realised in ((6, 6), (7, 8), (5, 6), (0, 0)):  # a slice: one head of each of the 2 groups; ties keep
        plan = PruningPlan.from_scores(s, flops_budget=0.3, heads_kept=k)
        assert plan.num_heads == realised
    s.groups = [torch.rand(2, generator=torch.Generator().manual_seed(layer)) for layer in range(2)]
    for k, realised in ((5, 4), (6, 8)):  # whole groups of 4 query heads
        plan = PruningPlan.from_scores(s, flops_budget=0.3, heads_kept=k, attention_unit="kv_group")
        assert plan.num_heads == realised and plan.num_kv_heads == realised // 4


@pytest.mark.parametrize("kw", [dict(heads_kept=9), dict(budget_split="normalized"), dict(budget_split="ratio")])
@pytest.mark.parametrize("ranking", ["global", "per_layer"])
def test_heads_kept_and_normalized_do_not_depend_on_the_scale_of_head_scores(kw, ranking):
    plans = []
    for factor in (1.0, 1000.0, 1e-3):  # 1e-3: Taylor's imbalance, heads look cheap per FLOP
        s = scores()
        s.heads = [h * factor for h in s.heads]
        plans.append(PruningPlan.from_scores(s, flops_budget=0.4, ranking=ranking, **kw))
    assert all(p.meta["budget_met"] for p in plans)
    shapes = {(str(p.heads), str(p.neurons)) for p in plans}
    if kw.get("budget_split") == "ratio":  # the greedy by score per FLOP is scale-bound: the test can tell
        assert len(shapes) > 1 and plans[2].num_heads < plans[1].num_heads
    else:
        assert len(shapes) == 1


def test_normalized_split_compares_each_unit_with_its_own_kind():
    s = scores()  # neurons' scores ~1/100 of heads': "ratio" removes neurons first, "normalized" mixes kinds
    ratio = PruningPlan.from_scores(s, flops_budget=0.3, budget_split="ratio")
    norm = PruningPlan.from_scores(s, flops_budget=0.3, budget_split="normalized")
    assert norm.meta["budget_split"] == "normalized" and norm.meta["budget_met"]
    assert ratio.num_heads > norm.num_heads
    assert norm.num_heads < 24 and norm.num_neurons > 0
    assert 0.3 <= norm.flops_removed() + 1e-9
    default = PruningPlan.from_scores(s, flops_budget=0.3)  # normalized is the default split (measured best)
    assert default.meta["budget_split"] == "normalized" and default.heads == norm.heads
    assert ratio.meta["budget_split"] == "ratio"


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(head_sparsity=0.5, heads_kept=3), "give one of those budgets"),
        (dict(flops_budget=0.5, heads_kept=-1), "heads_kept must be an integer"),
        (dict(flops_budget=0.5, heads_kept=2.0), "heads_kept must be an integer"),
        (dict(flops_budget=0.5, heads_kept=25), "more than the 24 heads"),
        (dict(flops_budget=0.5, budget_split="even"), "budget_split must be one of"),
        (dict(head_sparsity=0.5, budget_split="normalized"), "give one"),
        (dict(flops_budget=0.5, heads_kept=3, uniform=True), "uniform=True"),
        (dict(flops_budget=0.5, heads_kept=3, budget_split="normalized"), "leave budget_split"),
    ],
)
def test_bad_budget_split_options_are_refused_clearly(kw, match):
    with pytest.raises(PlanError, match=match):
        PruningPlan.from_scores(scores(), **kw)


# ---------------------------------------------------------------------- GPU-friendly widths by default (issue 19)
# Wide FFNs (1536, a multiple of 64), some layers' neurons worth more than others' so global plans are uneven.
W = Geometry("bert", num_layers=4, num_heads=8, head_dim=32, hidden_size=256, intermediate_size=1536)


def wide_scores(seed=0, layer_scale=(1.0, 3.0, 0.5, 1.5)):
    s = scores(seed=seed, geometry=W)
    s.neurons = [t * f for t, f in zip(s.neurons, layer_scale)]
    return s


def _share_of_one_neuron(kind):
    """The fraction of the wide model's block FLOPs (``"flops"``) or parameters one neuron is."""
    full = PruningPlan.full(W)
    one_less = PruningPlan(W, full.heads, [list(range(W.intermediate_size - 1))] + full.neurons[1:])
    return one_less.flops_removed() if kind == "flops" else one_less.params_removed()


def _allowed(plan, live=W.intermediate_size, multiple=64):
    return all(len(n) % multiple == 0 or len(n) == live for n in plan.neurons)


def test_the_default_multiple_is_64_everywhere_a_plan_is_made():
    import inspect

    from hf_gradprune import GradPruneConfig
    from hf_gradprune.planning.validation import DEFAULT_FFN_MULTIPLE_OF, validate_options

    assert DEFAULT_FFN_MULTIPLE_OF == 64
    for fn in (PruningPlan.from_scores, validate_options):
        assert inspect.signature(fn).parameters["ffn_multiple_of"].default == DEFAULT_FFN_MULTIPLE_OF
    assert GradPruneConfig(output_dir="unused", head_sparsity=0.5).ffn_multiple_of == DEFAULT_FFN_MULTIPLE_OF
    plan = PruningPlan.from_scores(wide_scores(), ffn_sparsity=0.3)
    assert plan.meta["ffn_multiple_of"] == 64 and _allowed(plan)


@pytest.mark.parametrize(
    "target",
    [
        {"ffn_sparsity": 0.3},
        {"ffn_sparsity": 0.3, "ranking": "per_layer"},
        {"head_sparsity": 0.5, "ffn_sparsity": 0.55},
        {"flops_budget": 0.4},
        {"flops_budget": 0.4, "ranking": "per_layer"},
        {"params_budget": 0.35},
        {"flops_budget": 0.5, "heads_kept": 12},
        {"flops_budget": 0.5, "balanced": True},
        {"flops_budget": 0.5, "uniform": True},
        {"ffn_sparsity": 0.3, "uniform": True},
    ],
    ids=lambda t: ",".join(f"{k}={v}" for k, v in t.items()),
)
def test_default_plans_keep_every_width_a_multiple_of_64_or_the_live_width(target):
    plan = PruningPlan.from_scores(wide_scores(), **target)
    assert _allowed(plan), [len(n) for n in plan.neurons]
    # and after an earlier prune left odd live widths, those widths stay allowed
    live = [list(range(1000)), list(range(1536)), list(range(0, 1536, 2)), list(range(77))]
    s = wide_scores()
    s.neurons = [t[torch.tensor(ids)] for t, ids in zip(s.neurons, live)]
    s.neuron_ids = live
    if not target.get("uniform"):  # uniform needs layers alike
        again = PruningPlan.from_scores(s, **{**target, "ffn_sparsity": 0.4} if "ffn_sparsity" in target else target)
        for kept, ids in zip(again.neurons, live):
            assert set(kept) <= set(ids) and (len(kept) % 64 == 0 or len(kept) == len(ids))


@pytest.mark.parametrize("ranking", ["global", "per_layer"])
@pytest.mark.parametrize("sparsity", [0.1, 0.33, 0.52, 0.9])
def test_rounded_ffn_sparsity_removes_at_least_what_was_asked(ranking, sparsity):
    s = wide_scores()
    plan = PruningPlan.from_scores(s, ffn_sparsity=sparsity, ranking=ranking)
    asked = W.num_layers * W.intermediate_size - math.floor(sparsity * W.num_layers * W.intermediate_size + 0.5)
    assert asked - 64 < plan.num_neurons <= asked and _allowed(plan)
    widths = [len(n) for n in plan.neurons]
    if ranking == "per_layer":  # every layer near the same width: within one block of each other
        assert max(widths) - min(widths) <= 64, widths
    else:  # by score: the layer whose neurons matter most keeps the most
        assert widths[1] == max(widths) and widths[2] == min(widths), widths
    for layer, kept in enumerate(plan.neurons):
        assert set(kept) == set(s.neurons[layer].topk(len(kept)).indices.tolist())


@pytest.mark.parametrize("ranking", ["global", "per_layer"])
@pytest.mark.parametrize("kind", ["flops", "params"])
@pytest.mark.parametrize("budget", [0.2, 0.37, 0.55, 0.8])
def test_rounded_budgets_are_met_and_not_overshot_by_more_than_a_block(ranking, kind, budget):
    plan = PruningPlan.from_scores(wide_scores(), **{f"{kind}_budget": budget}, ranking=ranking)
    removed = plan.flops_removed() if kind == "flops" else plan.params_removed()
    assert plan.meta["budget_met"] is True and removed >= budget - 1e-9 and _allowed(plan)
    if plan.num_neurons < W.num_layers * W.intermediate_size:  # the neurons fill what the heads leave
        assert removed < budget + 65 * _share_of_one_neuron(kind)
    if ranking == "per_layer":  # each layer within one block of its own unrounded width
        plain = PruningPlan.from_scores(wide_scores(), **{f"{kind}_budget": budget}, ranking=ranking, ffn_multiple_of=1)
        assert plain.heads == plan.heads
        assert all(abs(len(a) - len(b)) < 64 for a, b in zip(plan.neurons, plain.neurons))


def test_rounded_heads_kept_meets_the_budget():
    for budget in (0.3, 0.5, 0.7):
        plan = PruningPlan.from_scores(wide_scores(), flops_budget=budget, heads_kept=10)
        assert plan.num_heads == 10 and plan.meta["budget_met"] and _allowed(plan)
        assert budget <= plan.flops_removed() + 1e-9 < budget + 65 * _share_of_one_neuron("flops")


@pytest.mark.parametrize("target", [{"flops_budget": 0.45}, {"params_budget": 0.6}, {"ffn_sparsity": 0.3}])
def test_uniform_takes_the_widest_multiple_that_meets_the_target(target):
    plan = PruningPlan.from_scores(wide_scores(), uniform=True, **target)
    widths = {len(n) for n in plan.neurons}
    assert plan.is_uniform() and len(widths) == 1 and widths.pop() % 64 == 0
    if "ffn_sparsity" in target:
        assert plan.num_neurons <= (1 - target["ffn_sparsity"]) * W.num_layers * W.intermediate_size
    else:
        assert plan.meta["budget_met"]
    unrounded = PruningPlan.from_scores(wide_scores(), uniform=True, ffn_multiple_of=1, **target)
    if plan.num_heads == unrounded.num_heads:  # the same head count: the width is the unrounded one rounded down
        assert len(plan.neurons[0]) == len(unrounded.neurons[0]) // 64 * 64


def test_ffn_multiple_of_1_gives_the_unrounded_plan():
    s = wide_scores()
    plan = PruningPlan.from_scores(s, ffn_sparsity=0.3, ffn_multiple_of=1)
    total = W.num_layers * W.intermediate_size
    assert plan.num_neurons == total - round(0.3 * total) and not _allowed(plan)  # odd widths, exactly the count
    ranked = sorted(((v.item(), layer, i) for layer, t in enumerate(s.neurons) for i, v in enumerate(t)), reverse=True)
    assert {(layer, i) for _, layer, i in ranked[: plan.num_neurons]} == {
        (layer, i) for layer, n in enumerate(plan.neurons) for i in n
    }
    budget = PruningPlan.from_scores(s, flops_budget=0.4, ffn_multiple_of=1)
    assert 0.4 <= budget.flops_removed() + 1e-9 < 0.4 + 1.01 * _share_of_one_neuron("flops") or budget.num_neurons == 0
    assert budget.meta["ffn_multiple_of"] == 1
