"""Stage 3b, pruning without retraining: calibration batches and losses, the budget search (candidate plans
measured with units gated off), least-squares reconstruction, and ``prune_oneshot``, which runs them around
``surgery.prune_model``.

May import: the pipeline below it (``units``, ``modeling_gradprune``, ``architectures``, ``state``, ``scoring``,
``planning``, ``surgery``). Not ``folders``, ``deploy``, ``training``, ``reports`` or ``cli``.
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
