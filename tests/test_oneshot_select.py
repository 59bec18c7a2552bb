"""The default retraining-free path chooses its steps by held-out loss (``oneshot.candidates``): every candidate's
reported loss is the loss of that candidate built on its own, the chosen one is never worse on the held-out batches
than plain one-shot, bad settings are refused before any change, and the trainer's reconstruction follows the rule."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import batch, make_bert, make_gpt2
from test_llama import batch as llama_batch
from test_llama import make_decoder
from trainer_helpers import make_trainer

import hf_gradprune.training.trainer as gradprune_trainer
from hf_gradprune import current_plan
from hf_gradprune.oneshot.calibration import CalibrationError
from hf_gradprune.oneshot.prune import prune_oneshot
from hf_gradprune.state import pruning_state

FIT, HELD = 6, 4


def data(kind, n, seed=30, labels=True):
    out = []
    for i in range(n):
        b = llama_batch(seed=seed + i, size=4) if kind == "llama" else batch(kind, seed=seed + i, size=4)
        if not labels:
            b.pop("labels", None)
        out.append(b)
    return out


def make(kind, attn="eager"):
    if kind == "bert":
        return make_bert(attn_implementation=attn)
    if kind == "gpt2":
        return make_gpt2(attn_implementation=attn)
    return make_decoder(attn=attn)


@torch.no_grad()
def mean_loss(model, batches, labels=None) -> float:
    """The held-out loss computed here: the model's own loss on labelled batches (token labels for decoders), or
    cross-entropy against ``labels`` (one tensor per batch)."""
    model.eval()
    total = 0.0
    for i, b in enumerate(batches):
        if labels is None:
            if "labels" not in b:  # a causal LM's unlabelled batch: it predicts its own tokens, padding ignored
                b = {**b, "labels": b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)}
            total += float(model(**b).loss)
        else:
            inputs = {k: v for k, v in b.items() if k != "labels"}
            total += float(torch.nn.functional.cross_entropy(model(**inputs).logits.float(), labels[i]))
    return total / len(batches)


def losses(report) -> dict:
    return {c["name"]: c["loss"] for c in report.selection["candidates"]}


@pytest.mark.parametrize(
    "kind,attn", [("bert", "eager"), ("bert", "sdpa"), ("gpt2", "eager"), ("llama", "sdpa"), ("llama", "eager")]
)
def test_the_choice_is_never_worse_on_held_out_batches_than_plain_one_shot(kind, attn):
    dense = make(kind, attn)
    fit, held = data(kind, FIT), data(kind, HELD, seed=90)
    chosen = copy.deepcopy(dense)
    _, report = prune_oneshot(chosen, fit + held, flops_budget=0.5, seq_len=12)
    # plain one-shot on the same fitting batches (scores, search), built on its own
    plain = copy.deepcopy(dense)
    prune_oneshot(plain, fit, flops_budget=0.5, seq_len=12, reconstruct=False, rearrange=False)
    found = losses(report)
    assert set(found) == {"one-shot", "reconstruction", "rearrangement", "rearrangement + reconstruction"}
    assert report.selection["chosen"] == min(found, key=lambda k: (found[k], list(found).index(k)))
    assert mean_loss(chosen, held) == pytest.approx(found[report.selection["chosen"]], rel=1e-5)
    assert mean_loss(plain, held) == pytest.approx(found["one-shot"], rel=1e-5)  # gated == cut
    assert mean_loss(chosen, held) <= mean_loss(plain, held) * (1 + 1e-6)
    measured = sum(c["note"] is None for c in report.selection["candidates"])
    assert report.selection["forwards"] == HELD * measured and report.batches["selection"] == HELD
    assert report.batches["score"] == FIT  # the held-out batches were not scored on
    assert current_plan(chosen).flops_removed(12) >= 0.5 - 1e-9


def test_each_candidates_loss_is_that_of_the_candidate_built_on_its_own():
    """Forcing the steps (True / False) on the fitting batches builds each candidate by the cut-then-fit path; its
    held-out loss is the one the selection measured with gates on the uncut model."""
    dense = make("bert")
    fit, held = data("bert", FIT), data("bert", HELD, seed=90)
    _, report = prune_oneshot(copy.deepcopy(dense), fit + held, flops_budget=0.5, seq_len=12)
    found = losses(report)
    for rearrange in (False, True):
        for reconstruct in (False, True):
            model = copy.deepcopy(dense)
            _, forced = prune_oneshot(
                model, fit, flops_budget=0.5, seq_len=12, rearrange=rearrange, reconstruct=reconstruct
            )
            assert forced.selection is None
            name = {(0, 0): "one-shot", (0, 1): "reconstruction", (1, 0): "rearrangement"}.get(
                (rearrange, reconstruct), "rearrangement + reconstruction"
            )
            assert mean_loss(model, held) == pytest.approx(found[name], rel=1e-5), name


def test_unlabelled_classifier_batches_are_judged_against_the_dense_models_predictions():
    dense = make("bert")
    fit, held = data("bert", FIT, labels=False), data("bert", HELD, seed=90, labels=False)
    with torch.no_grad():
        predicted = [dense(**b).logits.argmax(-1) for b in held]
    chosen = copy.deepcopy(dense)
    _, report = prune_oneshot(chosen, fit + held, flops_budget=0.5, seq_len=12)
    assert report.selection["labelling_forwards"] == HELD
    assert mean_loss(chosen, held, predicted) == pytest.approx(losses(report)[report.selection["chosen"]], rel=1e-5)


def test_a_non_gradient_score_only_chooses_about_reconstruction():
    model = make("llama")
    _, report = prune_oneshot(model, data("llama", FIT + HELD), params_budget=0.2, method="magnitude")
    assert [c["name"] for c in report.selection["candidates"]] == ["one-shot", "reconstruction"]
    assert report.rearrangement is None


def test_bad_settings_are_refused_before_any_change():
    model = make("bert")
    snap = copy.deepcopy(model.state_dict())
    few = data("bert", HELD)
    with pytest.raises(CalibrationError, match="holds out the last 4 calibration batches.*got 4"):
        prune_oneshot(model, few, flops_budget=0.5)
    with pytest.raises(ValueError, match="reconstruct must be True, False or 'auto'"):
        prune_oneshot(model, data("bert", 8), flops_budget=0.5, reconstruct="yes")
    with pytest.raises(ValueError, match="rearrange must be True, False or 'auto'"):
        prune_oneshot(model, data("bert", 8), flops_budget=0.5, rearrange=1)
    with pytest.raises(CalibrationError, match="selection_batches"):
        prune_oneshot(model, data("bert", 8), flops_budget=0.5, selection_batches=0)
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())
    assert pruning_state(model).head_ids == pruning_state(make("bert")).head_ids
    # with both steps fixed nothing is held out, and a few batches do
    prune_oneshot(model, few, flops_budget=0.5, reconstruct=True, rearrange=False)


ONE_SHOT = dict(max_steps=2, learning_rate=0.0, prune_step=0, reconstruct=True, reconstruct_batches=3)


def test_the_trainer_keeps_a_reconstruction_only_when_it_lowers_the_held_out_loss(tmp_path, monkeypatch):
    kept = make_trainer(tmp_path / "real", selection_batches=2, **ONE_SHOT)
    kept.train()
    (report,) = kept.reconstruction_reports
    selection = report["selection"]
    assert selection["held_out_batches"] == 2 and selection["kept"] == (
        selection["loss_after"] < selection["loss_before"]
    )
    # the same run with the held-out loss made to rise: the reconstruction is undone, the weights are the plain cut's
    plain = make_trainer(tmp_path / "plain", **{**ONE_SHOT, "reconstruct": False})
    plain.train()
    real = gradprune_trainer.held_out_loss
    calls = []

    def rising(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1] + len(calls)  # the second call (after) is always the larger

    monkeypatch.setattr(gradprune_trainer, "held_out_loss", rising)
    undone = make_trainer(tmp_path / "undone", selection_batches=2, **ONE_SHOT)
    undone.train()
    assert undone.reconstruction_reports[0]["selection"]["kept"] is False and len(calls) == 2
    a, b = plain.model.state_dict(), undone.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("rearrange", ["auto", True])
def test_a_rearrangement_that_keeps_the_same_units_is_not_measured_twice(rearrange, monkeypatch):
    import hf_gradprune.planning.rearrange as rearrange_module

    monkeypatch.setattr(rearrange_module, "rearrange_plan", lambda plan, *a, **k: (plan, []))
    dense = make("bert")
    fit, held = data("bert", FIT), data("bert", HELD, seed=90)
    model = copy.deepcopy(dense)
    _, report = prune_oneshot(model, fit + held, flops_budget=0.5, seq_len=12, rearrange=rearrange)
    found = {c["name"]: c for c in report.selection["candidates"]}
    measured = [c for c in found.values() if c["note"] is None]
    assert report.selection["forwards"] == HELD * len(measured)
    if rearrange == "auto":  # the rearranged ones copy their twins
        assert len(measured) == 2 and found["rearrangement"]["loss"] == found["one-shot"]["loss"]
        assert found["rearrangement + reconstruction"]["loss"] == found["reconstruction"]["loss"]
    else:  # no twin to copy: both rearranged candidates are measured on the one cut
        assert set(found) == {"rearrangement", "rearrangement + reconstruction"} and len(measured) == 2
    assert mean_loss(model, held) == pytest.approx(found[report.selection["chosen"]]["loss"], rel=1e-5)
