"""The scoring pass of ``prune_oneshot`` at calibration sizes a GPU holds: micro-batches and checkpointing.

One backward per calibration batch holds every layer's activations for the whole batch, and a causal LM's
logits with their float32 copies (2,048 tokens x a 128k vocabulary: about 1 GB per sequence for each copy).
``score_calibration`` bounds that in two ways, each optional and each leaving the scores as they were:

- ``micro_batch_size``: each batch runs as chunks of at most that many sequences, one forward/backward each.
  The scorer sums per example, so a chunk only has to carry the whole batch's loss scale: the default losses
  are means over a count ``model_loss`` makes (target tokens for a causal LM, labelled positions for a masked
  or token classifier, examples for a sequence classifier), and each chunk's gradients are rescaled by its
  share of that count (``ImportanceScorer.loss_scale``). The chunks commit as one pass (``one_batch``).
  Bounds the activations and logits to those of ``micro_batch_size`` sequences.
- ``gradient_checkpointing``: transformers' non-reentrant checkpointing of every layer, for this pass only.
  Bounds the activations held through the backward to each layer's input, plus what the scorer keeps until its
  gradient arrives (the inputs of each layer's attention and FFN output projections), plus one layer's
  activations at a time during the recompute.

Either way the parameters are frozen for the pass: scores need the activations' gradients only, so no weight
gradient is made (one model's worth of memory, and about a third of the pass's arithmetic, saved).

Measured per token and layer of a Llama-3-8B shape (autograd's saved tensors in fp32, halved for bf16):
about 229 KiB were held before this module; 173 KiB with frozen weights (137 saved by autograd, 36 the scorer's
inputs of the two output projections, which a frozen linear layer no longer saves); 44 KiB with checkpointing
(8 KiB of layer input, the scorer's 36). The LM head adds about 4 GB per 2,048-token sequence at a 128k
vocabulary (bf16 logits, their float32 copy, its log-softmax and gradient). By that count Llama-3-8B (16 GB of
bf16 weights) at 2,048 tokens fits an 80 GB GPU with ``micro_batch_size=4, gradient_checkpointing=True``
(about 16 + 4 x (2.9 + 4) GB) or ``micro_batch_size=2`` alone (about 16 + 2 x (11.3 + 4) GB); not yet measured
on a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..scoring.scorer import ImportanceScorer
from ..scoring.scores import GRADIENT_METHODS, Scores
from ..state import pruning_state
from .calibration import (
    CalibrationError,
    LossFn,
    _is_causal_lm,
    check_count,
    check_loss_inputs,
    model_loss,
    token_mask,
)

# Heads whose transformers loss is a mean over the labels that are not -100 (or, for float labels, over examples).
LABEL_MEAN_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForMaskedLM", "ForMultipleChoice")


@dataclass
class ScorePass:
    """What ``score_calibration`` did.

    ``losses``: per batch, the unpruned model's loss in eval mode (``model_loss`` of the whole batch, summed
    from its micro-batches), NaN where not finite; empty for methods that take no gradients. ``tokens``: the
    real (non-padding) tokens of the batches scored (not skipped for NaN/inf), ``micro_batches``: the forwards that ran.
    """

    scorer: ImportanceScorer
    scores: Scores
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    micro_batches: int = 0


def check_options(micro_batch_size, gradient_checkpointing, loss_fn) -> int | None:
    """The micro-batch size as an int (or None); a clear error for a bad option or a ``loss_fn`` with micro-batches."""
    micro = check_count("micro_batch_size", micro_batch_size)
    if not isinstance(gradient_checkpointing, bool):
        raise TypeError(f"gradient_checkpointing must be True or False, got {gradient_checkpointing!r}")
    if micro is not None and loss_fn is not None:
        raise CalibrationError(
            "micro_batch_size splits each batch and rescales each part's loss to the whole batch's, which only the "
            "default losses allow: a loss_fn's average over examples and tokens is unknown. Pass "
            "micro_batch_size=None and give smaller batches instead"
        )
    return micro


def score_calibration(
    model: nn.Module,
    batches: Iterable[dict],
    method: str,
    loss_fn: LossFn | None = None,
    *,
    record: bool = False,
    micro_batch_size: int | None = None,
    gradient_checkpointing: bool = False,
    targets=None,
) -> ScorePass:
    """Score the live units of ``model`` on ``batches`` (dicts on the model's device) in eval mode.

    The model comes back as it was: its modes, ``.grad``, ``requires_grad``, checkpointing and ``use_cache``.
    ``record``: keep one row of gate gradients per batch (``ImportanceScorer.batch_gradients``).
    ``micro_batch_size``: run each batch as chunks of at most this many sequences (see the module docstring);
    the scores and losses are those of the whole batch. Only the default losses can be split: with a
    ``loss_fn`` nothing says how it averages over examples and tokens, so it is refused (give smaller batches).
    ``gradient_checkpointing``: checkpoint every layer (non-reentrant) during the pass, even in eval mode.
    ``targets``: a ``reference.DenseTargets`` that records reconstruction's dense targets from these forwards.

    Raises ``CalibrationError`` if the loss is NaN/inf on every batch; bad options raise before any forward.
    """
    micro = check_options(micro_batch_size, gradient_checkpointing, loss_fn)
    scorer = ImportanceScorer(model, method, record_batches=True) if record else ImportanceScorer(model, method)
    if method not in GRADIENT_METHODS:
        return ScorePass(scorer, scorer.scores)
    batches = list(batches)
    for b in batches:
        check_loss_inputs(model, b, loss_fn)
    # every split worked out (and any model it cannot split refused) before the first forward
    splits = [_split(model, b, micro) for b in batches]
    checkpointing = _checkpointing_modules(model) if gradient_checkpointing else []
    first_layer = pruning_state(model).layers[0]

    losses, tokens, forwards = [], 0, 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(_as_it_was(model))
        model.eval()
        stack.enter_context(_activation_gradients_only(model, first_layer))
        if checkpointing:
            stack.enter_context(_checkpointed(checkpointing))
        stack.enter_context(scorer)
        if targets is not None:
            stack.enter_context(targets.recording(model))
        for b, (batch, parts) in enumerate(zip(batches, splits)):
            skipped = scorer.skipped_batches
            recording = targets.batch(b, token_mask(batch).shape[0]) if targets is not None else None
            with recording or contextlib.nullcontext():
                if parts is None:  # one forward for the whole batch, as ImportanceScorer is used anywhere
                    loss = model_loss(model, batch, loss_fn)
                    _backward(loss)
                    forwards += 1
                    value = float(loss.detach())
                else:
                    value, ran = _micro_batches(model, batch, parts, scorer)
                    forwards += ran
            losses.append(value if math.isfinite(value) else math.nan)
            if scorer.skipped_batches == skipped:
                tokens += _real_tokens(batch)
    scorer.loss_scale = 1.0
    if scorer.num_examples == 0:
        raise CalibrationError(
            f"the loss was NaN or infinite on every calibration batch ({scorer.skipped_batches} batches): "
            "nothing can be scored; check the data (labels in range?) and the loss_fn"
        )
    return ScorePass(scorer, scorer.scores, losses, tokens, forwards)


def _real_tokens(batch: dict) -> int:
    """The batch's non-padding tokens; 0 for a batch without token ids or embeddings (a ``loss_fn``'s own data)."""
    try:
        return int(token_mask(batch).sum())
    except CalibrationError:
        return 0


def _backward(loss: torch.Tensor) -> None:
    if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
        raise CalibrationError(
            "the calibration loss does not depend on the model's layers (no gradient reaches them): the "
            "loss_fn must run the model on the batch and return a scalar tensor computed from its outputs"
        )
    loss.backward()


def _micro_batches(model, batch: dict, parts: list[tuple[slice, float]], scorer) -> tuple[float, int]:
    """Run ``batch`` as ``parts`` (slice, share of the loss count) as one scorer pass; its loss, and forwards run."""
    size = token_mask(batch).shape[0]
    total = 0.0
    ran = 0
    everything = all(share == 0 for _, share in parts)  # no target anywhere: NaN like the whole batch, skipped
    with scorer.one_batch(examples=size):
        for rows, share in parts:
            if share == 0 and not everything:
                continue  # nothing to predict in these sequences: no loss, and zero scores
            part = _rows(batch, rows, size)
            examples = rows.stop - rows.start
            # The scorer multiplies a pass's gradients by its examples (reduction="mean"): this chunk's loss is a
            # mean over its own count, so its gradients are `1 / share` times its part of the whole batch's.
            scorer.loss_scale = (examples / size) / share if share > 0 else 1.0
            loss = model_loss(model, part, None)
            _backward(loss)
            ran += 1
            total = total + (loss.detach().double() * share if share > 0 else loss.detach().double())
    return float(total), ran


def _rows(batch: dict, rows: slice, size: int) -> dict:
    """The batch's sequences ``rows``: every tensor whose first dimension is the batch's is sliced."""
    return {
        k: v[rows] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == size else v for k, v in batch.items()
    }


def _split(model, batch: dict, micro: int | None) -> list[tuple[slice, float]] | None:
    """The chunks of ``micro`` sequences and each one's share of the batch loss's count; None if one chunk."""
    if micro is None:
        return None
    counts = loss_counts(model, batch)
    size = counts.shape[0]
    if size <= micro:
        return None
    whole = float(counts.sum())
    rows = [slice(i, min(i + micro, size)) for i in range(0, size, micro)]
    return [(r, float(counts[r].sum()) / whole if whole > 0 else 0.0) for r in rows]


def batch_loss(model: nn.Module, batch: dict, loss_fn=None, micro_batch_size: int | None = None) -> torch.Tensor:
    """``model_loss(model, batch, loss_fn)``, run ``micro_batch_size`` sequences at a time and combined exactly
    (each chunk's loss weighted by its share of the batch's loss count), so a forward holds at most that many
    sequences' activations and logits. With a ``loss_fn`` or ``micro_batch_size=None`` the batch runs whole."""
    parts = None if loss_fn is not None else _split(model, batch, micro_batch_size)
    if parts is None:
        return model_loss(model, batch, loss_fn)
    size = token_mask(batch).shape[0]
    if all(share == 0 for _, share in parts):  # nothing to predict anywhere: NaN, as the whole batch's loss
        return model_loss(model, _rows(batch, parts[0][0], size), None)
    total = None
    for rows, share in parts:
        if share == 0:
            continue
        part = model_loss(model, _rows(batch, rows, size), None).double() * share
        total = part if total is None else total + part
    return total


def loss_counts(model: nn.Module, batch: dict) -> torch.Tensor:
    """Per sequence, what the default loss (``model_loss`` without a ``loss_fn``) averages over: the loss is
    the sum of per-item losses over the sum of these counts.

    A causal LM: its target tokens (labels, or the attention-masked ``input_ids``, shifted by one, not -100).
    A sequence / token / multiple-choice classifier or a masked LM with integer labels: the labels that are
    not -100; with float labels (regression, multi-label): every label. An unlabelled classifier: 1 each.
    Raises ``CalibrationError`` for a model whose loss this cannot tell.
    """
    size = token_mask(batch).shape[0]
    labels = batch.get("labels")
    name = type(model).__name__
    if _is_causal_lm(model):
        if labels is None:
            labels = batch["input_ids"]
            mask = batch.get("attention_mask")
            if mask is not None:
                labels = labels.masked_fill(mask == 0, -100)
        return (labels[:, 1:] != -100).sum(-1).cpu()
    if any(head in name for head in LABEL_MEAN_HEADS):
        if labels is None:  # the model's own predictions as labels, one per sequence
            return torch.ones(size, dtype=torch.long)
        flat = labels.reshape(size, -1)
        if flat.is_floating_point() or getattr(model.config, "num_labels", 2) == 1:
            return torch.full((size,), flat.shape[1], dtype=torch.long)
        return (flat != -100).sum(-1).cpu()
    raise CalibrationError(
        f"micro_batch_size cannot split batches of a {name}: how its loss averages over examples and tokens is "
        "unknown here. Pass micro_batch_size=None and give smaller batches"
    )


def _checkpointing_modules(model: nn.Module) -> list[nn.Module]:
    modules = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no module that transformers can checkpoint (no gradient_checkpointing "
            "attribute): pass gradient_checkpointing=False"
        )
    return modules


_ABSENT = object()


@contextlib.contextmanager
def _checkpointed(modules: list[nn.Module]):
    """Non-reentrant checkpointing on ``modules`` (those with a ``gradient_checkpointing`` flag) in eval mode.

    transformers checkpoints a layer only when ``self.gradient_checkpointing and self.training``: these modules
    alone are put in training mode (their submodules stay in eval mode, so dropout stays off), which is all that
    flag pair reads. The base model in training mode also drops its cache, which a recompute would write twice.
    ``gradient_checkpointing_enable`` is not used: it also hooks the input embeddings and is deprecated in v5.
    """
    saved = [
        (m, m.__dict__.get("gradient_checkpointing", _ABSENT), m.__dict__.get("_gradient_checkpointing_func", _ABSENT))
        for m in modules
    ]
    func = functools.partial(checkpoint, use_reentrant=False)
    try:
        for m in modules:
            m.gradient_checkpointing = True
            m._gradient_checkpointing_func = func
            m.training = True  # the modes are restored by _as_it_was
        yield
    finally:
        for m, flag, f in saved:
            for name, value in (("gradient_checkpointing", flag), ("_gradient_checkpointing_func", f)):
                if value is not _ABSENT:
                    setattr(m, name, value)
                elif name in m.__dict__:
                    delattr(m, name)


@contextlib.contextmanager
def _activation_gradients_only(model: nn.Module, first_layer: nn.Module):
    """Freeze every parameter and make the first layer's input require a gradient instead.

    The scores read the gradients of activations only; with the weights frozen autograd makes no weight
    gradient and keeps fewer tensors for the backward (a linear layer saves its input only for its weight's
    gradient). The hook is on the layer's ``__call__``, outside any checkpoint.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]

    def needs_grad(x):
        return isinstance(x, torch.Tensor) and x.is_floating_point() and not x.requires_grad

    def hook(module, args, kwargs):
        if args and needs_grad(args[0]):
            return (args[0].detach().requires_grad_(), *args[1:]), kwargs
        if not args and needs_grad(kwargs.get("hidden_states")):
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_()}
        return None

    handle = first_layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def _as_it_was(model: nn.Module):
    """Restore every module's mode, every parameter's ``.grad`` and the config's ``use_cache`` on exit.

    ``use_cache`` is off meanwhile: a scoring pass never decodes, and a cache would hold every layer's keys and
    values to the end of the forward (and make checkpointing drop it, with a warning).
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    config = getattr(model, "config", None)
    cache = getattr(config, "use_cache", _ABSENT)
    try:
        for p, _ in grads:
            p.grad = None
        if cache is not _ABSENT:
            config.use_cache = False
        yield
    finally:
        if cache is not _ABSENT:
            config.use_cache = cache
        for p, g in grads:
            p.grad = g
        for m, mode in modes:
            m.training = mode
