"""Stage 3b, pruning without retraining: calibration batches and losses, the budget search (candidate plans
measured with units gated off), least-squares reconstruction, and ``prune_oneshot``, which runs them around
``surgery.prune_model``.

May import: the layers below it (``units``, ``modeling_gradprune``, ``architectures``, ``state``, ``scoring``,
``planning``, ``surgery``); not ``folders``, which sits beside it, nor anything above (``tests/test_layers.py``).
"""

from .calibration import CalibrationError
from .prune import OneShotReport, prune_oneshot
from .reconstruct import ReconstructionError, ReconstructionReport, reconstruct

__all__ = [
    "CalibrationError",
    "OneShotReport",
    "ReconstructionError",
    "ReconstructionReport",
    "prune_oneshot",
    "reconstruct",
]
