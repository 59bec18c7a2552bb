"""What a sparsified model's config records: ``config.gradprune["weight_sparsity"]`` (pattern, sparsity, measured,
method, scope, the matrices covered, and how a folder stores them). Plain data only: read back, every field is
checked (``check_sparsity_record``); nothing in it is ever executed or used to pick code (the pattern is parsed)."""

from __future__ import annotations

import numbers

from transformers.utils import logging

from ..modeling_gradprune import (
    CONFIG_KEY,
    DENSE,
    FORMAT_REQUIRES,
    FORMAT_VERSION,
    SPARSITY_KEY,
    STORAGE_FORMATS,
    FolderFormatError,
    check_format,
)
from ..state import unwrap_model
from .masks import matrix_sparsity, satisfies_nm
from .patterns import SCOPES, parse_pattern
from .targets import WeightTarget, weight_targets

logger = logging.get_logger(__name__)

__all__ = [
    "SPARSITY_KEY",
    "check_sparsity_record",
    "record_weight_sparsity",
    "recorded_weight_sparsity",
    "refresh_weight_sparsity_record",
]


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
        "storage": DENSE,  # a model in memory is dense; save_pruned(sparse_format="bitmask") writes "bitmask"
    }
    check_sparsity_record(info)
    record = dict(getattr(config, CONFIG_KEY, None) or {})
    record.setdefault("format_version", FORMAT_VERSION)  # dense weights: the format every release reads
    record.setdefault("requires", FORMAT_REQUIRES)
    record[SPARSITY_KEY] = info
    setattr(config, CONFIG_KEY, record)
    return info


def _refuse(field: str, value, what: str):
    raise FolderFormatError(
        f"config.json's {CONFIG_KEY}.{SPARSITY_KEY}.{field} is {value!r}, not {what}: the config was edited or "
        "damaged; restore it or re-save the folder from the model"
    )


def _fraction(field: str, value, *, below_one: bool) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value <= 1
    if not ok or (below_one and value == 1):
        _refuse(field, value, "a fraction in [0, 1)" if below_one else "a fraction in [0, 1]")


def check_sparsity_record(info) -> dict:
    """Raise ``FolderFormatError`` (naming the field) unless ``info`` is a well-formed weight-sparsity record; return
    it. Keys this reader does not know are left alone (a later release may add some)."""
    if not isinstance(info, dict):
        raise FolderFormatError(
            f"config.json's {CONFIG_KEY}.{SPARSITY_KEY} is a {type(info).__name__}, not a record: the config was "
            "edited or damaged; restore it or re-save the folder from the model"
        )
    missing = [k for k in ("pattern", "sparsity", "method", "targets") if k not in info]
    if missing:
        _refuse(missing[0], None, "present (every record has pattern, sparsity, method and targets)")
    try:
        pattern = parse_pattern(info["pattern"]) if isinstance(info["pattern"], str) else None
    except ValueError:
        pattern = None
    if pattern is None:
        _refuse("pattern", info["pattern"], "'unstructured' or 'N:M'")
    _fraction("sparsity", info["sparsity"], below_one=True)
    if "measured" in info:
        _fraction("measured", info["measured"], below_one=False)
    method = info["method"]
    if not isinstance(method, str) or not method or len(method) > 64 or not method.isprintable():
        _refuse("method", method, "the name of a weight score")
    if info.get("scope") is not None and info["scope"] not in SCOPES:
        _refuse("scope", info["scope"], f"one of {', '.join(SCOPES)} or null")
    targets = info["targets"]
    if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
        _refuse("targets", targets, "a list of module names")
    if len(set(targets)) != len(targets):
        _refuse("targets", targets, "a list of distinct module names")
    if info.get("storage", DENSE) not in STORAGE_FORMATS:
        _refuse("storage", info["storage"], f"one of {', '.join(STORAGE_FORMATS)}")
    return info


def recorded_weight_sparsity(config) -> dict | None:
    """The record, checked (``FolderFormatError`` for a malformed one, or a pruning record of a newer format), if
    the config holds one."""
    record = getattr(config, CONFIG_KEY, None)
    if not record:
        return None
    check_format(record)
    info = record.get(SPARSITY_KEY)
    return None if info is None else check_sparsity_record(info)


def refresh_weight_sparsity_record(model, old: dict | None) -> None:
    """Carry a weight-sparsity record over a unit cut (``prune_model`` rewrites the pruning record): the zeros of
    the kept weights stay, so the record stays, re-measured. An N:M pattern a cut split (FFN neurons taken out of
    a down projection's groups) is recorded as ``unstructured`` from then on, with a warning: sparsify again."""
    if not old:
        return
    model = unwrap_model(model)
    names = list(old.get("targets", []))
    blocks = {t.name for t in weight_targets(model)}
    extras = [n for n in names if n not in blocks and _has_module(model, n)]
    targets = [t for t in weight_targets(model, extras) if t.name in set(names)]
    info = dict(old)
    info["measured"] = round(matrix_sparsity(targets)["sparsity"], 6) if targets else 0.0
    pattern = parse_pattern(info["pattern"])
    if pattern.is_nm and not all(satisfies_nm(t.matrix, pattern.n, pattern.m) for t in targets):
        logger.warning(
            "hf_gradprune: the cut split %s groups of the sparsified weights; the record now says unstructured "
            "(run weight sparsity again for %s)",
            pattern.name,
            pattern.name,
        )
        info.update(pattern="unstructured", scope="layer")
    getattr(model.config, CONFIG_KEY)[SPARSITY_KEY] = info


def _has_module(model, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False
