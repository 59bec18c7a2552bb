"""The retraining-free path in one call: every family, what it reports, and bad input refused before any change."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from conftest import batch, make_bert, make_gpt2, uneven_plan
from test_llama import batch as llama_batch
from test_llama import make_decoder

from hf_gradprune import ImportanceScorer, PlanError, PruningPlan, current_plan, prune_model
from hf_gradprune.oneshot.calibration import CalibrationError
from hf_gradprune.oneshot.prune import prune_oneshot as _prune_oneshot
from hf_gradprune.state import pruning_state

# These tests pin the two steps as they were before the held-out choice (reconstruction on, rearrangement off) to test
# what they test on a few batches; the choice has its own tests (tests/test_oneshot_select.py). A call may override.
prune_oneshot = functools.partial(_prune_oneshot, reconstruct=True, rearrange=False)


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
    from hf_gradprune.deploy.latency import LatencyTable

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


# ---------------------------------------------------------------------- issue 20: counts and inputs_embeds
def config_and_weights(model):
    return model.config.to_dict(), snapshot(model)


def assert_unchanged(model, before):
    config, snap = before
    assert model.config.to_dict() == config and unchanged(model, snap)


BAD_COUNTS = [
    ("scoring_batches", 0),
    ("scoring_batches", -1),
    ("scoring_batches", 2.5),
    ("scoring_batches", True),
    ("scoring_batches", "2"),
    ("search_batches", 0),
    ("search_batches", -1),
    ("search_batches", 2.5),
    ("reconstruct_batches", 0),
    ("reconstruct_batches", -1),
    ("reconstruct_batches", 2.5),
]


@pytest.mark.parametrize("name,value", BAD_COUNTS)
def test_every_count_is_checked_before_any_change(name, value):
    """Issue 20 case 4: reconstruct_batches=0 cut the model, then raised; -1 dropped the last batch; 2.5 was a
    slice TypeError; scoring_batches=0 was 'the loss was NaN on every batch (0 batches)'."""
    model = make_bert()
    before = config_and_weights(model)
    with pytest.raises(CalibrationError, match=rf"{name} must be an integer >= 1 or None \(all\), got {value!r}"):
        prune_oneshot(model, calib("bert", labels=False), flops_budget=0.3, seq_len=12, **{name: value})
    assert_unchanged(model, before)


def test_reconstruct_batches_zero_says_how_to_skip_reconstruction():
    with pytest.raises(CalibrationError, match="reconstruct=False"):
        prune_oneshot(make_bert(), calib("bert"), flops_budget=0.3, reconstruct_batches=0)
    with pytest.raises(CalibrationError, match="with search_batches, not max_batches"):
        prune_oneshot(make_bert(), calib("bert"), flops_budget=0.3, max_batches=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flops_budget": 0.3, "num_candidates": 4, "split": "ratio"}, r"only apply to the budget search"),
        ({"head_sparsity": 0.5, "criterion": "importance"}, r"only apply to the budget search"),
        ({"flops_budget": 0.3, "uniform": True, "num_candidates": 4}, r"only apply to the budget search"),
        ({"flops_budget": 0.3, "heads_kept": 6}, r"heads_kept fixes the head count"),
        ({"flops_budget": 0.3, "rankng": "layer"}, r"unknown option\(s\) \['rankng'\]"),
        ({"plan": "uneven", "ranking": "layer"}, r"with plan= given, drop them"),
    ],
)
def test_an_option_no_step_would_read_is_named_before_any_change(options, message):
    """Issue 20: num_candidates / criterion on a path without the search reached from_scores as a TypeError."""
    model = make_bert()
    before = config_and_weights(model)
    if options.get("plan") == "uneven":
        options = {**options, "plan": uneven_plan(model)}
    with pytest.raises(PlanError, match=message):
        prune_oneshot(model, calib("bert"), seq_len=12, **options)
    assert_unchanged(model, before)


def test_numpy_counts_are_taken_and_the_report_says_how_many_batches_each_step_used():
    np = pytest.importorskip("numpy")
    data = calib("bert", n=6, labels=False)
    model = make_bert()
    _, report = prune_oneshot(
        model,
        data,
        flops_budget=0.3,
        seq_len=12,
        scoring_batches=np.int64(2),
        search_batches=np.int32(5),  # more than search_budget_split's own default of 4
        reconstruct_batches=np.int64(3),
    )
    assert report.batches == {"score": 2, "search": 5, "reconstruct": 3}
    assert report.scores.num_examples == 8 and report.split["batches"] == 5
    assert report.reconstruction.tokens == int(sum(b["attention_mask"].sum() for b in data[:3]))
    assert report.to_dict()["batches"] == report.batches
    # None: all; a count above what the data holds uses all of it
    _, report = prune_oneshot(
        make_bert(), data, flops_budget=0.3, seq_len=12, search_batches=None, reconstruct_batches=100
    )
    assert report.batches == {"score": 6, "search": 6, "reconstruct": 6}


def test_reconstruction_batches_without_tokens_are_refused_before_the_cut():
    model = make_bert()
    before = config_and_weights(model)
    data = calib("bert")
    for b in data:
        b["attention_mask"] = torch.zeros_like(b["attention_mask"])
    with pytest.raises(ValueError, match="hold no tokens"):
        prune_oneshot(model, data, plan=uneven_plan(model))
    assert_unchanged(model, before)


def embedded(model, kind, labels, mask):
    out = []
    for b in calib(kind, n=3):
        with torch.no_grad():
            e = {"inputs_embeds": model.get_input_embeddings()(b["input_ids"])}
        if mask:
            e["attention_mask"] = b["attention_mask"]
        if labels:
            e["labels"] = b["labels"]
        out.append(e)
    return out


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("kind,labels", [("bert", False), ("bert", True), ("gpt2", True)])
def test_inputs_embeds_batches_are_pruned_and_reconstructed(kind, labels, mask):
    """Issue 20 case 10: batches of inputs_embeds work; without an attention_mask every position is a token
    (reconstruction counted tokens from input_ids only, and refused after the cut)."""
    model = make(kind)
    data = embedded(model, kind, labels, mask)
    _, report = prune_oneshot(model, data, flops_budget=0.3, seq_len=12)
    expected = sum(int(b["attention_mask"].sum()) if mask else b["inputs_embeds"].shape[0] * 12 for b in data)
    assert report.reconstruction.tokens == expected
    assert report.scores.num_examples == 12  # 3 batches of 4, counted from the activations
    assert current_plan(model).flops_removed(12) >= 0.3 - 1e-9
    with torch.no_grad():
        assert torch.isfinite(model(**{k: v for k, v in data[0].items() if k != "labels"}).logits).all()


@pytest.mark.parametrize("plan_given", [False, True])
def test_unlabelled_inputs_embeds_of_a_causal_lm_are_refused_up_front(plan_given):
    """Issue 20 case 10: the default causal-LM loss predicts the batch's own token ids, which inputs_embeds lack
    (it was KeyError: 'input_ids'). Refused before any change, saying what to pass."""
    model = make_gpt2()
    before = config_and_weights(model)
    data = embedded(model, "gpt2", labels=False, mask=True)
    kwargs = {"plan": current_plan(model), "rearrange": True} if plan_given else {"flops_budget": 0.3}
    with pytest.raises(
        CalibrationError, match=r"needs input_ids.*\['attention_mask', 'inputs_embeds'\].*labels.*loss_fn"
    ):
        prune_oneshot(model, data, **kwargs)
    assert_unchanged(model, before)
    # with a loss_fn they are fine
    _, report = prune_oneshot(
        model, data, flops_budget=0.3, seq_len=12, loss_fn=lambda m, b: m(**b).logits.float().logsumexp(-1).mean()
    )
    assert report.reconstruction.tokens > 0 and current_plan(model).flops_removed(12) >= 0.3 - 1e-9
