import gc

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, make, uneven_plan

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


def assert_same_scores(a, b, rtol=1e-4, atol=1e-7):
    """The same example count and, unit by unit, the same scores."""
    assert a.num_examples == b.num_examples
    for x, y in zip(a.heads + a.neurons, b.heads + b.neurons):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


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
    assert a.num_examples == 6
    assert_same_scores(a, b, rtol=1e-4, atol=1e-8)


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
    assert_same_scores(*results, rtol=1e-5, atol=1e-9)


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
    assert_same_scores(*results, rtol=1e-4, atol=1e-8)


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
    from transformers import MixtralConfig, MixtralForCausalLM

    from hf_gradprune import UnsupportedModelError

    with pytest.raises(ValueError, match="unknown importance method"):
        ImportanceScorer(make("bert"), "gradnorm")
    # a mixture-of-experts decoder: Llama-shaped attention, but experts instead of one FFN
    moe = MixtralForCausalLM(
        MixtralConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=2,
            num_experts_per_tok=1,
        )
    )
    with pytest.raises(UnsupportedModelError, match="'mixtral'.*Supported model types: bert.*gpt2.*llama"):
        ImportanceScorer(moe, "taylor")


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


# ---------------------------------------------------------------- lifecycle (issue 10, item 8)
def hooks_left(model):
    return [m for m in model.modules() if m._forward_pre_hooks or m._forward_hooks]


def test_nested_with_keeps_scoring_until_the_outer_block_ends():
    model = make("bert")
    scorer = ImportanceScorer(model, "taylor")
    with scorer:
        with scorer:
            model(**batch("bert")).loss.backward()
        assert scorer.is_attached
        model(**batch("bert", seed=2)).loss.backward()  # the inner exit must not end scoring
    assert not scorer.is_attached and not hooks_left(model)
    assert scorer.scores.num_examples == 8
    scorer.attach()
    scorer.attach()
    scorer.detach()
    assert scorer.is_attached
    scorer.detach()
    scorer.detach()  # unmatched: nothing to do
    assert not scorer.is_attached and not hooks_left(model)


def one_unit_plan(model):
    g = pruning_state(model).geometry
    return PruningPlan(g, [[1]] * g.num_layers, [[3]] * g.num_layers)


@pytest.mark.parametrize("attached", [False, True])
def test_scorer_with_scores_refuses_a_pruned_model_until_reset(family, attached):
    """Down to one unit per layer, old code broadcast the new scores onto every old unit without a word."""
    model = make(family)
    scorer = ImportanceScorer(model, "taylor")
    scorer.attach()
    model(**batch(family)).loss.backward()
    if not attached:
        scorer.detach()
    prune_model(model, one_unit_plan(model))
    with pytest.raises(RuntimeError, match=r"call scorer\.reset\(\)"):
        with scorer:
            model(**batch(family)).loss.backward()
    assert scorer.scores.num_examples == 4 and scorer.scores.head_ids[0] == [0, 1, 2, 3]  # still readable
    scorer.reset()
    with scorer:
        model(**batch(family)).loss.backward()
    s = scorer.scores
    assert s.num_examples == 4 and s.head_ids == [[1]] * 3 and s.neuron_ids == [[3]] * 3
    scorer.detach()
    assert not hooks_left(model)


@pytest.mark.parametrize("method", ["taylor", "magnitude"])
def test_scorer_without_scores_follows_a_pruned_model(method):
    model = make("bert")
    scorer = ImportanceScorer(model, method)
    prune_model(model, uneven_plan(model))
    with scorer:
        model(**batch("bert")).loss.backward()
    s = scorer.scores
    assert s.head_ids == uneven_plan(model).heads
    assert [t.numel() for t in s.heads] == [len(ids) for ids in s.head_ids]
    PruningPlan.from_scores(s, head_sparsity=0.5)


def test_scorer_without_scores_follows_a_prune_made_while_attached():
    """Layer 0 keeps everything, so the scorer only notices at layer 1, mid-forward: still one pass."""
    model = make("bert")
    scorer = ImportanceScorer(model, "taylor")
    g = pruning_state(model).geometry
    plan = PruningPlan(g, [[0, 1, 2, 3], [1], [0, 2]], [list(range(96)), list(range(40)), list(range(50))])
    with scorer:
        prune_model(model, plan)
        model(**batch("bert")).loss.backward()
    s = scorer.scores
    assert s.num_examples == 4 and s.head_ids == plan.heads and [t.numel() for t in s.neurons] == [96, 40, 50]


def test_state_dict_resumes_scoring_and_refuses_what_does_not_fit():
    model = make("bert")
    whole = ImportanceScorer(model, "fisher")
    with whole:
        for seed in (1, 2):
            model(**batch("bert", seed=seed)).loss.backward()
    first = ImportanceScorer(model, "fisher")
    with first:
        model(**batch("bert", seed=1)).loss.backward()
    resumed = ImportanceScorer(model, "fisher")
    resumed.load_state_dict(first.state_dict())
    with resumed:
        model(**batch("bert", seed=2)).loss.backward()
    a, b = whole.scores, resumed.scores
    assert a.num_examples == 8
    assert_same_scores(a, b, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="accumulated with 'fisher'"):
        ImportanceScorer(model, "taylor").load_state_dict(first.state_dict())
    damaged = first.state_dict()
    damaged["heads"][0] = torch.ones(1)  # would broadcast onto the layer's four heads
    with pytest.raises(ValueError, match="do not match their unit ids"):
        resumed.load_state_dict(damaged)
    assert resumed.scores.num_examples == 8  # left as it was
    prune_model(model, uneven_plan(model))
    with pytest.raises(ValueError, match="other live units"):
        ImportanceScorer(model, "fisher").load_state_dict(first.state_dict())


def test_forward_through_the_base_model_is_masked_and_committed_per_backward(family):
    """A custom head on ``model.bert`` / ``model.transformer``: each backward counts its own examples, the
    padding mask still applies, and a NaN batch costs only itself."""
    model = make(family)
    head = torch.nn.Linear(64, 3)

    def custom(m, x):
        ids, mask = x["input_ids"], x["attention_mask"]
        # BERT takes the mask positionally (second), GPT-2 only by name (its second parameter is the cache)
        out = m.base_model(ids, mask) if family == "bert" else m.base_model(input_ids=ids, attention_mask=mask)
        logits = head(out.last_hidden_state)  # every token, pads included: only the mask keeps them out
        target = (torch.arange(ids.shape[0]) % 3)[:, None].expand(ids.shape)
        return F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(1).sum()

    batches = [batch(family, seed=seed, size=3) for seed in (1, 2)]
    ref = [gated_scores(model, x, custom) for x in batches]
    scorer = ImportanceScorer(model, "taylor", reduction="sum")
    with scorer:
        custom(model, batches[0]).backward()
        (custom(model, batches[1]) * float("nan")).backward()
        custom(model, batches[1]).backward()
    s = scorer.scores
    assert (s.num_examples, s.skipped_batches) == (6, 1)
    for layer in range(3):
        for got, k in ((s.heads, 0), (s.neurons, 1)):
            expected = sum(r[k][layer].abs().sum(0) for r in ref)
            torch.testing.assert_close(got[layer], expected, rtol=1e-4, atol=1e-7)


def test_forwards_in_threads_keep_their_own_mask_and_count(family):
    """``nn.DataParallel`` runs its replicas' forwards in threads through the same hooks; here two forwards of
    different batches are held mid-model at once, then backpropagated together."""
    import threading

    model = make(family)
    parts = [batch(family, seed=1, size=3), batch(family, seed=2, size=5, length=9)]
    ref = ImportanceScorer(model, "taylor", reduction="sum")
    with ref:
        for x in parts:
            summed_loss(model, x).backward()
    barrier = threading.Barrier(2)
    layers = model.transformer.h if family == "gpt2" else model.bert.encoder.layer

    def meet(module, args):
        barrier.wait(timeout=60)  # both forwards are past layer 0 before either goes on

    handle = layers[1].register_forward_pre_hook(meet)
    losses = [None, None]

    def run(i):
        losses[i] = summed_loss(model, parts[i])

    scorer = ImportanceScorer(model, "taylor", reduction="sum")
    try:
        with scorer:
            threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            (losses[0] + losses[1]).backward()
    finally:
        handle.remove()
    a, b = ref.scores, scorer.scores
    assert a.num_examples == 8
    assert_same_scores(a, b, rtol=1e-4, atol=1e-7)


def test_gradient_checkpointing_gives_the_same_scores():
    model = make("bert")
    inputs = batch("bert")
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()  # transformers checkpoints only in training mode; dropout is 0 in these models
        scorer = ImportanceScorer(model, "fisher")
        with scorer:
            model(**inputs).loss.backward()
        results.append(scorer.scores)
    a, b = results
    assert a.num_examples == 4
    assert_same_scores(a, b, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf")])
def test_loss_scale_must_be_finite_and_positive(value):
    scorer = ImportanceScorer(make("bert"), "taylor")
    with pytest.raises(ValueError, match="loss_scale must be finite and > 0"):
        scorer.loss_scale = value
    with pytest.raises(TypeError, match="loss_scale must be a number"):
        scorer.loss_scale = "1"
    assert scorer.loss_scale == 1.0


# ---------------------------------------------------------------- Scores.load (issue 10, item 9)
def test_scores_load_says_what_a_foreign_or_missing_file_lacks(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(ScoresError, match="no scores file"):
        Scores.load(tmp_path / "absent.safetensors")
    save_file({"bert.pooler.dense.bias": torch.zeros(4)}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ScoresError, match="without the 'hf_gradprune_scores' metadata.*Scores.save"):
        Scores.load(tmp_path / "model.safetensors")
    (tmp_path / "other.json").write_text('{"heads": [[1.0]], "method": "taylor"}')
    with pytest.raises(ScoresError, match="lacks 'geometry', 'head_ids', 'neuron_ids', 'num_examples'"):
        Scores.load(tmp_path / "other.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ScoresError, match="not an object"):
        Scores.load(tmp_path / "list.json")
    good = ImportanceScorer(make("bert"), "random").scores
    good.save(tmp_path / "s.safetensors")
    data = (tmp_path / "s.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 20])
    with pytest.raises(ScoresError, match="cannot read scores"):
        Scores.load(tmp_path / "cut.safetensors")


# ---------------------------------------------------------------- wrappers, checkpointing, copies
def test_reentrant_gradient_checkpointing_is_refused_before_anything_is_scored():
    """Reentrant checkpointing recomputes each layer inside the backward: all but the last layer scored zero.
    The scorer refuses it, at ``attach()`` or at the next forward when it is switched on later."""
    model = make("bert")
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    scorer = ImportanceScorer(model, "fisher")
    before = hooks_left(model)  # transformers' own, on the input embeddings
    with pytest.raises(RuntimeError, match="use_reentrant=False"):
        scorer.attach()
    assert not scorer.is_attached and hooks_left(model) == before
    model.eval()  # transformers checkpoints only in training mode: nothing to refuse
    with scorer:
        pass
    model.train()
    model.gradient_checkpointing_disable()
    inputs = batch("bert")
    with scorer:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        with pytest.raises(RuntimeError, match="use_reentrant=False"):
            model(**inputs)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(**inputs).loss.backward()
    assert scorer.scores.num_examples == 4
    assert all(h.sum() > 0 for h in scorer.scores.heads)


def test_compiled_model_commits_each_backward_once():
    """Under ``torch.compile`` each scored activation started its own pass: examples counted once per
    activation and a NaN backward skipped once per activation."""
    model = make("bert")
    model.train()
    batches = [batch("bert", seed=seed) for seed in (1, 2)]
    ref = ImportanceScorer(model, "taylor")
    with ref:
        model(**batches[0]).loss.backward()
    compiled = torch.compile(model, backend="eager")
    scorer = ImportanceScorer(compiled, "taylor")
    with scorer:
        compiled(**batches[0]).loss.backward()
        (compiled(**batches[1]).loss * float("nan")).backward()
    assert (scorer.num_examples, scorer.skipped_batches) == (4, 1)
    assert_same_scores(ref.scores, scorer.scores, rtol=1e-4, atol=1e-7)


def test_scorer_on_a_ddp_wrapped_model():
    import gc
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    model = make("bert")
    model.train()
    inputs = batch("bert")
    ref = ImportanceScorer(model, "taylor")
    with ref:
        model(**inputs).loss.backward()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    ddp = scorer = None
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        scorer = ImportanceScorer(ddp, "taylor")
        with scorer:
            ddp(**inputs).loss.backward()
        assert_same_scores(ref.scores, scorer.scores, rtol=1e-4, atol=1e-7)
        assert not hooks_left(model)
        assert ImportanceScorer(ddp, "magnitude").scores.heads[0].shape == (4,)
    finally:
        # DDP's reducer holds the process group: freed after destroy_process_group, gloo's destructor once hung
        # the suite joining its threads, so it goes first
        del ddp, scorer
        gc.collect()
        dist.destroy_process_group()


def test_deepcopy_of_the_model_while_attached():
    """``copy.deepcopy(model)`` (a teacher, a dense copy) inside ``with scorer:`` works, and the copy does not
    feed the scorer."""
    import copy

    model = make("bert")
    model.train()
    inputs = batch("bert")
    scorer = ImportanceScorer(model, "taylor")
    with scorer:
        twin = copy.deepcopy(model)
        twin(**inputs).loss.backward()
        assert scorer.num_examples == 0
        model(**inputs).loss.backward()
    assert scorer.num_examples == 4
    assert not hooks_left(model)
