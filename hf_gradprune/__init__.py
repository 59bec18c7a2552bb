"""hf_gradprune: gradient-based pruning for transformers v5: attention heads and FFN neurons removed, weights zeroed
(unstructured or N:M), or both."""

from .architectures import FamilyAdapter, Geometry, UnsupportedModelError, register_adapter, supported_model_types
from .deploy.latency import LatencyTable, LatencyTableError, cached_latency_table, measure_latency_table
from .deploy.onnx_export import ExportReport, OnnxExportError, export_onnx
from .deploy.semi_structured import SemiStructuredError, SemiStructuredReport, to_semi_structured
from .dispatch import OffloadedModelError
from .folders.checkpoint import CheckpointError
from .folders.hub import FolderMismatchError, check_folder, load_pruned, save_pruned
from .folders.v4_compat import V4CheckpointError, convert_v4_checkpoint, prune_heads
from .modeling_gradprune import FolderFormatError
from .oneshot.budget_search import plan_gates, search_budget_split, unit_gates
from .oneshot.calibration import CalibrationError
from .oneshot.prune import OneShotReport, prune_oneshot
from .oneshot.reconstruct import ReconstructionError, ReconstructionReport, reconstruct
from .oneshot.reference import DenseLayers, DenseReferenceError
from .oneshot.weights import WeightPruningReport, prune_weights_oneshot
from .planning.plan import DEFAULT_FFN_MULTIPLE_OF, PlanError, PruningPlan
from .planning.rearrange import rearrange_plan
from .scoring.scorer import ImportanceScorer
from .scoring.scores import GRADIENT_METHODS, METHODS, Scores, ScoresError
from .sparsity import WEIGHT_METHODS, WeightMasks, WeightScorer, cubic_sparsity, masks_from_scores, weight_targets
from .state import RecordError
from .surgery import current_plan, prune_model, summarize
from .units import HEAD, KV_GROUP, NEURON, UnitCosts

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_FFN_MULTIPLE_OF",
    "GRADIENT_METHODS",
    "HEAD",
    "KV_GROUP",
    "METHODS",
    "NEURON",
    "WEIGHT_METHODS",
    "CalibrationError",
    "CheckpointError",
    "DenseLayers",
    "DenseReferenceError",
    "ExportReport",
    "FamilyAdapter",
    "FolderFormatError",
    "FolderMismatchError",
    "Geometry",
    "ImportanceScorer",
    "LatencyTable",
    "LatencyTableError",
    "OffloadedModelError",
    "OneShotReport",
    "OnnxExportError",
    "PlanError",
    "PruningPlan",
    "ReconstructionError",
    "ReconstructionReport",
    "RecordError",
    "Scores",
    "ScoresError",
    "SemiStructuredError",
    "SemiStructuredReport",
    "UnitCosts",
    "UnsupportedModelError",
    "V4CheckpointError",
    "WeightMasks",
    "WeightPruningReport",
    "WeightScorer",
    "cached_latency_table",
    "check_folder",
    "convert_v4_checkpoint",
    "cubic_sparsity",
    "current_plan",
    "export_onnx",
    "load_pruned",
    "masks_from_scores",
    "measure_latency_table",
    "plan_gates",
    "prune_heads",
    "prune_model",
    "prune_oneshot",
    "prune_weights_oneshot",
    "rearrange_plan",
    "reconstruct",
    "register_adapter",
    "save_pruned",
    "search_budget_split",
    "summarize",
    "supported_model_types",
    "to_semi_structured",
    "unit_gates",
    "weight_targets",
]

from .training.config import GradPruneConfig  # noqa: E402
from .training.trainer import GradPruneTrainer, distillation_loss  # noqa: E402

__all__ += ["GradPruneConfig", "GradPruneTrainer", "distillation_loss"]

from ._moved import install as _install_moved  # noqa: E402

_install_moved()  # the flat layout's module paths, for one release (warn)
