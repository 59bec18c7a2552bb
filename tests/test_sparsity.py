"""Weight sparsity's core: patterns, masks, the schedule, targets, and each weight score against an independent
computation."""

import itertools

import pytest
import torch
from conftest import batch, make, make_bert
from test_llama import make_decoder

from hf_gradprune.sparsity import (
    WeightMasks,
    WeightScorer,
    check_sparsity,
    check_targets,
    cubic_sparsity,
    masks_from_scores,
    parse_pattern,
    satisfies_nm,
    weight_targets,
)


# --- patterns -------------------------------------------------------------------------------------
def test_patterns_parse_and_refuse():
    assert parse_pattern("2:4").name == "2:4" and parse_pattern("4:8").implied_sparsity == 0.5
    assert parse_pattern("Unstructured").is_nm is False
    for bad in ("4:2", "0:4", "2-4", "", None, 2):
        with pytest.raises(ValueError, match="sparsity_pattern must be"):
            parse_pattern(bad)
    assert check_sparsity(None, "2:4") == (0.5, parse_pattern("2:4"))
    with pytest.raises(ValueError, match="must be 0.5"):
        check_sparsity(0.8, "2:4")
    for bad in (1.0, -0.1, True, "0.5", None):
        with pytest.raises(ValueError, match="weight_sparsity must be a fraction"):
            check_sparsity(bad, "unstructured")


def test_cubic_schedule_matches_zhu_gupta():
    assert cubic_sparsity(0, 10, 110, 0.9) == 0.0 and cubic_sparsity(200, 10, 110, 0.9) == 0.9
    for t in range(10, 110, 7):
        expected = 0.9 * (1 - (1 - (t - 10) / 100) ** 3)
        assert cubic_sparsity(t, 10, 110, 0.9) == pytest.approx(expected)
    values = [cubic_sparsity(t, 0, 50, 0.8) for t in range(60)]
    assert values == sorted(values)  # never decreases
    with pytest.raises(ValueError):
        cubic_sparsity(0, 10, 5, 0.5)


# --- masks against brute force ---------------------------------------------------------------------
def _scores(seed=0, shapes=((6, 8), (4, 12), (5, 8))):
    gen = torch.Generator().manual_seed(seed)
    return {f"m{i}": torch.randn(s, generator=gen) for i, s in enumerate(shapes)}


def test_unstructured_layer_and_row_masks_prune_exactly_the_lowest():
    scores = _scores()
    for name, keep in masks_from_scores(scores, 0.375, scope="layer").items():
        s = scores[name].reshape(-1)
        k = round(0.375 * s.numel())
        pruned = set(sorted(range(s.numel()), key=lambda i: (s[i].item(), i))[:k])
        assert {i for i in range(s.numel()) if not keep.reshape(-1)[i]} == pruned
    for name, keep in masks_from_scores(scores, 0.5, scope="row").items():
        for r in range(scores[name].shape[0]):
            row = scores[name][r]
            k = round(0.5 * len(row))
            assert (~keep[r]).sum() == k
            assert row[~keep[r]].max() <= row[keep[r]].min()


def test_global_mask_has_one_threshold_and_an_exact_count_with_ties():
    scores = _scores()
    scores["m1"][0, :5] = 0.0  # ties at the threshold
    scores["m2"][1, :5] = 0.0
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    k = int((flat < 0).sum()) + 3  # the threshold falls inside the ties
    sparsity = k / flat.numel()
    keep = masks_from_scores(scores, sparsity, scope="global")
    assert sum(int((~m).sum()) for m in keep.values()) == k
    pruned = torch.cat([s[~keep[n]] for n, s in scores.items()])
    kept = torch.cat([s[keep[n]] for n, s in scores.items()])
    assert pruned.max() <= kept.min()
    # the ties go in target order: the first three zeros of m1 are pruned, m2's kept
    assert (~keep["m1"][0, :3]).all() and keep["m1"][0, 3:5].all() and keep["m2"][1, :5].all()
    again = masks_from_scores(scores, sparsity, scope="global")
    assert all(torch.equal(keep[n], again[n]) for n in keep)  # deterministic


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_masks_keep_the_top_n_of_every_group_along_the_input(pattern):
    p = parse_pattern(pattern)
    scores = _scores(shapes=((6, 16), (3, 8)))
    keep = masks_from_scores(scores, p.implied_sparsity, pattern)
    for name, s in scores.items():
        for r, g in itertools.product(range(s.shape[0]), range(s.shape[1] // p.m)):
            group = s[r, g * p.m : (g + 1) * p.m]
            top = set(torch.argsort(group, descending=True, stable=True)[: p.n].tolist())
            assert {i for i in range(p.m) if keep[name][r, g * p.m + i]} == top
        assert satisfies_nm(s * keep[name], p.n, p.m)
    # a gradual schedule passes through intermediate counts per group, never past M - N
    mid = masks_from_scores(scores, 0.25, "2:4")
    assert all(int((~m).reshape(m.shape[0], -1, 4).sum(-1).max()) == 1 for m in mid.values())


def test_masks_refuse_bad_scores_and_shapes():
    with pytest.raises(ValueError, match="NaN"):
        masks_from_scores({"a": torch.tensor([[float("nan"), 1.0]])}, 0.5)
    with pytest.raises(ValueError, match="multiple of 4"):
        masks_from_scores({"a": torch.randn(2, 6)}, 0.5, "2:4")


# --- targets ----------------------------------------------------------------------------------------
def test_targets_are_the_block_matrices_in_every_family():
    bert = make_bert()
    names = [t.name for t in weight_targets(bert)]
    assert len(names) == 3 * 6 and "bert.encoder.layer.0.attention.self.query" in names
    assert not any("embeddings" in n or "classifier" in n or "pooler" in n for n in names)
    gpt2 = make("gpt2")
    targets = weight_targets(gpt2)
    assert [t.name.split(".", 3)[-1] for t in targets[:4]] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    fc = targets[2]
    assert fc.in_axis == 0 and fc.matrix.shape == (96, 64)  # Conv1D stores (in, out)
    llama = make_decoder()
    assert len(weight_targets(llama)) == 3 * 7
    extra = weight_targets(llama, extra_modules=["lm_head"])
    assert extra[-1].name == "lm_head" and extra[-1].layer is None
    with pytest.raises(ValueError, match="no module"):
        weight_targets(llama, extra_modules=["nope"])
    with pytest.warns(UserWarning, match="tied to transformer.wte"):  # GPT-2 ties its LM head to the embeddings
        weight_targets(gpt2, extra_modules=["lm_head"])
    with pytest.raises(ValueError, match="2:4"):
        check_targets(weight_targets(make_bert(intermediate_size=98)), "2:4")


# --- scores against independent computations ---------------------------------------------------------
def _inputs_of(model, target, data):
    """The target's inputs, [tokens, in], by an independent forward hook (padding rows dropped)."""
    seen = []
    handle = target.module.register_forward_hook(lambda m, a, o: seen.append(a[0].detach()))
    with torch.no_grad():
        model(**data)
    handle.remove()
    x = seen[0]
    return x[data["attention_mask"].bool()]


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_wanda_is_weight_magnitude_times_input_norm(kind):
    model, data = make(kind), batch(kind)
    scorer = WeightScorer(model, "wanda")
    with scorer, torch.no_grad():
        model(**data)
    scores = scorer.scores()
    for t in scorer.targets[:6]:
        x = _inputs_of(model, t, data)
        expected = t.matrix.detach().abs() * x.norm(dim=0)[None, :]
        torch.testing.assert_close(scores[t.name], expected, rtol=1e-5, atol=1e-6)


def _weight_grads(model, data):
    """dL/dW of every target by autograd on trainable weights: independent of the scorer's hooks."""
    targets = weight_targets(model)
    model.zero_grad()
    model(**data).loss.backward()
    out = {}
    for t in targets:
        g = t.module.weight.grad
        out[t.name] = (g if t.in_axis == 1 else g.t()).clone()
    model.zero_grad()
    return out


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_taylor_and_fisher_equal_explicit_weight_gradients(kind):
    model = make(kind)
    batches = [batch(kind, seed=s) for s in (1, 2)]
    grads = [_weight_grads(model, b) for b in batches]
    for method in ("taylor", "fisher"):
        scorer = WeightScorer(model, method)
        with scorer:
            for b in batches:
                model(**b).loss.backward()
        model.zero_grad()
        scores = scorer.scores()
        assert scorer.batches == 2
        for t in scorer.targets:
            w = t.matrix.detach()
            if method == "taylor":
                expected = sum((w * g[t.name]).abs() for g in grads)
            else:
                expected = 0.5 * w.square() * sum(g[t.name].square() for g in grads) / 2
            torch.testing.assert_close(scores[t.name], expected, rtol=1e-4, atol=1e-9)


def test_taylor_works_with_frozen_weights_and_checkpointing_counts_once():
    model = make_decoder()
    data = {"input_ids": torch.randint(3, 60, (2, 10))}
    data["labels"] = data["input_ids"]
    expected = WeightScorer(model, "taylor")
    with expected:
        model(**data).loss.backward()
    model.zero_grad()
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    scorer = WeightScorer(model, "taylor")
    with scorer:
        embeds = model.get_input_embeddings()(data["input_ids"]).requires_grad_()
        model(inputs_embeds=embeds, labels=data["labels"]).loss.backward()
    assert scorer.batches == 1
    for name, s in expected.scores().items():
        torch.testing.assert_close(scorer.scores()[name], s, rtol=1e-4, atol=1e-9)


def test_scorer_state_round_trips_and_reduces():
    model, data = make("bert"), batch("bert")
    scorer = WeightScorer(model, "fisher")
    with scorer:
        model(**data).loss.backward()
    other = WeightScorer(model, "fisher")
    other.load_state_dict(scorer.state_dict())
    assert all(torch.equal(a, other.scores()[n]) for n, a in scorer.scores().items())
    other.reduce_(lambda t: t * 2)  # two identical ranks summed
    assert other.batches == 2
    assert all(torch.allclose(a, other.scores()[n]) for n, a in scorer.scores().items())  # the mean is unchanged
    with pytest.raises(ValueError, match="no gradient"):
        WeightScorer(model, "taylor").scores()
    with pytest.raises(ValueError, match="weight_method"):
        WeightScorer(model, "movement")


# --- masks kept through training --------------------------------------------------------------------
def test_weight_masks_keep_pruned_weights_zero_through_adam():
    model, data = make("bert"), batch("bert")
    model.train()
    targets = weight_targets(model)
    scores = {t.name: t.matrix.detach().abs() for t in targets}
    masks = WeightMasks.from_scores(targets, scores, 0.7, scope="global")
    assert masks.sparsity == pytest.approx(0.7, abs=1e-3)
    masks.apply_(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(**data).loss.backward()
        masks.zero_grads_(model)
        opt.step()
        masks.apply_(model)
        masks.zero_optimizer_state_(model, opt)
        opt.zero_grad()
    for t in targets:
        keep = masks.masks[t.param_name]
        assert (t.module.weight[~keep] == 0).all() and (opt.state[t.module.weight]["exp_avg"][~keep] == 0).all()
        assert (t.module.weight[keep] != 0).all()
    again = WeightMasks({})
    again.load_state_dict(masks.state_dict())
    assert again.equal(masks) and WeightMasks.from_zeros(targets).equal(masks)


def test_gpt2_masks_are_in_the_parameter_layout():
    model = make("gpt2")
    targets = weight_targets(model)
    masks = WeightMasks.from_scores(targets, {t.name: t.matrix.detach().abs() for t in targets}, 0.5, "2:4")
    masks.apply_(model)
    for t in targets:
        assert satisfies_nm(t.matrix, 2, 4)  # grouped along the input axis, dim 0 of a Conv1D weight


def test_a_unit_cut_keeps_the_weight_sparsity_record_and_says_when_it_splits_nm_groups():
    from hf_gradprune import PruningPlan, prune_model
    from hf_gradprune.sparsity import matrix_sparsity, record_weight_sparsity, recorded_weight_sparsity
    from hf_gradprune.state import pruning_state

    model = make_bert()
    g = pruning_state(model).geometry
    targets = weight_targets(model)
    WeightMasks.from_scores(targets, {t.name: t.matrix.detach().abs() for t in targets}, 0.5, "2:4").apply_(model)
    record_weight_sparsity(model, targets, pattern="2:4", sparsity=0.5, method="magnitude", scope=None)
    heads = [[0, 1], [0, 1, 2, 3], [2]]
    prune_model(model, PruningPlan(g, heads, [list(range(96))] * 3))
    kept = recorded_weight_sparsity(model.config)
    assert kept["pattern"] == "2:4" and kept["measured"] == pytest.approx(0.5)  # whole heads keep every group
    prune_model(model, PruningPlan(g, heads, [list(range(1, 96)), list(range(96)), list(range(96))]))
    after = recorded_weight_sparsity(model.config)
    assert after["pattern"] == "unstructured"  # neuron 0 out of layer 0's down projection shifted its groups
    assert after["measured"] == pytest.approx(matrix_sparsity(weight_targets(model))["sparsity"], abs=1e-6)
