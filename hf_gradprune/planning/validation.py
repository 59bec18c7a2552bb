"""The one check of a plan's targets (sparsities, budgets) and options, ``PlanError``, and ``plain_json`` (a plan's
or config's values as plain JSON). The bottom of ``planning``: every other module of it may raise ``PlanError``.
"""

from __future__ import annotations

import math
import numbers

from ..units import ATTENTION_UNITS, HEAD


class PlanError(ValueError):
    """A plan that cannot be made or does not fit the model."""


# New plans keep FFN widths that are multiples of this (or a layer's live width): on a GPU, odd widths ran slower
# than the dense model (BERT-base 0.78x at 25% of FLOPs removed) where the same plans rounded to 64 ran 1.14-1.25x.
# ``PruningPlan.from_scores``, ``GradPruneConfig``, the command line and ``prune_oneshot`` all default to it.
DEFAULT_FFN_MULTIPLE_OF = 64


TARGET_NAMES = ("head_sparsity", "ffn_sparsity")
BUDGET_NAMES = ("flops_budget", "params_budget", "latency_budget")
RANKINGS = ("global", "per_layer")
BUDGET_SPLITS = ("ratio", "normalized")


def _is_int(value) -> bool:
    # numbers.Integral admits numpy integers too (a value read from an array or a sweep); bool is no count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate_targets(
    head_sparsity=None,
    ffn_sparsity=None,
    flops_budget=None,
    params_budget=None,
    latency_budget=None,
    *,
    required: bool = True,
) -> None:
    """The one check of pruning targets (``PruningPlan.from_scores`` and ``GradPruneConfig`` both call it).

    Each target is a fraction of the original model in [0, 1). Give ``head_sparsity`` and/or
    ``ffn_sparsity``, or exactly one of ``flops_budget`` / ``params_budget`` / ``latency_budget``; ``required``
    asks for at least one. Raises ``PlanError``.
    """
    given = {
        "head_sparsity": head_sparsity,
        "ffn_sparsity": ffn_sparsity,
        "flops_budget": flops_budget,
        "params_budget": params_budget,
        "latency_budget": latency_budget,
    }
    for name, value in given.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
            raise PlanError(f"{name} must be a fraction in [0, 1) of the original model, got {value!r}")
    named = [k for k, v in given.items() if v is not None]
    budgets = [k for k in named if k in BUDGET_NAMES]
    if budgets and len(named) > 1:
        others = ", ".join(k for k in named if k != budgets[0])
        raise PlanError(
            f"{budgets[0]} cannot be combined with {others}: give head_sparsity and/or ffn_sparsity, "
            "or one budget alone"
        )
    if required and not named:
        raise PlanError(
            "give a target: head_sparsity and/or ffn_sparsity, or flops_budget, params_budget or latency_budget"
        )


def validate_options(
    *,
    ranking: str = "global",
    min_heads_per_layer: int = 0,
    ffn_multiple_of: int = DEFAULT_FFN_MULTIPLE_OF,
    seq_len: int = 128,
    num_heads: int | None = None,
    attention_unit: str = HEAD,
    uniform: bool = False,
    heads_kept: int | None = None,
    budget_split: str | None = None,
    has_budget: bool | None = None,
    balanced: bool = False,
    min_ffn_per_layer: float = 0.0,
) -> None:
    """The one check of plan options; ``num_heads`` (heads per layer of the original model) when known;
    ``has_budget`` whether a FLOPs/parameter/latency budget is given (None: not known here)."""
    if ranking not in RANKINGS:
        raise PlanError(f"ranking must be one of {', '.join(map(repr, RANKINGS))}, not {ranking!r}")
    if attention_unit not in ATTENTION_UNITS:
        raise PlanError(
            f"attention_unit must be one of {', '.join(map(repr, ATTENTION_UNITS))} (query heads within their "
            f"key/value groups, or whole key/value groups), not {attention_unit!r}"
        )
    if not isinstance(uniform, bool):
        raise PlanError(f"uniform must be True or False, got {uniform!r}")
    if not isinstance(balanced, bool):
        raise PlanError(f"balanced must be True or False, got {balanced!r}")
    if balanced and uniform:
        raise PlanError(
            "balanced=True and uniform=True are two shapes: uniform keeps the same heads and FFN width in every "
            "layer, balanced the same heads with FFN widths by score; choose one"
        )
    if balanced and heads_kept is not None:
        raise PlanError("heads_kept cannot be combined with balanced=True, which picks its own head count per layer")
    if not _is_int(min_heads_per_layer) or min_heads_per_layer < 0:
        raise PlanError(f"min_heads_per_layer must be an integer >= 0, got {min_heads_per_layer!r}")
    if num_heads is not None and min_heads_per_layer > num_heads:
        raise PlanError(f"min_heads_per_layer={min_heads_per_layer} is more than the {num_heads} heads each layer has")
    if (
        isinstance(min_ffn_per_layer, bool)
        or not isinstance(min_ffn_per_layer, numbers.Real)
        or not 0.0 <= min_ffn_per_layer < 1.0
    ):
        raise PlanError(
            "min_ffn_per_layer must be a fraction in [0, 1) of each layer's original FFN width (the neurons every "
            f"layer keeps at least; 0 turns the floor off), got {min_ffn_per_layer!r}"
        )
    if not _is_int(ffn_multiple_of) or ffn_multiple_of < 1:
        raise PlanError(f"ffn_multiple_of must be an integer >= 1, got {ffn_multiple_of!r}")
    if not _is_int(seq_len) or seq_len < 1:
        raise PlanError(
            "seq_len (flops_seq_len in GradPruneConfig: the sequence length FLOPs are counted at) must be an "
            f"integer >= 1, got {seq_len!r}"
        )
    if budget_split is not None and budget_split not in BUDGET_SPLITS:
        raise PlanError(
            f"budget_split must be one of {', '.join(map(repr, BUDGET_SPLITS))} (score per unit cost as is, or "
            f"each kind's scores divided by its mean score per unit cost), not {budget_split!r}"
        )
    if budget_split is not None and has_budget is False:
        raise PlanError(
            f"budget_split={budget_split!r} splits a flops_budget or params_budget between heads and neurons: "
            "give one, or leave budget_split unset"
        )
    if heads_kept is None:
        return
    if not _is_int(heads_kept) or heads_kept < 0:
        raise PlanError(f"heads_kept must be an integer >= 0 (query heads kept in total), got {heads_kept!r}")
    if has_budget is False:
        raise PlanError(
            "heads_kept fixes how many heads a flops_budget or params_budget keeps; give one of those budgets "
            "(for a head count alone, use head_sparsity)"
        )
    if uniform:
        raise PlanError("heads_kept cannot be combined with uniform=True, which picks its own head count per layer")
    if budget_split is not None:
        raise PlanError(
            f"heads_kept fixes the split between heads and neurons; leave budget_split unset (not {budget_split!r})"
        )


def plain_json(value, name: str):
    """``value`` with NumPy / torch scalars made plain Python numbers, so that a config or plan holding it saves
    as JSON; anything JSON cannot hold is a ``PlanError`` naming where it is (``name``)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise PlanError(f"{name} has keys that are not strings: {sorted(map(repr, value))[:5]}; JSON needs strings")
        return {k: plain_json(v, f"{name}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # NumPy bool_, 0-d arrays and tensors
        return plain_json(value.item(), name)
    raise PlanError(f"{name} is a {type(value).__name__} ({value!r:.60}), which JSON cannot hold; give a plain value")


def ffn_floor(intermediate_size: int, fraction: float, multiple: int = 1) -> int:
    """Neurons every layer keeps under ``min_ffn_per_layer=fraction``: ``fraction`` of the original width
    ``intermediate_size``, rounded up, then up to a ``multiple`` (a layer whose live width is below it keeps all it
    has: callers take ``min(floor, live)``). 0 when the floor is off."""
    if not fraction:
        return 0
    count = math.ceil(fraction * intermediate_size - 1e-9)
    return -(-count // multiple) * multiple
