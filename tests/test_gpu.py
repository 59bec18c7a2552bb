"""The GPU checks of `make gpu-check` (part 1), on BERT and GPT-2 (the Llama family's are in test_llama.py).

They run on CUDA when it is there. Without CUDA they skip, except in the CPU dry run of the GPU check
(``HF_GRADPRUNE_GPU_DRY_RUN=1``, set by ``benchmarks/gpu/gpu_check.py --dry-run``), where the same code runs on the CPU:
bf16 and fp16 there are the CPU's kernels, and the fp16 GradScaler is torch's CPU GradScaler.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from conftest import batch, make, uneven_plan
from test_surgery import zeroed_reference
from trainer_helpers import make_trainer

from hf_gradprune import ImportanceScorer, Scores, current_plan, load_pruned, prune_model, save_pruned

DRY_RUN = os.environ.get("HF_GRADPRUNE_GPU_DRY_RUN") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else ("cpu" if DRY_RUN else None)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE is None, reason="needs CUDA (HF_GRADPRUNE_GPU_DRY_RUN=1 runs it on the CPU)"),
]
LOW = [torch.bfloat16, torch.float16]


def _inputs(family, seed=1, size=4):
    return {k: v.to(DEVICE) for k, v in batch(family, seed=seed, size=size).items()}


def _logits(model, inputs):
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


def test_surgery_on_device_equals_zeroed_reference_fp32(family):
    model = make(family).to(DEVICE)
    plan = uneven_plan(model)  # layer 0 loses every head; uneven FFN
    ref = zeroed_reference(model, plan)
    inputs = _inputs(family)
    prune_model(model, plan)
    assert {p.device.type for p in model.parameters()} == {DEVICE}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    torch.testing.assert_close(_logits(model, inputs), _logits(ref, inputs), atol=1e-4, rtol=1e-4)
    assert current_plan(model).heads == plan.heads and current_plan(model).neurons == plan.neurons


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_surgery_on_device_keeps_dtype(family, dtype):
    model = make(family).to(DEVICE, dtype)
    plan = uneven_plan(model)
    ref = zeroed_reference(model, plan)
    inputs = _inputs(family)
    prune_model(model, plan)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {(DEVICE, dtype)}
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} <= {dtype}
    out = _logits(model, inputs)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), _logits(ref, inputs).float(), atol=5e-2, rtol=5e-2)


def _score(model, family, autocast_dtype=None, n=2):
    scorer = ImportanceScorer(model, "taylor")
    with scorer, torch.autocast(DEVICE, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        for seed in range(n):
            model(**_inputs(family, seed=seed)).loss.backward()
            model.zero_grad(set_to_none=True)
    return scorer


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_scoring_in_low_precision_accumulates_in_float32(family, dtype):
    reference = _score(make(family).to(DEVICE), family).scores
    want = torch.cat([t.flatten() for t in reference.heads + reference.neurons])
    for how in ("weights", "autocast"):  # a model cast to dtype, and a float32 model under autocast (the Trainer's)
        model = make(family).to(DEVICE)
        scorer = _score(model.to(dtype), family) if how == "weights" else _score(model, family, autocast_dtype=dtype)
        state = scorer.state_dict()
        assert all(t.dtype == torch.float32 for t in state["heads"] + state["neurons"]), how  # the accumulators
        scores = scorer.scores
        assert scores.num_examples == reference.num_examples == 8 and scores.skipped_batches == 0, how
        got = torch.cat([t.flatten() for t in scores.heads + scores.neurons])
        assert got.dtype == torch.float32 and torch.isfinite(got).all(), how
        # Low-precision scores rank units like float32 ones (the sums themselves are float32).
        assert torch.corrcoef(torch.stack([got, want]))[0, 1] > 0.95, how
        assert (got.sum() / want.sum()).item() == pytest.approx(1.0, abs=0.15), how


def test_fp16_gradscaler_overflow_step_is_skipped(family):
    model = make(family).to(DEVICE).train()
    reference = _score(make(family).to(DEVICE), family, autocast_dtype=torch.float16, n=1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(DEVICE, init_scale=2.0**24)  # the first scaled backward overflows in fp16
    scorer = ImportanceScorer(model, "taylor")
    before = copy.deepcopy(model.state_dict())
    overflows = 0
    with scorer:
        for _ in range(40):  # the scaler halves its scale after every overflow, until a step goes through
            with torch.autocast(DEVICE, dtype=torch.float16):
                loss = model(**_inputs(family, seed=0)).loss
            scorer.loss_scale = float(scaler.get_scale())
            scaler.scale(loss).backward()
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            if scaler.get_scale() >= scale:
                break
            overflows += 1
            assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the step was skipped
    assert overflows >= 1
    scores = scorer.scores
    # A backward whose scored gradients overflowed is left out; one that overflowed only elsewhere (e.g. in the
    # embeddings' gradients, which the GradScaler checks too) has exact scores and counts.
    assert 1 <= scores.skipped_batches <= overflows
    counted = overflows + 1 - scores.skipped_batches
    assert scores.num_examples == 4 * counted
    got = torch.cat([t.flatten() for t in scores.heads + scores.neurons])
    want = torch.cat([t.flatten() for t in reference.scores.heads + reference.scores.neurons])
    assert torch.isfinite(got).all()
    # The scale is divided out: each counted backward adds what an unscaled fp16 backward on the same batch and
    # the same weights gives (every step before the last was skipped, so the weights never changed).
    torch.testing.assert_close(got, counted * want, rtol=0.1, atol=1e-3 * counted * float(want.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_save_reload_from_device_is_bit_exact(family, dtype, tmp_path):
    model = make(family).to(DEVICE, dtype)
    prune_model(model, uneven_plan(model))
    save_pruned(model, tmp_path / "pruned")
    reloaded = load_pruned(tmp_path / "pruned", dtype=dtype)
    a, b = model.state_dict(), reloaded.state_dict()
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key].cpu(), b[key].cpu()), key
    reloaded.to(DEVICE).eval()
    inputs = _inputs(family)
    # The weights are bit-exact; the outputs agree up to what a GPU kernel may vary from run to run.
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(_logits(reloaded, inputs), _logits(model.eval(), inputs), atol=tol, rtol=tol)


def test_trainer_fp16_scores_before_training_are_unscaled(tmp_path):
    """Found by this check (fixed in d10b5e5): the scores taken before training (``prune_step=0``) under fp16 kept
    the GradScaler's scale, since ``accelerator.backward`` multiplies the loss by it."""
    kwargs = dict(max_steps=1, prune_step=0, scoring_steps=2, per_device_train_batch_size=8, use_cpu=DEVICE == "cpu")
    runs = {}
    for name, extra in (("fp32", {}), ("fp16", {"fp16": True})):
        trainer = make_trainer(tmp_path / name, **kwargs, **extra)
        if name == "fp16" and trainer.accelerator.scaler is None:  # the CPU: accelerate has no fp16 GradScaler
            trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # so emulate one
        trainer.train()
        scores = Scores.load(tmp_path / name / "pruning" / "round-1-step-0" / "scores.safetensors")
        runs[name] = scores
    assert runs["fp16"].num_examples == runs["fp32"].num_examples == 16
    total = {k: sum(float(t.sum()) for t in s.heads + s.neurons) for k, s in runs.items()}
    assert total["fp16"] / total["fp32"] == pytest.approx(1.0, abs=0.2)
