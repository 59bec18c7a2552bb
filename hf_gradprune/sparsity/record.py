"""What a sparsified model's config records: ``config.gradprune["weight_sparsity"]`` (pattern, sparsity, method,
scope, the matrices covered). Plain data only: nothing in it is ever executed or used to pick code."""

from __future__ import annotations

from ..modeling_gradprune import CONFIG_KEY
from ..state import unwrap_model
from .masks import matrix_sparsity
from .patterns import parse_pattern
from .targets import WeightTarget

SPARSITY_KEY = "weight_sparsity"


def record_weight_sparsity(
    model, targets: list[WeightTarget], *, pattern, sparsity: float, method: str, scope: str | None
) -> dict:
    """Write the record into ``model.config`` (keeping what else the pruning record holds) and return it."""
    config = unwrap_model(model).config
    measured = matrix_sparsity(targets)["sparsity"]
    info = {
        "pattern": parse_pattern(pattern).name,
        "sparsity": float(sparsity),
        "measured": round(measured, 6),
        "method": str(method),
        "scope": scope if not parse_pattern(pattern).is_nm else None,
        "targets": [t.name for t in targets],
    }
    record = dict(getattr(config, CONFIG_KEY, None) or {})
    record[SPARSITY_KEY] = info
    setattr(config, CONFIG_KEY, record)
    return info


def recorded_weight_sparsity(config) -> dict | None:
    """The record, if the config holds one."""
    record = getattr(config, CONFIG_KEY, None) or {}
    return record.get(SPARSITY_KEY) if isinstance(record, dict) else None
