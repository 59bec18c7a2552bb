"""Issue 22: reconstruction streams its dense reference one layer at a time, costs a few layer passes per
layer, and keeps its work where the activations are."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from test_oneshot import calib, make, snapshot, unchanged
from test_reconstruct import loader, pruned_pair

from hf_gradprune.oneshot import reference as reference_module
from hf_gradprune.oneshot.prune import prune_oneshot as _prune_oneshot
from hf_gradprune.oneshot.reconstruct import ReconstructionError, reconstruct
from hf_gradprune.oneshot.reference import DenseLayers, DenseReferenceError
from hf_gradprune.state import pruning_state

# These tests pin the two steps as they were before the held-out choice (reconstruction on, rearrangement off) to test
# what they test on a few batches; the choice has its own tests (tests/test_oneshot_select.py). A call may override.
prune_oneshot = functools.partial(_prune_oneshot, reconstruct=True, rearrange=False)


def same_parameters(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("where", ["cpu", "disk", "device"])
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_a_streamed_reference_gives_the_same_weights_as_a_resident_dense_model(kind, where, tmp_path):
    model, dense = pruned_pair(kind)
    batches = loader(kind)
    resident = copy.deepcopy(model)
    reconstruct(resident, dense, batches, bias_compensation=kind != "llama")
    dense_before = snapshot(dense)
    layers = DenseLayers.capture(dense, where, folder=tmp_path)
    files = list(tmp_path.rglob("*.safetensors"))
    assert (len(files) == pruning_state(dense).geometry.num_layers) == (where == "disk")
    streamed = copy.deepcopy(model)
    report = reconstruct(streamed, layers, batches, bias_compensation=kind != "llama")
    assert report.reference == where
    assert same_parameters(resident, streamed)  # the same layers on the same inputs: bit for bit
    assert unchanged(dense, dense_before)
    layers.close()
    assert list(tmp_path.iterdir()) == []  # what it wrote is gone, and only that
    with pytest.raises(ReconstructionError, match="closed"):
        reconstruct(copy.deepcopy(model), layers, batches)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_reusing_the_ffn_inputs_equals_running_the_layer_again(kind):
    """Pre-norm families: the layer's output after the FFN's fold is its pass's output plus the fold's change."""
    model, dense = pruned_pair(kind, dtype=torch.float64)
    batches = loader(kind, left_pad=False)
    again, reused = copy.deepcopy(model), copy.deepcopy(model)
    a = reconstruct(again, dense, batches, reuse_ffn_inputs=False, bias_compensation=kind == "gpt2")
    b = reconstruct(reused, dense, batches, reuse_ffn_inputs=True, bias_compensation=kind == "gpt2")
    assert not a.reused_ffn_inputs and b.reused_ffn_inputs
    assert any(r.units and not r.skipped for r in b.sublayers)
    for (name, pa), pb in zip(again.named_parameters(), reused.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-12, rtol=1e-10, msg=name)
    for ra, rb in zip(a.sublayers, b.sublayers):
        assert ra.error_after == pytest.approx(rb.error_after, rel=1e-9, nan_ok=True)
    # post-norm (BERT): the FFN's fold changes what the LayerNorm reads, so the layer runs again
    model, dense = pruned_pair("bert", dtype=torch.float64)
    assert not reconstruct(model, dense, loader("bert"), reuse_ffn_inputs=True).reused_ffn_inputs
    with pytest.raises(ReconstructionError, match="reuse_ffn_inputs"):
        reconstruct(model, dense, loader("bert"), reuse_ffn_inputs="yes")


def _count_calls(modules):
    counts = [0] * len(modules)
    handles = []
    for i, m in enumerate(modules):

        def hook(module, args, i=i):
            counts[i] += 1

        handles.append(m.register_forward_pre_hook(hook))
    return counts, handles


@pytest.mark.parametrize("reuse", [True, False])
def test_each_layer_runs_a_fixed_number_of_passes(reuse):
    """The cost claim of reconstruct's docstring, counted: per batch, the recording forward runs the first layer
    only; then each dense layer runs once, and each pruned FFN once (twice without reusing its inputs)."""
    model, dense = pruned_pair("llama")
    state, t_state = pruning_state(model), pruning_state(dense)
    batches = loader("llama", n=3)
    mlps = [layer.mlp for layer in state.layers]
    s_counts, s_handles = _count_calls(mlps)
    t_counts, t_handles = _count_calls([layer.mlp for layer in t_state.layers])
    a_counts, a_handles = _count_calls([layer.self_attn.q_proj for layer in state.layers])
    try:
        reconstruct(model, dense, batches, reuse_ffn_inputs=reuse)
    finally:
        for h in s_handles + t_handles + a_handles:
            h.remove()
    n = len(batches)
    # attention runs in its own pass; without reused activations again in the FFN's pass and in the layer's
    # pass after the FFN's fold; a layer with no FFN left runs once more after the attention's fold
    has_heads, has_ffn = [bool(i) for i in state.head_ids], [bool(i) for i in state.neuron_ids]
    attention = [((1 if reuse else 3) if ffn else 2) * n for ffn in has_ffn]
    attention[0] += n  # the recording forward
    assert [c for c, h in zip(a_counts, has_heads) if h] == [c for c, h in zip(attention, has_heads) if h]
    assert t_counts == [n] * len(mlps)
    pruned_ffn = [bool(ids) for ids in state.neuron_ids]
    # an FFN with no neuron left is an empty block, run once by the layer's pass after the fit
    expected = [(1 if reuse and has else 2 if has else 1) * n for has in pruned_ffn]
    expected[0] += n  # the recording forward runs the first layer
    assert s_counts == expected


def test_the_normal_equations_never_leave_the_device(monkeypatch):
    """Nothing is copied to the host (the H200 run spent 87% of its time there): ``Tensor.cpu`` is never called."""
    model, dense = pruned_pair("llama")

    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor was moved to the host")

    monkeypatch.setattr(torch.Tensor, "cpu", refuse)
    report = reconstruct(model, dense, loader("llama"))
    assert report.device == "cpu" and any(not r.skipped for r in report.sublayers if r.units)


def test_prune_oneshot_streams_the_reference_and_says_where(tmp_path):
    keep = tmp_path / "mine.txt"
    keep.write_text("not the run's")
    model = make("llama")
    _, report = prune_oneshot(
        model, calib("llama"), params_budget=0.3, seq_len=12, reference="disk", reference_folder=tmp_path
    )
    assert report.reference["where"] == "disk" and "asked" in report.reference["why"]
    assert report.reconstruction.reference == "disk"
    assert list(tmp_path.iterdir()) == [keep] and keep.read_text() == "not the run's"
    assert "reference" in report.seconds and "reference" in report.peak_memory
    # the same prune with the layers in host memory, and with the targets the scoring pass recorded (the default
    # on the CPU): the same model
    for where, why in (("cpu", "asked"), ("auto", "recorded by the scoring pass")):
        other = make("llama")
        _, again = prune_oneshot(other, calib("llama"), params_budget=0.3, seq_len=12, reference=where)
        assert why in again.reference["why"], again.reference
        assert ("reference" in again.seconds) == (where == "cpu")  # nothing is copied for recorded targets
        for (name, pa), pb in zip(model.named_parameters(), other.parameters()):
            torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=name)
    assert again.reference["where"] == "activations" and again.reconstruction.reference == "activations"


def test_auto_goes_to_disk_when_host_memory_would_not_hold_the_layers(monkeypatch):
    monkeypatch.setattr(reference_module, "available_host_bytes", lambda: 1024)
    model = make("gpt2")
    _, report = prune_oneshot(model, calib("gpt2"), params_budget=0.3, seq_len=12)
    # neither the recorded activations nor a copy of the layers fit in host memory
    assert report.reference["where"] == "disk" and "would not fit" in report.reference["why"]


def test_bad_reference_options_are_refused_before_any_change(tmp_path):
    model = make("bert")
    snap = snapshot(model)
    with pytest.raises(DenseReferenceError, match="reference must be one of"):
        prune_oneshot(model, calib("bert"), params_budget=0.3, reference="gpu")
    with pytest.raises(DenseReferenceError, match="not a directory"):
        prune_oneshot(model, calib("bert"), params_budget=0.3, reference="disk", reference_folder=tmp_path / "no")
    assert unchanged(model, snap)
    assert list(tmp_path.iterdir()) == []


def test_prune_oneshot_scores_in_micro_batches_and_hands_the_search_its_dense_losses():
    """The search reuses the scoring pass's per-batch losses (no dense forward of its own); micro-batched,
    checkpointed scoring gives the same plan and the same model."""
    whole, split = make("llama"), make("llama")
    _, a = prune_oneshot(whole, calib("llama"), params_budget=0.3, seq_len=12)
    _, b = prune_oneshot(
        split, calib("llama"), params_budget=0.3, seq_len=12, micro_batch_size=1, gradient_checkpointing=True
    )
    assert a.split["dense_loss_from"] == "given" and a.split["dense_forwards"] == 0
    assert a.plan.heads == b.plan.heads and a.plan.neurons == b.plan.neurons
    assert b.batches["score_forwards"] == 16  # 4 batches of 4 sequences, one at a time
    for (name, pa), pb in zip(whole.named_parameters(), split.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(Exception, match="loss_fn"):
        prune_oneshot(make("llama"), calib("llama"), params_budget=0.3, micro_batch_size=2, loss_fn=lambda m, b: 0)


@pytest.mark.parametrize("micro", [None, 1])
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_targets_recorded_while_scoring_equal_running_the_dense_layers(kind, micro):
    """Micro-batches are put back together, and a checkpointed layer's recompute records nothing twice."""
    from hf_gradprune.oneshot.reference import DenseTargets
    from hf_gradprune.oneshot.score_pass import score_calibration

    model, dense = pruned_pair(kind)
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in loader(kind)]
    by_layers = copy.deepcopy(model)
    reconstruct(by_layers, dense, batches)
    targets = DenseTargets(dense, len(batches))
    score_calibration(
        dense, batches, "fisher", micro_batch_size=micro, gradient_checkpointing=micro is not None, targets=targets
    )
    assert targets.complete
    recorded = copy.deepcopy(model)
    report = reconstruct(recorded, targets, batches)
    assert report.reference == "activations"
    for (name, pa), pb in zip(by_layers.named_parameters(), recorded.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=name)
    with pytest.raises(ReconstructionError, match="not those of these calibration batches"):
        reconstruct(copy.deepcopy(model), targets, batches[:2])
    with pytest.raises(ReconstructionError, match="bias_compensation"):
        reconstruct(copy.deepcopy(model), targets, batches, bias_compensation=True)


def test_recorded_targets_that_cannot_be_are_refused_before_any_change():
    model = make("gpt2")
    snap = snapshot(model)
    for kwargs, match in (
        ({"bias_compensation": True}, "bias_compensation"),
        ({"scoring_batches": 1, "reconstruct_batches": 2}, "raise scoring_batches"),
        ({"method": "magnitude"}, "no scoring pass"),
    ):
        with pytest.raises(DenseReferenceError, match=match):
            prune_oneshot(model, calib("gpt2"), params_budget=0.3, reference="activations", **kwargs)
    assert unchanged(model, snap)
