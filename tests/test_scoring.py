import gc

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, make

from hf_gradprune import ImportanceScorer, PruningPlan, Scores, ScoresError, prune_model
from hf_gradprune.state import pruning_state


def out_projs(model):
    """(attention output projection, FFN output projection) per layer, named independently of the library."""
    if model.config.model_type == "gpt2":
        return [(b.attn.c_proj, b.mlp.c_proj) for b in model.transformer.h]
    return [(lay.attention.output.dense, lay.output.dense) for lay in model.bert.encoder.layer]


def gated_scores(model, inputs, loss_fn, per_token_mask=True):
    """s[e, unit] = sum over non-pad tokens of dL/dg[e, t, unit] for explicit gates g = 1 that multiply
    each unit's slice of the output projections' inputs. Returns ([L][B, H], [L][B, I])."""
    d = model.config.hidden_size // model.config.num_attention_heads
    b, t = inputs["input_ids"].shape
    gates, handles = [], []
    for attn, ffn in out_projs(model):
        for module, group in ((attn, d), (ffn, 1)):
            width = (module.in_features if hasattr(module, "in_features") else module.nx) // group
            g = torch.ones(b, t, width, requires_grad=True)
            gates.append(g)
            handles.append(
                module.register_forward_pre_hook(
                    lambda m, args, g=g, group=group: (args[0] * g.repeat_interleave(group, dim=-1),)
                )
            )
    try:
        loss = loss_fn(model, inputs)
        grads = torch.autograd.grad(loss, gates)
    finally:
        for h in handles:
            h.remove()
    mask = inputs["attention_mask"][..., None].float() if per_token_mask else 1.0
    per_example = [(gr * mask).sum(1) for gr in grads]
    return per_example[0::2], per_example[1::2]


def summed_loss(model, inputs):
    """Sum over examples of each example's own mean loss; pads included in the loss on purpose, so that
    only the scorer's masking can keep them out of the scores."""
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    if model.config.model_type == "gpt2":
        logp = F.cross_entropy(out.logits[:, :-1].transpose(1, 2), inputs["input_ids"][:, 1:], reduction="none")
        return logp.mean(1).sum()
    return F.cross_entropy(out.logits, inputs["labels"], reduction="sum")


@pytest.mark.parametrize("method", ["taylor", "fisher"])
def test_scores_equal_gradient_of_explicit_gates(family, method):
    model = make(family)
    inputs = batch(family, size=5)
    heads_ref, neurons_ref = gated_scores(model, inputs, summed_loss)
    reduce = (lambda s: s.abs().sum(0)) if method == "taylor" else (lambda s: s.square().sum(0))
    scorer = ImportanceScorer(model, method, reduction="sum")
    with scorer:
        summed_loss(model, inputs).backward()
    scores = scorer.scores
    assert scores.num_examples == 5
    for layer in range(3):
        torch.testing.assert_close(scores.heads[layer], reduce(heads_ref[layer]), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(scores.neurons[layer], reduce(neurons_ref[layer]), rtol=1e-4, atol=1e-7)


def test_per_example_scores_under_mean_loss_match_one_example_at_a_time():
    """With transformers' own mean loss, batch scores equal the sum of single-example gate gradients."""
    model = make("bert")
    inputs = batch("bert", size=4)
    expected_h, expected_n = 0, 0
    for e in range(4):
        n = int(inputs["attention_mask"][e].sum())
        one = {k: (v[e : e + 1, :n] if v.dim() == 2 else v[e : e + 1]) for k, v in inputs.items()}
        h, nn_ = gated_scores(model, one, lambda m, x: m(**x).loss)
        expected_h = expected_h + torch.stack([s.abs().sum(0) for s in h])
        expected_n = expected_n + torch.stack([s.abs().sum(0) for s in nn_])
    scorer = ImportanceScorer(model, "taylor")
    with scorer:
        model(**inputs).loss.backward()
    torch.testing.assert_close(torch.stack(scorer.scores.heads), expected_h, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(torch.stack(scorer.scores.neurons), expected_n, rtol=1e-4, atol=1e-7)


def test_gradient_accumulation_and_batch_size_give_same_scores():
    model = make("bert")
    inputs = batch("bert", size=6)
    full = ImportanceScorer(model, "fisher")
    with full:
        model(**inputs).loss.backward()
    model.zero_grad()
    accum = ImportanceScorer(model, "fisher")
    accum.loss_scale = 1 / 3  # what Trainer does to the loss under 3 accumulation steps
    with accum:
        for i in range(3):
            part = {k: v[2 * i : 2 * i + 2] for k, v in inputs.items()}
            (model(**part).loss / 3).backward()
    a, b = full.scores, accum.scores
    assert a.num_examples == b.num_examples == 6
    for x, y in zip(a.heads + a.neurons, b.heads + b.neurons):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-8)


def test_loss_scale_is_divided_out():
    """An fp16 GradScaler multiplies the loss by its scale; the scorer divides it back out."""
    model = make("bert")
    inputs = batch("bert")
    results = []
    for factor in (1.0, 1024.0):
        scorer = ImportanceScorer(model, "taylor")
        scorer.loss_scale = factor
        with scorer:
            (model(**inputs).loss * factor).backward()
        results.append(scorer.scores)
    for a, b in zip(results[0].heads + results[0].neurons, results[1].heads + results[1].neurons):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


def test_extra_padding_changes_nothing(family):
    model = make(family)
    inputs = batch(family, size=3, length=10)
    longer = {
        "input_ids": F.pad(inputs["input_ids"], (0, 6)),
        "attention_mask": F.pad(inputs["attention_mask"], (0, 6)),
        "labels": inputs["labels"] if family == "bert" else F.pad(inputs["labels"], (0, 6), value=-100),
    }
    results = []
    for x in (inputs, longer):
        scorer = ImportanceScorer(model, "taylor")
        with scorer:
            model(**x).loss.backward()
        results.append(scorer.scores)
    for x, y in zip(results[0].heads + results[0].neurons, results[1].heads + results[1].neurons):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-8)


def test_bf16_model_accumulates_in_float32(family):
    fp32 = make(family)
    bf16 = make(family).to(torch.bfloat16)
    inputs = batch(family)
    out = []
    for model in (fp32, bf16):
        scorer = ImportanceScorer(model, "taylor")
        with scorer:
            for _ in range(3):
                model(**inputs).loss.backward()
        state = scorer.state_dict()
        assert all(t.dtype == torch.float32 for t in state["heads"] + state["neurons"])
        out.append(scorer.scores)
    assert all(t.dtype == torch.float32 for t in out[1].heads + out[1].neurons)
    ref, low = torch.cat(out[0].heads), torch.cat(out[1].heads)
    assert torch.corrcoef(torch.stack([ref, low]))[0, 1] > 0.95
    torch.testing.assert_close(low, ref, rtol=0.2, atol=1e-3 * ref.abs().max().item())


def test_no_backward_counts_nothing_and_eval_forward_is_ignored(family):
    model = make(family)
    scorer = ImportanceScorer(model, "taylor")
    with scorer:
        with torch.no_grad():
            model(**batch(family))
        model(**batch(family))  # forward with grad but no backward
    assert scorer.scores.num_examples == 0
    with pytest.raises(ScoresError, match="no examples"):
        PruningPlan.from_scores(scorer.scores, head_sparsity=0.5)


def test_hooks_detach_and_memory_is_flat_over_1000_steps():
    model = make("bert", num_hidden_layers=2)
    inputs = batch("bert", size=2, length=6)

    def count_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    scorer = ImportanceScorer(model, "taylor")
    with scorer:
        for _ in range(10):
            model(**inputs).loss.backward()
        before = count_tensors()
        for _ in range(1000):
            model(**inputs).loss.backward()
        after = count_tensors()
    assert after - before <= 2, (before, after)
    assert scorer.scores.num_examples == 2 * 1010
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_nan_backward_is_skipped(family):
    model = make(family)
    scorer = ImportanceScorer(model, "taylor")
    with scorer:
        model(**batch(family)).loss.backward()
        (model(**batch(family)).loss * float("nan")).backward()
        model(**batch(family)).loss.backward()
    s = scorer.scores
    assert s.num_examples == 8 and s.skipped_batches == 1
    assert all(torch.isfinite(t).all() for t in s.heads + s.neurons)


def test_magnitude_is_l2_norm_of_unit_weights():
    model = make("bert")
    s = ImportanceScorer(model, "magnitude").scores
    lay, d = model.bert.encoder.layer[1], 16
    a = lay.attention
    h = 2
    parts = [
        a.self.query.weight[h * d : (h + 1) * d],
        a.self.key.weight[h * d : (h + 1) * d],
        a.self.value.weight[h * d : (h + 1) * d],
        a.output.dense.weight[:, h * d : (h + 1) * d].T,
        a.self.query.bias[h * d : (h + 1) * d, None],
        a.self.key.bias[h * d : (h + 1) * d, None],
        a.self.value.bias[h * d : (h + 1) * d, None],
    ]
    expected = torch.sqrt(sum(p.pow(2).sum() for p in parts))
    torch.testing.assert_close(s.heads[1][h], expected.detach())
    j = 7
    n = torch.sqrt(
        lay.intermediate.dense.weight[j].pow(2).sum()
        + lay.intermediate.dense.bias[j] ** 2
        + lay.output.dense.weight[:, j].pow(2).sum()
    )
    torch.testing.assert_close(s.neurons[1][j], n.detach())


def test_gpt2_magnitude_reads_fused_qkv():
    model = make("gpt2")
    s = ImportanceScorer(model, "magnitude").scores
    attn, d, h, e = model.transformer.h[0].attn, 16, 3, 64
    cols = [slice(p * e + h * d, p * e + (h + 1) * d) for p in range(3)]
    sq = sum(attn.c_attn.weight[:, c].pow(2).sum() + attn.c_attn.bias[c].pow(2).sum() for c in cols)
    sq = sq + attn.c_proj.weight[h * d : (h + 1) * d].pow(2).sum()
    torch.testing.assert_close(s.heads[0][h], sq.sqrt().detach())


def test_random_is_seeded():
    model = make("bert")
    a, b, c = (ImportanceScorer(model, "random", seed=s).scores for s in (3, 3, 4))
    assert torch.equal(torch.cat(a.heads), torch.cat(b.heads)) and not torch.equal(
        torch.cat(a.heads), torch.cat(c.heads)
    )


def test_scores_of_a_pruned_model_use_original_ids(family):
    model = make(family)
    g = pruning_state(model).geometry
    prune_model(model, PruningPlan(g, [[1, 3], [], [0, 2, 3]], [list(range(5, 60))] * 3))
    scorer = ImportanceScorer(model, "taylor")
    with scorer:
        model(**batch(family)).loss.backward()
    s = scorer.scores
    assert s.head_ids == [[1, 3], [], [0, 2, 3]] and s.neuron_ids[0] == list(range(5, 60))
    assert [t.numel() for t in s.heads] == [2, 0, 3]
    plan = PruningPlan.from_scores(s, head_sparsity=0.75)
    assert plan.num_heads == 3 and plan.is_subset_of(PruningPlan(g, s.head_ids, s.neuron_ids))


@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
def test_scores_save_load_and_sum(tmp_path, family, suffix):
    model = make(family)
    g = pruning_state(model).geometry
    prune_model(model, PruningPlan(g, [[0], [], [1, 2]], [list(range(30))] * 3))
    scorer = ImportanceScorer(model, "fisher")
    with scorer:
        model(**batch(family)).loss.backward()
    s = scorer.scores
    s.save(tmp_path / f"s{suffix}")
    t = Scores.load(tmp_path / f"s{suffix}")
    assert (t.method, t.geometry, t.head_ids, t.neuron_ids, t.num_examples) == (
        s.method,
        s.geometry,
        s.head_ids,
        s.neuron_ids,
        s.num_examples,
    )
    for x, y in zip(s.heads + s.neurons, t.heads + t.neurons):
        assert torch.equal(x, y)
    total = s + t
    assert total.num_examples == 2 * s.num_examples
    torch.testing.assert_close(total.heads[2], 2 * s.heads[2])
    assert s.all_reduce() is s  # no process group: a no-op


def test_unknown_method_and_unsupported_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_gradprune import UnsupportedModelError

    with pytest.raises(ValueError, match="unknown importance method"):
        ImportanceScorer(make("bert"), "gradnorm")
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(UnsupportedModelError, match="Supported model types: bert.*gpt2"):
        ImportanceScorer(llama, "taylor")


def test_scores_sum_across_two_processes():
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    here = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=f"{here}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        port,
        str(here / "dist_scores_script.py"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DIST-OK" in result.stderr
