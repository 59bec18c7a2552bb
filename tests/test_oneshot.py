"""The retraining-free path in one call: every family, what it reports, and bad input refused before any change."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import batch, make_bert, make_gpt2
from test_llama import batch as llama_batch
from test_llama import make_decoder

from hf_gradprune import ImportanceScorer, PlanError, PruningPlan, current_plan, prune_model
from hf_gradprune.calibration import CalibrationError
from hf_gradprune.oneshot import prune_oneshot
from hf_gradprune.state import pruning_state


def calib(kind, n=4, labels=True):
    out = []
    for i in range(n):
        b = llama_batch(seed=20 + i, size=4) if kind == "llama" else batch(kind, seed=20 + i, size=4)
        if not labels:
            b.pop("labels", None)
        out.append(b)
    return out


def make(kind):
    return {"bert": make_bert, "gpt2": make_gpt2, "llama": make_decoder}[kind]()


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, snap):
    return set(snap) == set(model.state_dict()) and all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("labels", [True, False])
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_the_whole_path_meets_the_budget_and_reports_each_step(kind, labels):
    model = make(kind)
    pruned, report = prune_oneshot(model, calib(kind, labels=labels), flops_budget=0.4, seq_len=12, rearrange=True)
    assert pruned is model
    plan = current_plan(model)
    assert plan.flops_removed(12) >= 0.4 - 1e-6
    assert plan.heads == report.plan.heads and plan.neurons == report.plan.neurons
    assert report.scores.method == "fisher" and report.scores.num_examples == 16
    assert report.split is not None  # the search ran
    assert report.reconstruction is not None and report.reconstruction.tokens > 0
    assert report.rearrangement is not None
    assert set(report.seconds) >= {"score", "split", "rearrange", "prune", "reconstruct", "total"}
    with torch.no_grad():
        inputs = {k: v for k, v in calib(kind, n=1)[0].items() if k != "labels"}
        assert torch.isfinite(model(**inputs).logits).all()
    assert report.to_dict()["plan"]["heads"] == plan.heads


def test_steps_switched_off_equal_the_plain_plan_and_cut():
    model = make_bert()
    reference = copy.deepcopy(model)
    data = calib("bert")
    prune_oneshot(model, data, head_sparsity=0.5, ffn_sparsity=0.5, rearrange=False, reconstruct=False, method="taylor")
    scorer = ImportanceScorer(reference, "taylor")
    reference.eval()
    with scorer:
        for b in data:
            reference(**b).loss.backward()
    plan = PruningPlan.from_scores(scorer.scores, head_sparsity=0.5, ffn_sparsity=0.5)
    prune_model(reference, plan)
    assert current_plan(model).heads == plan.heads and current_plan(model).neurons == plan.neurons
    sa, sb = model.state_dict(), reference.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_reconstruction_changes_the_output_projections_only():
    data = calib("bert")
    a, b = make_bert(), make_bert()
    prune_oneshot(a, data, flops_budget=0.4, seq_len=12, reconstruct=False)
    prune_oneshot(b, data, flops_budget=0.4, seq_len=12, reconstruct=True)
    assert current_plan(a).heads == current_plan(b).heads
    changed = {k for k, v in a.state_dict().items() if not torch.equal(v, b.state_dict()[k])}
    assert changed and all(k.endswith("output.dense.weight") for k in changed), changed


def test_the_models_own_gradients_are_left_as_they_were():
    model = make_bert()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    prune_oneshot(model, calib("bert"), head_sparsity=0.25, reconstruct=False, rearrange=False)
    # the cut slices parameters (and with them .grad is gone); untouched ones keep theirs
    assert model.classifier.weight.grad is not None and torch.all(model.classifier.weight.grad == 3.0)


def test_bad_input_is_refused_before_any_change():
    model = make_bert()
    snap = snapshot(model)
    with pytest.raises(CalibrationError, match="yielded no batch"):
        prune_oneshot(model, [], flops_budget=0.5)
    with pytest.raises(CalibrationError, match="NaN or infinite on every"):
        prune_oneshot(model, calib("bert"), flops_budget=0.5, loss_fn=lambda m, b: m(**b).loss * float("nan"))
    other = make_bert(hidden_size=32)
    with pytest.raises(PlanError, match="another model"):
        prune_oneshot(model, calib("bert"), plan=PruningPlan.full(pruning_state(other).geometry))
    with pytest.raises(PlanError, match="either a plan or a target"):
        prune_oneshot(model, calib("bert"), plan=current_plan(model), flops_budget=0.5)
    with pytest.raises(PlanError, match="give a target"):
        prune_oneshot(model, calib("bert"))
    with pytest.raises(ValueError, match="importance method"):
        prune_oneshot(model, calib("bert"), flops_budget=0.5, method="oracle")
    with pytest.raises(ValueError, match="split must be"):
        prune_oneshot(model, calib("bert"), flops_budget=0.5, split="half")
    assert unchanged(model, snap)


def test_uniform_and_balanced_shapes_plan_without_the_search():
    """uniform / balanced sweep their own head count: the search (heads_kept) cannot combine with them."""
    for shape in ("uniform", "balanced"):
        model = make("bert")
        _, report = prune_oneshot(
            model, calib("bert"), flops_budget=0.3, seq_len=12, reconstruct=False, **{shape: True}
        )
        plan = current_plan(model)
        assert len({len(h) for h in plan.heads}) == 1  # the same heads in every layer
        assert plan.flops_removed(12) >= 0.3 - 1e-6 and report.plan.meta[shape]
        assert report.split["searched"] is False and "sweep" in report.split["why"]


def test_latency_budget_is_planned_by_the_table():
    from hf_gradprune.latency import LatencyTable

    model = make("bert")
    g = pruning_state(model).geometry
    h, n = g.num_heads, g.intermediate_size
    table = LatencyTable(
        device_name="cpu",
        dtype="torch.float32",
        torch_threads=1,
        batch_size=1,
        seq_len=8,
        geometry=g.to_dict(),
        head_counts=list(range(h + 1)),
        attention_ms=[0.5 * c for c in range(h + 1)],
        ffn_widths=[0, n],
        ffn_ms=[0.0, 2.0],
        other_ms=1.0,
    )
    with pytest.raises(PlanError, match="latency_table"):
        prune_oneshot(make("bert"), calib("bert"), latency_budget=0.3)
    _, report = prune_oneshot(model, calib("bert"), latency_budget=0.3, latency_table=table, reconstruct=False)
    meta = report.plan.meta
    assert meta["budget_met"] and meta["latency_predicted_ms"] <= 0.7 * meta["latency_dense_ms"] + 1e-9
    assert table.predict(current_plan(model)) == pytest.approx(meta["latency_predicted_ms"], abs=1e-3)
    assert report.split["searched"] is False and "latency" in report.split["why"]
