"""Weight sparsity: zero individual weights of the blocks' linear layers (unstructured or N:M), by a weight score,
gradually during training or in one shot. Units (heads, neurons) are removed by ``surgery``; weights are zeroed
here, in place: the shapes stay."""

from .masks import WeightMasks, check_targets, masks_from_scores, matrix_sparsity, satisfies_nm
from .patterns import SCOPES, UNSTRUCTURED, SparsityPattern, check_scope, check_sparsity, parse_pattern
from .record import (
    SPARSITY_KEY,
    check_sparsity_record,
    record_weight_sparsity,
    recorded_weight_sparsity,
    refresh_weight_sparsity_record,
)
from .schedule import cubic_sparsity
from .targets import WeightTarget, weight_targets
from .weight_scores import GRADIENT_WEIGHT_METHODS, WEIGHT_METHODS, WeightScorer, check_weight_method

__all__ = [
    "GRADIENT_WEIGHT_METHODS",
    "SCOPES",
    "SPARSITY_KEY",
    "UNSTRUCTURED",
    "WEIGHT_METHODS",
    "SparsityPattern",
    "WeightMasks",
    "WeightScorer",
    "WeightTarget",
    "check_scope",
    "check_sparsity_record",
    "check_sparsity",
    "check_targets",
    "check_weight_method",
    "cubic_sparsity",
    "masks_from_scores",
    "matrix_sparsity",
    "parse_pattern",
    "record_weight_sparsity",
    "recorded_weight_sparsity",
    "refresh_weight_sparsity_record",
    "satisfies_nm",
    "weight_targets",
]
