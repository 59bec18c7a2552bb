import copy

import pytest
import torch
from conftest import batch, make, uneven_plan

from hf_gradprune import PlanError, PruningPlan, current_plan, prune_model
from hf_gradprune.state import pruning_state


@torch.no_grad()
def zeroed_reference(model, plan):
    """The unpruned model with the plan's dropped units zeroed, written independently of the library:
    a dropped head's columns (BERT) / rows (GPT-2 Conv1D) of the attention output projection and a
    dropped neuron's of the FFN output projection are set to zero."""
    ref = copy.deepcopy(model)
    d = plan.geometry.head_dim
    if ref.config.model_type == "gpt2":
        blocks = [(b.attn.c_proj.weight, b.mlp.c_proj.weight, 0) for b in ref.transformer.h]
    else:
        blocks = [(lay.attention.output.dense.weight, lay.output.dense.weight, 1) for lay in ref.bert.encoder.layer]
    for layer, (attn_w, ffn_w, dim) in enumerate(blocks):
        for h in set(range(plan.geometry.num_heads)) - set(plan.heads[layer]):
            attn_w.narrow(dim, h * d, d).zero_()
        for n in set(range(plan.geometry.intermediate_size)) - set(plan.neurons[layer]):
            ffn_w.narrow(dim, n, 1).zero_()
    return ref


def logits(model, inputs):
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("zero_layer", [0, 1])
def test_pruned_equals_zeroed_reference(family, zero_layer, attn):
    model = make(family, attn_implementation=attn)
    assert model.config._attn_implementation == attn
    plan = uneven_plan(model, zero_layer=zero_layer)
    ref = zeroed_reference(model, plan)
    inputs = batch(family)
    prune_model(model, plan)
    torch.testing.assert_close(logits(model, inputs), logits(ref, inputs), atol=1e-5, rtol=0)
    # the shapes really shrank
    state = pruning_state(model)
    layers = state.adapter.layers(model)
    assert [state.adapter.num_heads(lay) for lay in layers] == [len(h) for h in plan.heads]
    assert [state.adapter.ffn_width(lay) for lay in layers] == [len(n) for n in plan.neurons]
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in ref.parameters())


def test_layer_without_heads_or_neurons_runs_and_trains(family):
    model = make(family)
    g = pruning_state(model).geometry
    plan = PruningPlan(g, [[], [0], [1, 2]], [[], list(range(10)), [3]])
    ref = zeroed_reference(model, plan)
    inputs = batch(family)
    prune_model(model, plan)
    torch.testing.assert_close(logits(model, inputs), logits(ref, inputs), atol=1e-5, rtol=0)
    model.train()
    model(**inputs).loss.backward()
    # Every trainable parameter gets a gradient, empty ones too: DDP fails on one that gets none.
    no_grad = {n for n, p in model.named_parameters() if p.grad is None and p.requires_grad}
    assert not no_grad
    # The pre-norms that fed only the emptied GPT-2 blocks are frozen (nothing reaches them), and so are the
    # (empty) parameters an emptied block no longer reads.
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad and p.numel()}
    expected = (
        {f"transformer.h.0.ln_{i}.{w}" for i in (1, 2) for w in ("weight", "bias")} if family == "gpt2" else set()
    )
    assert frozen == expected


def test_gpt2_generate_with_zero_head_layer():
    model = make("gpt2")
    plan = uneven_plan(model, zero_layer=1)
    ref = zeroed_reference(model, plan)
    prune_model(model, plan)
    prompt = batch("gpt2", pad=False, size=1, length=5)["input_ids"]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, **kw), ref.generate(prompt, **kw))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_surgery_keeps_dtype(family, dtype):
    model = make(family).to(dtype)
    plan = uneven_plan(model)
    ref = zeroed_reference(model, plan)
    inputs = batch(family)
    prune_model(model, plan)
    assert {p.dtype for p in model.parameters()} == {dtype}
    torch.testing.assert_close(logits(model, inputs).float(), logits(ref, inputs).float(), atol=5e-2, rtol=5e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_surgery_on_cuda(family, dtype):
    model = make(family).to("cuda", dtype)
    plan = uneven_plan(model)
    ref = zeroed_reference(model, plan)
    inputs = {k: v.cuda() for k, v in batch(family).items()}
    prune_model(model, plan)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(logits(model, inputs).float(), logits(ref, inputs).float(), atol=tol, rtol=tol)


def test_plan_recorded_in_config_and_composes(family):
    model = make(family)
    g = pruning_state(model).geometry
    first = PruningPlan(g, [[0, 1, 3], [0, 1, 2, 3], [2, 3]], [list(range(1, 90)), list(range(96)), list(range(50))])
    second = PruningPlan(g, [[1, 3], [0, 2], [3]], [list(range(10, 80)), list(range(0, 96, 3)), list(range(0, 50, 2))])
    once = copy.deepcopy(model)
    inputs = batch(family)
    prune_model(model, first)
    prune_model(model, second)
    prune_model(once, second)  # the intersection, in one go (second keeps a subset of first)
    assert current_plan(model).heads == second.heads and current_plan(model).neurons == second.neurons
    assert model.config.gradprune["plan"]["heads"] == second.heads  # original indices, not positions
    assert len(model.config.gradprune["history"]) == 2
    torch.testing.assert_close(logits(model, inputs), logits(once, inputs), atol=1e-6, rtol=0)


def test_uniform_ffn_rewrites_config(family):
    model = make(family)
    g = pruning_state(model).geometry
    plan = PruningPlan(g, [list(range(4))] * 3, [list(range(0, 96, 2))] * 3)
    prune_model(model, plan)
    attr = "n_inner" if family == "gpt2" else "intermediate_size"
    assert getattr(model.config, attr) == 48
    assert model.config.gradprune["structure"] == {}


def _snapshot(model):
    return copy.deepcopy(model.config.to_dict()), {k: v.clone() for k, v in model.state_dict().items()}, type(model)


def _unchanged(model, snap):
    config, state, cls = snap
    assert type(model) is cls
    assert model.config.to_dict() == config
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


def test_plan_for_other_model_is_refused_and_model_unchanged(family):
    model = make(family)
    other = make(family, num_hidden_layers=2) if family == "bert" else make(family, n_layer=2)
    plan = PruningPlan.full(pruning_state(other).geometry)
    snap = _snapshot(model)
    with pytest.raises(PlanError, match="different model"):
        prune_model(model, plan)
    _unchanged(model, snap)


def test_restoring_a_pruned_unit_is_refused_and_model_unchanged(family):
    model = make(family)
    g = pruning_state(model).geometry
    prune_model(model, PruningPlan(g, [[0, 1], [0, 1], [0, 1]], [list(range(50))] * 3))
    snap = _snapshot(model)
    # layer 2 asks for head 3 (already gone); layers 0-1 are valid and must not be cut either.
    bad = PruningPlan(g, [[0], [1], [0, 3]], [list(range(20))] * 3)
    with pytest.raises(PlanError, match="already pruned"):
        prune_model(model, bad)
    _unchanged(model, snap)


def test_bad_plan_values_are_refused(family):
    g = pruning_state(make(family)).geometry
    with pytest.raises(PlanError, match="head ids"):
        PruningPlan(g, [[0, 9], [0], [0]], [[0]] * 3)
    with pytest.raises(PlanError, match="layers"):
        PruningPlan(g, [[0]], [[0]])


def test_roberta_family_is_supported():
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    model = RobertaForMaskedLM(
        RobertaConfig(
            vocab_size=97,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=96,
            max_position_embeddings=80,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    ).eval()
    plan = uneven_plan(model)
    ids = batch("bert")["input_ids"] + 2  # roberta reserves ids 0/1 for bos/pad
    with torch.no_grad():
        ref_layers = model.roberta.encoder.layer
        ref = copy.deepcopy(model)
        for layer, lay in enumerate(ref.roberta.encoder.layer):
            for h in set(range(4)) - set(plan.heads[layer]):
                lay.attention.output.dense.weight[:, h * 16 : (h + 1) * 16] = 0
            for n in set(range(96)) - set(plan.neurons[layer]):
                lay.output.dense.weight[:, n] = 0
        assert len(ref_layers) == 3
        prune_model(model, plan)
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- wrappers and late failures (issue 10, item 2)
def test_prune_through_torch_compile():
    model = make("bert")
    compiled = torch.compile(model, backend="eager")
    plan = uneven_plan(model)
    ref = zeroed_reference(model, plan)
    inputs = batch("bert")
    assert prune_model(compiled, plan) is compiled
    assert current_plan(compiled).heads == plan.heads and current_plan(model).neurons == plan.neurons
    assert type(model).__name__ == "GradPruneBertForSequenceClassification"
    torch.testing.assert_close(logits(compiled, inputs), logits(ref, inputs), atol=1e-5, rtol=0)


def test_distributed_style_wrappers_are_refused_before_any_cut():
    model = make("bert")
    wrapped = torch.nn.DataParallel(model)  # a `.module` wrapper, like DDP and FSDP
    snap = _snapshot(model)
    with pytest.raises(TypeError, match="Prune the model inside it"):
        prune_model(wrapped, uneven_plan(model))
    _unchanged(model, snap)
    assert current_plan(wrapped).num_heads == 12  # reading through a wrapper is fine


def test_not_a_model_or_not_a_plan_is_a_type_error():
    model = make("bert")
    plan = uneven_plan(model)
    with pytest.raises(TypeError, match="PreTrainedModel"):
        prune_model({"config": model.config}, plan)
    with pytest.raises(TypeError, match="PreTrainedModel"):
        current_plan(model.state_dict())
    snap = _snapshot(model)
    with pytest.raises(TypeError, match="PruningPlan"):
        prune_model(model, plan.to_dict())
    _unchanged(model, snap)


def test_a_model_that_cannot_be_described_is_refused_before_any_cut(family):
    # A module a fresh model lacks (e.g. injected by another library) makes the saved structure impossible:
    # that must be found before the weights are cut, not after.
    model = make(family)
    pruning_state(model).layers[0].add_module("injected", torch.nn.Linear(2, 2))
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="injected"):
        prune_model(model, uneven_plan(model))
    _unchanged(model, snap)
