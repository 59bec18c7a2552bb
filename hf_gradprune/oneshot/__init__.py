"""Stage 3b, pruning without retraining: calibration batches and losses, the scoring pass (micro-batches,
checkpointing), the budget search (candidate plans measured with units gated off), the layer-by-layer
calibration stream, the dense reference held off the device (``DenseLayers``), least-squares reconstruction on
the model's device, the step meter and report, and ``prune_oneshot``, which runs them around
``surgery.prune_model``; and one-shot weight sparsity (``prune_weights_oneshot``: magnitude, wanda, sparsegpt,
taylor, fisher on the same calibration stream), which ``prune_oneshot`` also runs after a unit cut (hybrid).

May import: the layers below it (``units``, ``modeling_gradprune``, ``architectures``, ``state``, ``scoring``,
``planning``, ``surgery``); not ``folders``, which sits beside it, nor anything above (``tests/test_layers.py``).
"""

from .calibration import CalibrationError
from .prune import OneShotReport, prune_oneshot
from .reconstruct import ReconstructionError, ReconstructionReport, reconstruct
from .reference import DenseLayers, DenseReferenceError
from .report import StepMeter
from .weights import WeightPruningReport, prune_weights_oneshot

__all__ = [
    "CalibrationError",
    "DenseLayers",
    "DenseReferenceError",
    "OneShotReport",
    "ReconstructionError",
    "ReconstructionReport",
    "StepMeter",
    "WeightPruningReport",
    "prune_oneshot",
    "prune_weights_oneshot",
    "reconstruct",
]
