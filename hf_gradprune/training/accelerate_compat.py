"""The one place hf_gradprune reaches into Accelerate's private state.

A prune replaces the optimizer (and, under DDP, the model wrapper) in the middle of training. Accelerate
keeps every object it prepared in lists it iterates later: ``unscale_gradients`` runs over every prepared
optimizer (fp16), ``save_state`` / ``load_state`` over every model and optimizer. A replaced object left
there is stepped, unscaled and saved with stale parameters. Accelerate has no public call that forgets one
object: ``free_memory()`` forgets all of them and also resets ``Accelerator.step``. So this module removes
replaced objects from those lists itself; ``tests/test_accelerate_compat.py`` fails if Accelerate renames
or reshapes them.
"""

from __future__ import annotations

# Accelerator attributes holding what ``prepare`` returned (accelerate 1.x).
PREPARED_LISTS = ("_models", "_optimizers", "_schedulers", "_dataloaders")


def forget_prepared(accelerator, *objects) -> None:
    """Make ``accelerator`` drop ``objects`` (models, optimizers, schedulers or dataloaders it prepared)."""
    import accelerate

    for name in PREPARED_LISTS:
        held = getattr(accelerator, name, None)
        if not isinstance(held, list):
            raise RuntimeError(
                f"accelerate {accelerate.__version__} has no list Accelerator.{name}: hf_gradprune's "
                "accelerate_compat.forget_prepared needs updating for this version"
            )
        held[:] = [o for o in held if not any(o is x for x in objects)]
