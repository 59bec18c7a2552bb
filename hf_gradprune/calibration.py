"""Calibration data for the retraining-free path: batches on the model's device, and the loss they score.

The data is unlabelled unless the batches say otherwise. ``model_loss`` takes, in order: a supplied
``loss_fn(model, batch)``; the model's own loss when the batch has ``labels``; the causal-LM loss of the
batch's own tokens (padding ignored) for a causal LM; otherwise, for a classifier, the cross-entropy
against the model's own predictions (the Fisher information of its predictive distribution, as an
"empirical Fisher" needs no labels). Anything else needs labels or a ``loss_fn``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

LossFn = Callable[[nn.Module, dict], torch.Tensor]


class CalibrationError(ValueError):
    """Calibration data that cannot be used: an empty loader, a batch that is no mapping, no usable loss."""


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def calibration_batches(
    loader: Iterable, model: nn.Module, *, max_batches: int | None = None, what: str = "calibration"
) -> Iterator[dict]:
    """Yield up to ``max_batches`` batches of ``loader`` as dicts of tensors on ``model``'s device.

    Raises ``CalibrationError`` if the loader yields no batch, or a batch that is not a mapping of
    model inputs (``input_ids``, ``attention_mask``, ...).
    """
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise CalibrationError(f"max_batches must be an integer >= 1 or None, got {max_batches!r}")
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


def model_loss(model: nn.Module, batch: dict, loss_fn: LossFn | None = None) -> torch.Tensor:
    """The scalar loss whose gradients score units on this batch (see the module docstring)."""
    if loss_fn is not None:
        return loss_fn(model, batch)
    if "labels" in batch:
        loss = model(**batch).loss
        if loss is None:
            raise CalibrationError(f"{type(model).__name__} returned no loss for a batch with labels: give a loss_fn")
        return loss
    name = type(model).__name__
    inputs = model_inputs(batch)
    if "ForCausalLM" in name or "LMHeadModel" in name:
        labels = inputs["input_ids"].clone()
        mask = inputs.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(mask == 0, -100)  # padding counts for nothing
        return model(**inputs, labels=labels).loss
    if "ForSequenceClassification" in name and getattr(model.config, "problem_type", None) != "regression":
        logits = model(**inputs).logits
        pseudo = logits.detach().argmax(-1)  # the model's own predictions stand in for labels
        return nn.functional.cross_entropy(logits.float(), pseudo)
    raise CalibrationError(
        f"cannot make a loss for unlabelled batches of a {name}: give batches with 'labels' (e.g. a masked-LM "
        "collator for a masked LM) or a loss_fn(model, batch) -> scalar tensor"
    )
