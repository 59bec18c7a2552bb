"""Calibration data for the retraining-free path: batches on the model's device, and the loss they score.

The data is unlabelled unless the batches say otherwise. ``model_loss`` takes, in order: a supplied
``loss_fn(model, batch)``; the model's own loss when the batch has ``labels``; the causal-LM loss of the
batch's own tokens (padding ignored) for a causal LM; otherwise, for a classifier, the cross-entropy
against the model's own predictions (the Fisher information of its predictive distribution, as an
"empirical Fisher" needs no labels). Anything else needs labels or a ``loss_fn``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

LossFn = Callable[[nn.Module, dict], torch.Tensor]


class CalibrationError(ValueError):
    """Calibration data that cannot be used: an empty loader, a batch that is no mapping, no usable loss."""


def check_count(
    name: str, value, *, minimum: int = 1, hint: str = "", error: type[Exception] = CalibrationError
) -> int | None:
    """``value`` as an ``int`` (numpy integers too), or None (all); anything else, bools and numbers below
    ``minimum`` among them, raises ``error`` naming ``name`` (and ``hint``). Callers check every count before
    any work."""
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= minimum:
        return int(value)
    raise error(f"{name} must be an integer >= {minimum} or None (all), got {value!r}{hint}")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def calibration_batches(
    loader: Iterable, model: nn.Module, *, max_batches: int | None = None, what: str = "calibration"
) -> Iterator[dict]:
    """Yield up to ``max_batches`` batches of ``loader`` as dicts of tensors on ``model``'s device.

    Raises ``CalibrationError`` if the loader yields no batch, or a batch that is not a mapping of
    model inputs (``input_ids``, ``attention_mask``, ...).
    """
    max_batches = check_count("max_batches", max_batches)
    device = _device(model)
    count = 0
    for batch in loader:
        if max_batches is not None and count >= max_batches:
            break
        if not isinstance(batch, Mapping):
            raise CalibrationError(
                f"{what} batches must be dicts of model inputs (input_ids, attention_mask, ...), got "
                f"{type(batch).__name__}: use a DataLoader with a transformers data collator"
            )
        count += 1
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if count == 0:
        raise CalibrationError(
            f"the {what} loader yielded no batch: give a DataLoader over at least one example "
            "(an empty dataset, or drop_last=True with fewer examples than the batch size?)"
        )


def model_inputs(batch: Mapping) -> dict:
    """The batch without its labels: what a forward that needs no loss takes."""
    return {k: v for k, v in batch.items() if k not in ("labels", "label", "label_ids")}


def token_mask(batch: Mapping) -> torch.Tensor:
    """[batch, seq] booleans of the real (non-padding) tokens: the ``attention_mask``, else every position of
    ``input_ids`` or ``inputs_embeds``."""
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.bool()
    for key in ("input_ids", "inputs_embeds"):
        x = batch.get(key)
        if isinstance(x, torch.Tensor) and x.dim() >= 2:
            return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    raise CalibrationError(
        f"calibration batches need input_ids or inputs_embeds (and an attention_mask where they are padded); "
        f"this one has {sorted(batch)}"
    )


def _is_causal_lm(model: nn.Module) -> bool:
    name = type(model).__name__
    return "ForCausalLM" in name or "LMHeadModel" in name


def check_loss_inputs(model: nn.Module, batch: Mapping, loss_fn: LossFn | None = None) -> None:
    """Raise ``CalibrationError`` saying what to pass when ``model_loss`` cannot make a loss for ``batch``
    (without running the model: callers check every batch before any change)."""
    if loss_fn is not None or "labels" in batch:
        return
    name = type(model).__name__
    if _is_causal_lm(model):
        if not isinstance(batch.get("input_ids"), torch.Tensor):
            raise CalibrationError(
                f"unlabelled batches of a {name} are scored on predicting their own tokens, which needs "
                f"input_ids; this batch has {sorted(batch)}: add labels (token ids, -100 where padded) or give "
                "a loss_fn(model, batch) -> scalar tensor"
            )
        return
    if "ForSequenceClassification" in name and getattr(model.config, "problem_type", None) != "regression":
        return
    raise CalibrationError(
        f"cannot make a loss for unlabelled batches of a {name}: give batches with 'labels' (e.g. a masked-LM "
        "collator for a masked LM) or a loss_fn(model, batch) -> scalar tensor"
    )


def model_loss(model: nn.Module, batch: dict, loss_fn: LossFn | None = None) -> torch.Tensor:
    """The scalar loss whose gradients score units on this batch (see the module docstring)."""
    if loss_fn is not None:
        return loss_fn(model, batch)
    if "labels" in batch:
        loss = model(**batch).loss
        if loss is None:
            raise CalibrationError(f"{type(model).__name__} returned no loss for a batch with labels: give a loss_fn")
        return loss
    check_loss_inputs(model, batch)
    inputs = model_inputs(batch)
    if _is_causal_lm(model):
        labels = inputs["input_ids"].clone()
        mask = inputs.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(mask == 0, -100)  # padding counts for nothing
        return model(**inputs, labels=labels).loss
    logits = model(**inputs).logits  # a classifier (check_loss_inputs refused anything else)
    pseudo = logits.detach().argmax(-1)  # the model's own predictions stand in for labels
    return nn.functional.cross_entropy(logits.float(), pseudo)
