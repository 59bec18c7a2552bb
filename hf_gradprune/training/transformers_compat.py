"""The one place hf_gradprune bridges the transformers releases it supports (pyproject.toml's floor and up).

``Trainer.training_step`` divides the loss by the gradient accumulation steps unless the loss is already
scaled for them. transformers 5.19 added the attribute ``Trainer.loss_is_scaled_for_ga`` to say so; 5.17 and
5.18 decide it alone: they divide exactly when ``num_items_in_batch`` is None (or the model takes no loss
kwargs) and there is no ``compute_loss_func``. ``tests/test_transformers_compat.py`` runs both rules.
"""

from __future__ import annotations

from transformers import Trainer

# transformers >= 5.19: the Trainer can be told whether compute_loss's result is scaled for accumulation
HAS_LOSS_SCALE_FLAG = hasattr(Trainer, "loss_is_scaled_for_ga")


def loss_scale_setting(trainer) -> bool | None:
    """What the user (or a subclass) set ``loss_is_scaled_for_ga`` to; None where the release has no such flag."""
    return getattr(trainer, "loss_is_scaled_for_ga", None) if HAS_LOSS_SCALE_FLAG else None


def restore_loss_scale_setting(trainer, value: bool | None) -> None:
    """Put back what ``loss_scale_setting`` read (nothing to do where the release has no flag)."""
    if HAS_LOSS_SCALE_FLAG:
        trainer.loss_is_scaled_for_ga = value


def trainer_divides_per_batch_loss(trainer) -> bool:
    """Make ``trainer.training_step`` divide a per-micro-batch mean loss (``num_items_in_batch=None``) by the
    accumulation steps. Returns False where this release cannot be told (5.17/5.18 with a
    ``compute_loss_func``): the caller must then divide the loss itself."""
    if HAS_LOSS_SCALE_FLAG:
        trainer.loss_is_scaled_for_ga = False
        return True
    return getattr(trainer, "compute_loss_func", None) is None
