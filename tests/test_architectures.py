"""The adapter contract, checked on every registered family: costs against the real modules, the abstract
base, the registry, and the empty-block spec that adapters hand to the shipped modeling file."""

import copy

import pytest
import torch
from conftest import batch, make, uneven_plan
from torch.utils.flop_counter import FlopCounterMode

from hf_gradprune import FamilyAdapter, PruningPlan, current_plan, prune_model, register_adapter
from hf_gradprune.architectures import get_adapter, supported_model_types
from hf_gradprune.modeling_gradprune import EmptyBlock, make_block_empty, structure_of
from hf_gradprune.state import pruning_state
from hf_gradprune.units import UnitCosts


def _plans(model):
    """Full, uneven (a layer without heads) and one with a layer without FFN neurons."""
    g = pruning_state(model).geometry
    empty_ffn = PruningPlan(g, [[0, 1], [2], [0, 1, 2, 3]], [[], list(range(7)), list(range(1, 96, 3))])
    return [None, uneven_plan(model), empty_ffn]


def _block_modules(model):
    return pruning_state(model).layers


# ---------------------------------------------------------------------- cost model against the real model
@pytest.mark.parametrize("which", [0, 1, 2])
def test_params_cost_matches_the_real_blocks(family, which):
    model = make(family)
    plan = _plans(model)[which]
    if plan is not None:
        prune_model(model, plan)
    real = sum(p.numel() for block in _block_modules(model) for p in block.parameters())
    assert current_plan(model).block_params() == real


@pytest.mark.parametrize("which", [0, 1, 2])
def test_flops_cost_matches_a_flop_counter(family, which):
    # torch's FlopCounterMode counts matmul FLOPs (2 per multiply-add) per module, as the cost model does.
    model = make(family, attn_implementation="eager")
    plan = _plans(model)[which]
    if plan is not None:
        prune_model(model, plan)
    seq_len = 12
    ids = batch(family, size=1, length=seq_len, pad=False)["input_ids"]
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids)
    counts = counter.get_flop_counts()
    blocks = set(map(id, _block_modules(model)))
    names = [f"{type(model).__name__}.{n}" for n, m in model.named_modules() if id(m) in blocks]
    real = sum(sum(counts.get(name, {}).values()) for name in names)
    assert current_plan(model).block_flops(seq_len) == real


def test_plan_asks_the_adapter_for_costs(monkeypatch):
    adapter = get_adapter("bert")
    plan = PruningPlan.full(pruning_state(make("bert")).geometry)
    monkeypatch.setattr(adapter, "unit_costs", lambda g, seq_len: UnitCosts(10, 1, 100, 7.0, seq_len))
    assert plan.block_params() == 3 * 100 + 12 * 10 + 3 * 96 * 1
    assert plan.block_flops(5) == 5 * (12 * 7 + 3 * 96 * 5)


def test_cost_helper_counts_a_gated_block_without_biases():
    # The knobs a future family would use (here Llama's shape: no biases, gated FFN, RMSNorms).
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from hf_gradprune.architectures import Geometry, mha_ffn_costs

    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4)
    layer = LlamaDecoderLayer(config, 0)
    costs = mha_ffn_costs(Geometry("llama", 1, 4, 16, 64, 96), 8, bias=False, norm_params=2 * 64, ffn_matrices=3)
    real = sum(p.numel() for p in layer.parameters())
    assert real == costs.fixed_params + 4 * costs.head_params + 96 * costs.neuron_params


# ---------------------------------------------------------------------- abstract base and registry
def test_family_adapter_is_abstract():
    with pytest.raises(TypeError):
        FamilyAdapter()

    class Partial(FamilyAdapter):
        model_types = ("partial",)

        def geometry(self, config):
            return None

    with pytest.raises(TypeError, match="abstract"):
        Partial()
    for method in ("geometry", "layers", "unit_costs", "keep_heads", "keep_neurons", "head_sq_norms"):
        assert method in FamilyAdapter.__abstractmethods__


def test_register_adapter_refuses_a_duplicate_unless_replace():
    original = get_adapter("gpt2")
    twin = type(original)()
    with pytest.raises(ValueError, match="replace=True"):
        register_adapter(twin)
    assert get_adapter("gpt2") is original
    try:
        register_adapter(twin, replace=True)
        assert get_adapter("gpt2") is twin
    finally:
        register_adapter(original, replace=True)
    assert get_adapter("gpt2") is original


def test_register_adapter_refuses_bad_adapters():
    with pytest.raises(TypeError, match="FamilyAdapter"):
        register_adapter(object())
    bad = copy.copy(get_adapter("gpt2"))
    bad.model_types = "toy"  # a string, not a tuple: would register "t", "o", "y"
    with pytest.raises(ValueError, match="model_types"):
        register_adapter(bad)
    assert "t" not in supported_model_types()


# ---------------------------------------------------------------------- empty blocks
def test_empty_block_without_a_bias_outputs_zeros():
    model = make("gpt2")
    mlp = model.transformer.h[0].mlp
    make_block_empty(mlp, EmptyBlock(None, "dropout"))
    x = torch.randn(2, 5, 64)
    assert torch.equal(mlp(x), torch.zeros_like(x))
    spec = {"output": None, "dropout": "dropout", "extra_outputs": 0, "cache_head_dim": None}
    assert structure_of(model)["h.0.mlp"]["empty"] == spec


def test_empty_block_spec_names_are_checked_when_made():
    model = make("gpt2")
    mlp = model.transformer.h[0].mlp
    forward = mlp.forward
    with pytest.raises(AttributeError):
        make_block_empty(mlp, EmptyBlock("c_proj.no_such_bias"))
    with pytest.raises(AttributeError):
        make_block_empty(mlp, EmptyBlock("c_proj.bias", dropout="no_such_dropout"))
    assert mlp.forward == forward and structure_of(model) == {}


def test_structure_records_the_adapters_empty_spec_and_old_specs_still_load():
    model = make("gpt2")
    g = pruning_state(model).geometry
    prune_model(model, PruningPlan(g, [[], [0], [1, 2]], [list(range(9)), [], [3]]))
    structure = model.config.gradprune["structure"]
    assert structure["h.0.attn"]["empty"] == {
        "output": "c_proj.bias",
        "dropout": "resid_dropout",
        "extra_outputs": 1,
        "cache_head_dim": 16,
    }
    assert structure["h.1.mlp"]["empty"] == {
        "output": "c_proj.bias",
        "dropout": "dropout",
        "extra_outputs": 0,
        "cache_head_dim": None,
    }
    # Folders saved before EmptyBlock spelled the spec {"proj", "dropout", "tuple", "head_dim"}.
    old = copy.deepcopy(model.config)
    old.gradprune["structure"]["h.0.attn"]["empty"] = {
        "proj": "c_proj",
        "dropout": "resid_dropout",
        "tuple": True,
        "head_dim": 16,
    }
    old.gradprune["structure"]["h.1.mlp"]["empty"] = {"proj": "c_proj", "dropout": "dropout", "tuple": False}
    reloaded = type(model)(old).eval()
    reloaded.load_state_dict(model.state_dict())
    inputs = batch("gpt2", pad=False, size=1, length=5)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(reloaded.generate(inputs["input_ids"], **kw), model.generate(inputs["input_ids"], **kw))
    assert structure_of(reloaded) == structure  # a re-save writes the current spelling
