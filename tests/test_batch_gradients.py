"""``ImportanceScorer(..., record_batches=True).batch_gradients``: one signed gate gradient per pass."""

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, make_bert

from hf_gradprune import ImportanceScorer


def gate_gradients(model, inputs, layer: int):
    """Autograd gradients of one gate per head and per neuron of ``layer`` (shared by all examples and tokens),
    each multiplying its unit's slice of the output projection's input."""
    blk = model.bert.encoder.layer[layer]
    d = model.config.hidden_size // model.config.num_attention_heads
    head_gate = torch.ones(model.config.num_attention_heads, requires_grad=True)
    neuron_gate = torch.ones(blk.output.dense.in_features, requires_grad=True)
    handles = [
        blk.attention.output.dense.register_forward_pre_hook(
            lambda m, args: (args[0] * head_gate.repeat_interleave(d),)
        ),
        blk.output.dense.register_forward_pre_hook(lambda m, args: (args[0] * neuron_gate,)),
    ]
    try:
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        loss = F.cross_entropy(out.logits, inputs["labels"], reduction="sum")
        return torch.autograd.grad(loss, [head_gate, neuron_gate])
    finally:
        for h in handles:
            h.remove()


def summed_loss(model, inputs):
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    return F.cross_entropy(out.logits, inputs["labels"], reduction="sum")


def test_a_pass_records_the_autograd_gradient_of_an_explicit_gate():
    model = make_bert()
    passes = [batch("bert", seed=s, size=4) for s in (1, 2)]
    scorer = ImportanceScorer(model, "taylor", reduction="sum", record_batches=True)
    with scorer:
        for inputs in passes:
            summed_loss(model, inputs).backward()
    recorded = scorer.batch_gradients
    assert set(recorded) == {"head", "neuron"}
    assert [tuple(t.shape) for t in recorded["neuron"]] == [(2, 96)] * 3
    for layer in range(3):
        for row, inputs in enumerate(passes):
            heads, neurons = gate_gradients(model, inputs, layer)
            torch.testing.assert_close(recorded["head"][layer][row], heads, rtol=1e-4, atol=1e-8)
            torch.testing.assert_close(recorded["neuron"][layer][row], neurons, rtol=1e-4, atol=1e-8)
            assert (
                recorded["neuron"][layer][row].abs().max() > 1e-5
            )  # not trivially zero (the tiny model's gradients are ~1e-4)
        # the taylor score is the sum over examples of |s|, which bounds |sum over examples of s|
        assert (recorded["neuron"][layer].abs().sum(0) <= scorer.scores.neurons[layer] + 1e-5).all()


def test_one_example_per_pass_sums_of_squares_are_the_fisher_score():
    model = make_bert()
    inputs = batch("bert", size=5)
    scorer = ImportanceScorer(model, "fisher", record_batches=True)  # transformers' mean loss
    with scorer:
        for i in range(5):
            one = {k: v[i : i + 1] for k, v in inputs.items()}
            model(**one).loss.backward()
    grads, scores = scorer.batch_gradients, scorer.scores
    for layer in range(3):
        assert grads["head"][layer].shape == (5, 4)
        torch.testing.assert_close(grads["head"][layer].square().sum(0), scores.heads[layer], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(grads["neuron"][layer].square().sum(0), scores.neurons[layer], rtol=1e-5, atol=1e-9)


def test_under_mean_loss_a_pass_records_the_gradient_of_the_summed_loss():
    model = make_bert()
    inputs = batch("bert", size=4)
    scorer = ImportanceScorer(model, "fisher", record_batches=True)
    with scorer:
        model(**inputs).loss.backward()
    heads, neurons = gate_gradients(model, inputs, 1)
    torch.testing.assert_close(scorer.batch_gradients["neuron"][1][0], neurons, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(scorer.batch_gradients["head"][1][0], heads, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_weight_only_methods_refuse_to_record(method):
    with pytest.raises(ValueError, match="takes no gradients"):
        ImportanceScorer(make_bert(), method, record_batches=True)


def test_off_by_default_empty_before_scoring_cleared_by_reset_and_nan_passes_skipped():
    model = make_bert()
    with pytest.raises(RuntimeError, match="record_batches=True"):
        _ = ImportanceScorer(model, "fisher").batch_gradients
    scorer = ImportanceScorer(model, "fisher", record_batches=True)
    assert [tuple(t.shape) for t in scorer.batch_gradients["head"]] == [(0, 4)] * 3
    inputs = batch("bert")
    with scorer:
        model(**inputs).loss.backward()
        (model(**inputs).loss * float("nan")).backward()
    assert scorer.skipped_batches == 1
    assert scorer.batch_gradients["neuron"][0].shape == (1, 96)
    assert "batch_gradients" not in str(scorer.state_dict().keys())
    scorer.reset()
    assert scorer.batch_gradients["neuron"][0].shape == (0, 96)


def test_grouped_query_attention_records_groups_too():
    from test_llama import batch as llama_batch
    from test_llama import lm_loss, make_decoder

    model = make_decoder()
    scorer = ImportanceScorer(model, "fisher", record_batches=True)
    with scorer:
        lm_loss(model, llama_batch()).backward()
    grads = scorer.batch_gradients
    assert [tuple(t.shape) for t in grads["kv_group"]] == [(1, 2)] * 3
    # a group's gate gradient is the sum of its query heads'
    for layer in range(3):
        torch.testing.assert_close(grads["kv_group"][layer], grads["head"][layer].reshape(1, 2, 4).sum(-1))
