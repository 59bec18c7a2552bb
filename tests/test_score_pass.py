"""The scoring pass at calibration sizes (issue 22): micro-batches and checkpointing leave the scores as they were."""

from __future__ import annotations

import collections
import copy
import warnings

import pytest
import torch
from conftest import batch, make_bert, make_gpt2, tiny_bert_config
from test_llama import batch as llama_batch
from test_llama import make_decoder
from transformers import BertForMaskedLM, BertForNextSentencePrediction

from hf_gradprune import ImportanceScorer
from hf_gradprune.oneshot.calibration import CalibrationError, model_loss
from hf_gradprune.oneshot.score_pass import score_calibration
from hf_gradprune.state import pruning_state


def joined(*parts):
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def unlabelled(b):
    return {k: v for k, v in b.items() if k != "labels"}


def masked_lm():
    torch.manual_seed(0)
    return BertForMaskedLM(tiny_bert_config()).eval()


def mlm_batch(seed):
    b = batch("gpt2", seed=seed, size=5)  # padded token ids; every third real token is a target
    labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    labels[:, 1::3] = -100
    return {**b, "labels": labels}


# Batches of 5 padded sequences: micro-batches of 2 leave a last chunk of 1, and chunks hold unequal token counts.
CASES = {
    "llama": (make_decoder, lambda s: joined(llama_batch(seed=s, size=3), llama_batch(seed=s + 10, size=2))),
    "gpt2": (make_gpt2, lambda s: unlabelled(batch("gpt2", seed=s, size=5))),
    "gpt2-labels": (make_gpt2, lambda s: batch("gpt2", seed=s, size=5)),
    "bert": (make_bert, lambda s: unlabelled(batch("bert", seed=s, size=5))),
    "bert-labels": (make_bert, lambda s: batch("bert", seed=s, size=5)),
    "bert-mlm": (masked_lm, mlm_batch),
}


def reference(model, batches, method, record=False):
    """Scores as any training step makes them: one forward/backward per whole batch, nothing frozen."""
    scorer = ImportanceScorer(model, method, record_batches=record)
    with scorer:
        for b in batches:
            model.zero_grad(set_to_none=True)
            model_loss(model, b).backward()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        losses = [float(model_loss(model, b)) for b in batches]
    return scorer, losses


def assert_same_scores(a, b):
    assert a.num_examples == b.num_examples and a.skipped_batches == b.skipped_batches
    groups = (a.groups or []) + (b.groups or [])
    assert len(groups) in (0, 2 * len(a.heads))  # grouped-query models compare their key/value groups too
    for x, y in zip(a.heads + a.neurons + (a.groups or []), b.heads + b.neurons + (b.groups or [])):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7 * float(y.abs().max()))


@pytest.mark.parametrize("method", ["fisher", "taylor"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_micro_batches_give_the_scores_and_losses_of_the_whole_batch(case, method):
    build, make_batch = CASES[case]
    model = build()
    batches = [make_batch(1), make_batch(2)]
    ref, losses = reference(model, batches, method)
    for micro in (1, 2):
        result = score_calibration(model, batches, method, micro_batch_size=micro)
        assert_same_scores(result.scores, ref.scores)
        torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(losses), rtol=1e-6, atol=0)
        assert result.micro_batches == 2 * -(-5 // micro)
        assert result.tokens == sum(int(b["attention_mask"].sum()) for b in batches)
    if case == "llama":
        assert ref.scores.groups is not None  # grouped-query attention: groups scored and compared


def test_micro_batches_record_one_row_per_batch():
    model, batches = make_decoder(), [CASES["llama"][1](s) for s in (1, 2, 3)]
    ref, _ = reference(model, batches, "fisher", record=True)
    result = score_calibration(model, batches, "fisher", record=True, micro_batch_size=2)
    got, want = result.scorer.batch_gradients, ref.batch_gradients
    assert set(got) == set(want) == {"head", "neuron", "kv_group"}
    for kind in want:
        for x, y in zip(got[kind], want[kind]):
            assert x.shape == y.shape and x.shape[0] == 3
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6 * float(y.abs().max()))


def test_a_micro_batch_with_nothing_to_predict_is_not_run_and_its_sequences_still_count():
    # Sequences of one real token give a causal LM no target: alone in a micro-batch their loss is 0 / 0 (NaN).
    b = batch("gpt2", seed=3, size=4)
    b["attention_mask"][[1, 2], 1:] = 0
    b["input_ids"][[1, 2], 1:] = 0
    b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    model = make_gpt2()
    ref, losses = reference(model, [b], "fisher")
    result = score_calibration(model, [b], "fisher", micro_batch_size=1)
    assert_same_scores(result.scores, ref.scores)
    assert result.scores.num_examples == 4 and result.micro_batches == 2
    assert result.losses == pytest.approx(losses, rel=1e-6)


def test_a_batch_with_a_nan_sequence_is_skipped_whole_as_without_micro_batches():
    model = make_gpt2(tie_word_embeddings=False)  # a NaN in a tied embedding would be in every logit
    with torch.no_grad():
        model.transformer.wte.weight[5] = float("nan")
    good, bad = batch("gpt2", seed=1, size=4), batch("gpt2", seed=2, size=4)
    good["input_ids"][good["input_ids"] == 5] = 6
    bad["input_ids"][:, 0] = 6
    bad["input_ids"][3, 0] = 5  # only the last sequence, alone in its micro-batch, meets the NaN
    ref, losses = reference(model, [good, bad], "fisher")
    result = score_calibration(model, [good, bad], "fisher", micro_batch_size=1)
    assert ref.scores.skipped_batches == 1 and ref.scores.num_examples == 4
    assert_same_scores(result.scores, ref.scores)
    assert result.losses[0] == pytest.approx(losses[0], rel=1e-6)
    assert torch.isnan(torch.tensor([losses[1], result.losses[1]])).all()
    assert result.tokens == int(good["attention_mask"].sum())


def calls_per_module(model, layer, run):
    counts = collections.Counter()
    handles = [
        m.register_forward_hook(lambda m, a, o, name=name: counts.update([name]))
        for name, m in pruning_state(model).layers[layer].named_modules()
        if name
    ]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return counts


def checkpointed(model, batches, flag):
    """The pass, and the bytes autograd saved outside any checkpoint."""
    nbytes = 0

    def pack(t):
        nonlocal nbytes
        nbytes += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = score_calibration(model, batches, "fisher", gradient_checkpointing=flag)
    return result, nbytes


@pytest.mark.parametrize("case", ["llama", "gpt2", "bert"])
def test_checkpointing_recomputes_every_layer_in_eval_mode_and_leaves_the_scores(case):
    build, make_batch = CASES[case]
    model, batches = build(), [make_batch(1), make_batch(2)]
    ref, losses = reference(model, batches, "fisher")
    saved, results = {}, {}
    for flag in (False, True):
        counts = calls_per_module(
            model, 1, lambda flag=flag: results.update({flag: checkpointed(model, batches, flag)})
        )
        # a checkpointed layer runs its modules again in the backward (up to the last one whose output it needs)
        assert max(counts.values()) == (4 if flag else 2), counts
        result, saved[flag] = results[flag]
        assert_same_scores(result.scores, ref.scores)
        assert result.losses == pytest.approx(losses, rel=1e-6)
    assert saved[True] < saved[False] / 4  # what autograd keeps outside the checkpoints
    both = score_calibration(model, batches, "fisher", micro_batch_size=2, gradient_checkpointing=True)
    assert_same_scores(both.scores, ref.scores)


def model_state(model):
    modules = list(model.modules())
    return {
        "modes": [m.training for m in modules],
        "flags": [m.__dict__.get("gradient_checkpointing", "-") for m in modules],
        "funcs": [m.__dict__.get("_gradient_checkpointing_func", "-") for m in modules],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "use_cache": model.config.use_cache,
        "hooks": [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in modules],
    }


def assert_state(model, state):
    now = model_state(model)
    for key, value in state.items():
        if key == "grads":
            assert all(a is b for a, b in zip(now[key], value)), key
        elif key == "funcs":
            assert all(a is b for a, b in zip(now[key], value)), key
        else:
            assert now[key] == value, key


def test_the_model_comes_back_as_it_was_even_with_reentrant_checkpointing_on_and_after_an_error():
    model, batches = make_decoder(), [CASES["llama"][1](s) for s in (1, 2)]
    ref, _ = reference(model, batches, "fisher")
    with warnings.catch_warnings():  # the v5 name is activation_checkpointing_enable; both take the kwargs
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    model.lm_head.eval()  # a mixed state, which model.train(was_training) would not give back
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    model.model.norm.weight.grad = torch.ones_like(model.model.norm.weight)
    model.config.use_cache = True
    state = model_state(model)
    result = score_calibration(model, batches, "fisher", micro_batch_size=2, gradient_checkpointing=True)
    assert_same_scores(result.scores, ref.scores)  # the frozen weight's layer is scored too
    assert_state(model, state)

    def failing(model, b):
        if b is batches[1]:
            raise RuntimeError("boom")
        return model_loss(model, b)

    with pytest.raises(RuntimeError, match="boom"):
        score_calibration(model, batches, "fisher", failing, gradient_checkpointing=True)
    assert_state(model, state)


def test_bad_options_and_unsplittable_losses_are_refused_before_any_forward():
    model, batches = make_gpt2(), [batch("gpt2", seed=1, size=4)]
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(CalibrationError, match="micro_batch_size must be an integer >= 1"):
            score_calibration(model, batches, "fisher", micro_batch_size=bad)
    with pytest.raises(CalibrationError, match="loss_fn"):
        score_calibration(model, batches, "fisher", lambda m, b: model_loss(m, b), micro_batch_size=2)
    with pytest.raises(TypeError, match="gradient_checkpointing"):
        score_calibration(model, batches, "fisher", gradient_checkpointing="yes")
    torch.manual_seed(0)
    nsp = BertForNextSentencePrediction(tiny_bert_config()).eval()
    nsp_batch = {**unlabelled(batch("bert", size=4)), "labels": torch.tensor([0, 1, 0, 1])}
    nsp.register_forward_pre_hook(lambda m, a: calls.append(1))
    with pytest.raises(CalibrationError, match="cannot split batches of a BertForNextSentencePrediction"):
        score_calibration(nsp, [nsp_batch], "fisher", micro_batch_size=2)
    assert calls == []
    handle.remove()


def test_methods_without_gradients_run_nothing_and_a_loss_nan_everywhere_is_refused():
    model = make_gpt2()
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    result = score_calibration(model, [batch("gpt2")], "magnitude", micro_batch_size=2, gradient_checkpointing=True)
    assert calls == [] and result.losses == [] and result.micro_batches == 0
    handle.remove()
    with torch.no_grad():
        model.transformer.ln_f.weight[0] = float("nan")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CalibrationError, match="NaN or infinite on every calibration batch"):
        score_calibration(model, [batch("gpt2", size=3)], "fisher", micro_batch_size=2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "ln_f" not in k)
