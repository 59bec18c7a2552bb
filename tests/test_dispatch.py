"""Models dispatched by Accelerate: offloaded weights are refused before any change; in-memory ones prune as usual."""

from __future__ import annotations

import copy
import functools
import hashlib

import pytest
import torch
from accelerate import cpu_offload, dispatch_model
from conftest import batch, make_bert
from test_llama import batch as llama_batch
from test_llama import make_decoder
from test_llama import uneven_plan as llama_uneven_plan
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_gradprune import PruningPlan, current_plan, load_pruned, prune_model
from hf_gradprune.dispatch import OffloadedModelError, check_in_memory, offloaded_modules
from hf_gradprune.oneshot.prune import prune_oneshot as _prune_oneshot

# These tests pin the two steps as they were before the held-out choice (reconstruction on, rearrangement off) to test
# what they test on a few batches; the choice has its own tests (tests/test_oneshot_select.py). A call may override.
prune_oneshot = functools.partial(_prune_oneshot, reconstruct=True, rearrange=False)


AUTO = {"llama": AutoModelForCausalLM, "bert": AutoModelForSequenceClassification}
# layers 1 and 2 (of 3) on disk, the rest in memory: the map a user writes to fit a model that is too big
OFFLOAD_MAP = {
    "llama": {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "disk",
        "model.norm": "cpu",
        "lm_head": "cpu",
    },
    "bert": {
        "bert.embeddings": "cpu",
        "bert.encoder.layer.0": "cpu",
        "bert.encoder.layer.1": "disk",
        "bert.encoder.layer.2": "disk",
        "bert.pooler": "cpu",
        "dropout": "cpu",
        "classifier": "cpu",
    },
}
# every weight in memory, on "devices" of their own: force_hooks puts Accelerate's hooks on as a multi-device map
# does (a map of one device gets none)
MEMORY_MAP = {
    "llama": {"model": "cpu", "lm_head": "cpu"},
    "bert": {"bert": "cpu", "dropout": "cpu", "classifier": "cpu"},
}


def make(kind):
    return make_decoder() if kind == "llama" else make_bert()


def calib(kind, n=4):
    return [llama_batch(seed=20 + i, size=4) if kind == "llama" else batch(kind, seed=20 + i, size=4) for i in range(n)]


def inputs(kind):
    return {k: v for k, v in calib(kind, 1)[0].items() if k != "labels"}


def hooks(module):
    hook = getattr(module, "_hf_hook", None)
    return [] if hook is None else list(getattr(hook, "hooks", None) or [hook])


def weights(model) -> dict:
    """Every parameter and buffer as the model computes with it: the module's own tensor, or the one its offload
    hook holds for it (read from the offload folder or weights map); with where it lives and its shape."""
    out = {}
    for name, module in model.named_modules():
        stored = next((h.weights_map for h in hooks(module) if getattr(h, "offload", False)), None)
        for key, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            value = stored[key] if t.is_meta and stored is not None else t
            out[f"{name}.{key}"] = (t.device.type, t.shape, value.detach().clone())
    return out


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k][:2] == b[k][:2] and a[k][2].dtype == b[k][2].dtype and torch.equal(a[k][2], b[k][2]) for k in a
    )


def files(folder) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def forward_counter(model):
    calls = []
    return calls, model.register_forward_pre_hook(lambda *_: calls.append(1))


def offloaded_from_pretrained(kind, tmp_path):
    """The user's path: a saved model loaded with a device_map that sends two of its layers to disk."""
    make(kind).save_pretrained(tmp_path / "model")
    model = AUTO[kind].from_pretrained(
        tmp_path / "model", device_map=OFFLOAD_MAP[kind], offload_folder=tmp_path / "offload"
    )
    assert any(p.is_meta for p in model.parameters())  # really offloaded
    return model


def assert_refused_unchanged(model, folder, call):
    """``call`` raises the offload refusal before the model runs, and leaves weights, config and files as they were."""
    before, saved, config = weights(model), files(folder), model.config.to_dict()
    with torch.no_grad():
        out = model(**inputs("llama" if "llama" in model.config.model_type else "bert")).logits
    calls, handle = forward_counter(model)
    with pytest.raises(OffloadedModelError, match="offloaded.*Nothing was changed.*device_map='cpu'") as err:
        call()
    handle.remove()
    assert not calls  # refused before scoring: no forward ran
    assert same_weights(before, weights(model))
    assert files(folder) == saved and model.config.to_dict() == config
    with torch.no_grad():
        assert torch.equal(out, model(**inputs("llama" if "llama" in model.config.model_type else "bert")).logits)
    return str(err.value)


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_a_model_with_layers_offloaded_to_disk_is_refused_before_any_change(kind, tmp_path):
    model = offloaded_from_pretrained(kind, tmp_path)
    prefix = "model.layers" if kind == "llama" else "bert.encoder.layer"
    message = assert_refused_unchanged(
        model, tmp_path, lambda: prune_oneshot(model, calib(kind), params_budget=0.2, seq_len=12)
    )
    assert message.startswith("prune_oneshot cannot prune")
    assert f"{prefix}.1 (disk), {prefix}.2 (disk) keep their weights" in message
    plan = current_plan(model)  # everything kept: a valid plan of this model, refused for where its weights are
    message = assert_refused_unchanged(model, tmp_path, lambda: prune_model(model, plan))
    assert message.startswith("prune_model cannot prune") and f"{prefix}.1 (disk)" in message


def test_a_model_dispatched_with_an_offload_dir_keeps_its_offload_files(tmp_path):
    model = dispatch_model(make("llama"), OFFLOAD_MAP["llama"], offload_dir=tmp_path / "offload")
    assert any(p.name.endswith(".dat") for p in (tmp_path / "offload").iterdir())  # Accelerate wrote the weights
    assert_refused_unchanged(model, tmp_path, lambda: prune_oneshot(model, calib("llama"), params_budget=0.2))


def test_weights_offloaded_to_a_weights_map_are_refused_by_module_name(tmp_path):
    model = cpu_offload(make("llama"), execution_device="cpu")  # no device map: the module names are given
    names = offloaded_modules(model)
    assert "model.layers.0.self_attn.q_proj" in names and "lm_head" in names
    message = assert_refused_unchanged(model, tmp_path, lambda: prune_model(model, current_plan(model)))
    assert "model.embed_tokens, model.layers.0.self_attn.q_proj," in message and "in all)" in message


# transformers warns on saving any map with a "cpu" entry, offloaded or not (here nothing is)
@pytest.mark.filterwarnings("ignore:Attempting to save a model with offloaded modules")
@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_a_dispatched_model_with_every_weight_in_memory_prunes_as_the_undispatched_one(kind, tmp_path):
    plain, dispatched = make(kind), dispatch_model(make(kind), MEMORY_MAP[kind], force_hooks=True)
    hooked = sum(bool(hooks(m)) for m in dispatched.modules())
    assert hooked and not offloaded_modules(dispatched)
    _, want = prune_oneshot(plain, calib(kind, 2), params_budget=0.2, seq_len=12)
    _, got = prune_oneshot(dispatched, calib(kind, 2), params_budget=0.2, seq_len=12)
    assert got.reconstruction is not None and got.split is not None  # scored, searched, pruned, reconstructed
    assert (got.plan.heads, got.plan.neurons) == (want.plan.heads, want.plan.neurons)
    assert got.plan.params_removed() >= 0.2 - 1e-6
    assert same_weights(weights(plain), weights(dispatched))
    assert sum(bool(hooks(m)) for m in dispatched.modules()) == hooked  # the cut kept every module and its hook
    x = inputs(kind)
    with torch.no_grad():
        assert torch.equal(plain(**x).logits, dispatched(**x).logits)
    # then the advice of the refusal: save the pruned model, and load it (here with layers on disk) for inference
    dispatched.save_pretrained(tmp_path / "pruned")
    reloaded = load_pruned(tmp_path / "pruned", device_map=OFFLOAD_MAP[kind], offload_folder=tmp_path / "offload")
    assert offloaded_modules(reloaded)
    with torch.no_grad():
        out, ref = reloaded(**x).logits, plain(**x).logits
    if kind == "llama":  # padded positions differ between eager (the test model) and sdpa (the reload): not compared
        out, ref = out[x["attention_mask"].bool()], ref[x["attention_mask"].bool()]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("zero_layer", [0, 1])
def test_prune_model_cuts_a_hooked_model_as_a_plain_one_headless_layers_included(zero_layer):
    plain = make("llama")
    dispatched = dispatch_model(copy.deepcopy(plain), MEMORY_MAP["llama"], force_hooks=True)
    for model in (plain, dispatched):
        prune_model(model, llama_uneven_plan(model, zero_layer))
    x = inputs("llama")
    with torch.no_grad():
        assert torch.equal(plain(**x).logits, dispatched(**x).logits)


def test_a_model_without_weights_is_refused_where_weights_are_read_and_cut_where_shapes_are_enough():
    model = make("llama").to("meta")
    with pytest.raises(OffloadedModelError, match="parameters are on the meta device.*from_pretrained"):
        check_in_memory(model, "prune_oneshot", needs_weights=True)
    with pytest.raises(OffloadedModelError, match="prune_oneshot needs the model's weights"):
        prune_oneshot(model, calib("llama"), params_budget=0.2, seq_len=12)
    check_in_memory(model, "prune_model")  # a meta skeleton has no offload: prune_model cuts its shapes
    plan = current_plan(model)
    prune_model(model, PruningPlan(plan.geometry, plan.heads, [list(range(8))] * 3))
    assert model.model.layers[2].mlp.down_proj.weight.shape == (32, 8)
