"""``PruningPlan``: which heads and FFN neurons each layer keeps. Pure data; knows no torch modules.

Indices are always those of the *original* (unpruned) model, so plans compose: a plan made from the
scores of an already pruned model keeps a subset of that model's units, still in original indices.
Sparsity and budget targets are fractions of the original model too, which is what an iterative
schedule needs (``head_sparsity=0.5`` means half of the original heads are gone, in total).
"""

from __future__ import annotations

import json
import math
import numbers
import operator
import os
from dataclasses import dataclass, field

from .architectures import Geometry, get_adapter
from .scores import Scores
from .units import HEAD, NEURON, Unit, UnitCosts


class PlanError(ValueError):
    """A plan that cannot be made or does not fit the model."""


@dataclass
class PruningPlan:
    geometry: Geometry
    heads: list[list[int]]  # kept original head ids per layer, ascending
    neurons: list[list[int]]  # kept original FFN neuron ids per layer, ascending
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.heads = [_unit_ids(h, HEAD, layer) for layer, h in enumerate(self.heads)]
        self.neurons = [_unit_ids(n, NEURON, layer) for layer, n in enumerate(self.neurons)]
        g = self.geometry
        if len(self.heads) != g.num_layers or len(self.neurons) != g.num_layers:
            raise PlanError(f"a plan for this model needs {g.num_layers} layers of heads and neurons")
        for layer, (h, n) in enumerate(zip(self.heads, self.neurons)):
            if len(set(h)) != len(h) or any(not 0 <= i < g.num_heads for i in h):
                raise PlanError(f"layer {layer}: head ids must be distinct and in [0, {g.num_heads}), got {h}")
            if len(set(n)) != len(n) or any(not 0 <= i < g.intermediate_size for i in n):
                raise PlanError(f"layer {layer}: neuron ids must be distinct and in [0, {g.intermediate_size})")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def full(cls, geometry: Geometry) -> PruningPlan:
        """Keep everything."""
        return cls(
            geometry,
            [list(range(geometry.num_heads)) for _ in range(geometry.num_layers)],
            [list(range(geometry.intermediate_size)) for _ in range(geometry.num_layers)],
        )

    @classmethod
    def from_scores(
        cls,
        scores: Scores,
        head_sparsity: float | None = None,
        ffn_sparsity: float | None = None,
        *,
        flops_budget: float | None = None,
        params_budget: float | None = None,
        ranking: str = "global",
        normalize_heads: bool = False,
        min_heads_per_layer: int = 0,
        ffn_multiple_of: int = 1,
        seq_len: int = 128,
    ) -> PruningPlan:
        """Remove the least important units.

        Targets (fractions of the *original* model, in [0, 1)): either ``head_sparsity`` and/or
        ``ffn_sparsity`` (fraction of heads / neurons removed), or one of ``flops_budget`` /
        ``params_budget`` (fraction of the transformer blocks' FLOPs / parameters removed, where heads
        and neurons compete by importance per FLOP or per parameter).

        ``ranking="global"`` compares units across layers; ``"per_layer"`` removes the same fraction from
        every layer. ``normalize_heads`` divides each layer's head scores by their L2 norm (Michel et al.).
        ``ffn_multiple_of`` rounds each layer's kept FFN width *up* to a multiple (hardware-friendly
        shapes), capped at the layer's live width: rounding never removes more than the target asks.
        """
        targets = {"head_sparsity": head_sparsity, "ffn_sparsity": ffn_sparsity}
        budgets = {"flops_budget": flops_budget, "params_budget": params_budget}
        validate_targets(**targets, **budgets)
        given_budgets = [k for k, v in budgets.items() if v is not None]
        validate_options(
            ranking=ranking,
            min_heads_per_layer=min_heads_per_layer,
            ffn_multiple_of=ffn_multiple_of,
            seq_len=seq_len,
            num_heads=scores.geometry.num_heads,
        )
        g = scores.geometry
        scores.validate()

        head_scores = [s.float().clone() for s in scores.heads]
        if normalize_heads:
            head_scores = [s / s.norm().clamp_min(1e-12) if s.numel() else s for s in head_scores]
        units = []
        for layer in range(g.num_layers):
            units += [Unit(layer, HEAD, i, float(v)) for i, v in zip(scores.head_ids[layer], head_scores[layer])]
            units += [Unit(layer, NEURON, i, float(v)) for i, v in zip(scores.neuron_ids[layer], scores.neurons[layer])]

        if given_budgets:
            costs = _unit_costs(g, seq_len)
            # All block FLOPs are in the units; parameters also count each layer's fixed ones (biases, norms).
            per_unit, fixed = (costs.flops(), 0) if flops_budget is not None else (costs.params(), costs.fixed_params)
            fraction = flops_budget if flops_budget is not None else params_budget
            removed = _remove_by_budget(units, g, per_unit, fixed, fraction, ranking, min_heads_per_layer)
        else:
            removed = set()
            if head_sparsity is not None:
                removed |= _remove_by_count(units, g, HEAD, head_sparsity, g.num_heads, ranking, min_heads_per_layer)
            if ffn_sparsity is not None:
                removed |= _remove_by_count(units, g, NEURON, ffn_sparsity, g.intermediate_size, ranking, 0)

        heads = [[] for _ in range(g.num_layers)]
        neurons = [[] for _ in range(g.num_layers)]
        for u in units:
            if u.key not in removed:
                (heads if u.kind == HEAD else neurons)[u.layer].append(u.id)
        if ffn_multiple_of > 1:
            neurons = _round_ffn(units, neurons, ffn_multiple_of)
        meta = {
            "method": scores.method,
            "num_examples": scores.num_examples,
            "ranking": ranking,
            "normalize_heads": normalize_heads,
            "min_heads_per_layer": min_heads_per_layer,
            "ffn_multiple_of": ffn_multiple_of,
            "seq_len": seq_len,
            **{k: v for k, v in {**targets, **budgets}.items() if v is not None},
        }
        return cls(g, heads, neurons, meta)

    # ------------------------------------------------------------------ algebra
    def intersect(self, other: PruningPlan) -> PruningPlan:
        """Units kept by both plans (what applying this one to a model at ``other`` keeps); this plan's meta."""
        if self.geometry != other.geometry:
            raise PlanError("cannot combine plans for different models")
        return PruningPlan(
            self.geometry,
            [sorted(set(a) & set(b)) for a, b in zip(self.heads, other.heads)],
            [sorted(set(a) & set(b)) for a, b in zip(self.neurons, other.neurons)],
            {**self.meta},  # the plan being applied describes how the result was made
        )

    def is_subset_of(self, other: PruningPlan) -> bool:
        return all(set(a) <= set(b) for a, b in zip(self.heads, other.heads)) and all(
            set(a) <= set(b) for a, b in zip(self.neurons, other.neurons)
        )

    # ------------------------------------------------------------------ accounting
    @property
    def num_heads(self) -> int:
        return sum(len(h) for h in self.heads)

    @property
    def num_neurons(self) -> int:
        return sum(len(n) for n in self.neurons)

    def block_params(self) -> int:
        """Parameters in the transformer blocks (attention + FFN + their norms) under this plan."""
        costs = _unit_costs(self.geometry, 1)
        return self.geometry.num_layers * costs.fixed_params + self._cost(costs.params())

    def block_flops(self, seq_len: int = 128) -> int:
        """Matmul FLOPs of the transformer blocks for one sequence of ``seq_len`` tokens."""
        validate_options(seq_len=seq_len)
        return int(seq_len * self._cost(_unit_costs(self.geometry, seq_len).flops()))

    def _cost(self, per_unit: dict[str, float]) -> float:
        return self.num_heads * per_unit[HEAD] + self.num_neurons * per_unit[NEURON]

    def flops_removed(self, seq_len: int = 128) -> float:
        """Fraction of the original model's block FLOPs (per ``seq_len``-token sequence) this plan removes."""
        full = PruningPlan.full(self.geometry).block_flops(seq_len)
        return 1.0 - self.block_flops(seq_len) / full

    def params_removed(self) -> float:
        """Fraction of the original model's block parameters this plan removes."""
        return 1.0 - self.block_params() / PruningPlan.full(self.geometry).block_params()

    def summary(self, seq_len: int = 128) -> str:
        """A readable table: heads and neurons kept per layer, block parameters and FLOPs before/after."""
        g, full = self.geometry, PruningPlan.full(self.geometry)
        lines = [f"{'layer':>5} {'heads kept':>11} {'FFN neurons kept':>17}"]
        for layer, (h, n) in enumerate(zip(self.heads, self.neurons)):
            lines.append(f"{layer:>5} {len(h):>5} / {g.num_heads:<4} {len(n):>8} / {g.intermediate_size:<6}")
        p0, p1 = full.block_params(), self.block_params()
        f0, f1 = full.block_flops(seq_len), self.block_flops(seq_len)
        lines.append(
            f"heads {full.num_heads} -> {self.num_heads}, FFN neurons {full.num_neurons} -> {self.num_neurons}"
        )
        lines.append(f"block parameters {p0:,} -> {p1:,} ({1 - p1 / p0:.1%} removed)")
        lines.append(
            f"block GFLOPs per sequence of {seq_len} {f0 / 1e9:.3f} -> {f1 / 1e9:.3f} ({1 - f1 / f0:.1%} removed)"
        )
        return "\n".join(lines)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return {"geometry": self.geometry.to_dict(), "heads": self.heads, "neurons": self.neurons, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: dict) -> PruningPlan:
        return cls(Geometry(**data["geometry"]), data["heads"], data["neurons"], dict(data.get("meta", {})))

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict())
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> PruningPlan:
        text = os.fspath(path_or_text)
        if not text.lstrip().startswith("{"):
            with open(text) as f:
                text = f.read()
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------- validation
TARGET_NAMES = ("head_sparsity", "ffn_sparsity")
BUDGET_NAMES = ("flops_budget", "params_budget")
RANKINGS = ("global", "per_layer")


def _is_int(value) -> bool:
    # numbers.Integral admits numpy integers too (a value read from an array or a sweep); bool is no count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate_targets(
    head_sparsity=None, ffn_sparsity=None, flops_budget=None, params_budget=None, *, required: bool = True
) -> None:
    """The one check of pruning targets (``PruningPlan.from_scores`` and ``GradPruneConfig`` both call it).

    Each target is a fraction of the original model in [0, 1). Give ``head_sparsity`` and/or
    ``ffn_sparsity``, or exactly one of ``flops_budget`` / ``params_budget``; ``required`` asks for at
    least one. Raises ``PlanError``.
    """
    given = {
        "head_sparsity": head_sparsity,
        "ffn_sparsity": ffn_sparsity,
        "flops_budget": flops_budget,
        "params_budget": params_budget,
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
        raise PlanError("give a target: head_sparsity and/or ffn_sparsity, or flops_budget or params_budget")


def validate_options(
    *,
    ranking: str = "global",
    min_heads_per_layer: int = 0,
    ffn_multiple_of: int = 1,
    seq_len: int = 128,
    num_heads: int | None = None,
) -> None:
    """The one check of plan options; ``num_heads`` (heads per layer of the original model) when known."""
    if ranking not in RANKINGS:
        raise PlanError(f"ranking must be one of {', '.join(map(repr, RANKINGS))}, not {ranking!r}")
    if not _is_int(min_heads_per_layer) or min_heads_per_layer < 0:
        raise PlanError(f"min_heads_per_layer must be an integer >= 0, got {min_heads_per_layer!r}")
    if num_heads is not None and min_heads_per_layer > num_heads:
        raise PlanError(f"min_heads_per_layer={min_heads_per_layer} is more than the {num_heads} heads each layer has")
    if not _is_int(ffn_multiple_of) or ffn_multiple_of < 1:
        raise PlanError(f"ffn_multiple_of must be an integer >= 1, got {ffn_multiple_of!r}")
    if not _is_int(seq_len) or seq_len < 1:
        raise PlanError(
            "seq_len (flops_seq_len in GradPruneConfig: the sequence length FLOPs are counted at) must be an "
            f"integer >= 1, got {seq_len!r}"
        )


# ---------------------------------------------------------------------- ids and costs
def _unit_ids(ids, kind: str, layer: int) -> list[int]:
    """One layer's kept ids, sorted: Python, NumPy or torch integers; anything else (e.g. 1.7) is refused
    rather than truncated."""
    try:
        items = list(ids)
        if any(isinstance(i, bool) for i in items):
            raise TypeError
        return sorted(operator.index(i) for i in items)
    except TypeError:
        raise PlanError(f"layer {layer}: {kind} ids must be a list of integers, got {ids!r}") from None


def _unit_costs(g: Geometry, seq_len: int) -> UnitCosts:
    # The family's adapter knows what a head and a neuron cost; the plan only does the arithmetic.
    return get_adapter(g.model_type).unit_costs(g, seq_len)


def _order(units):
    # Ascending importance; ties broken by position so plans are deterministic.
    return sorted(units, key=lambda u: (u.score, u.layer, u.id))


def _remove_by_count(units, g, kind, sparsity, per_layer_total, ranking, min_keep):
    live = [u for u in units if u.kind == kind]
    removed = set()
    if ranking == "per_layer":
        keep_per_layer = per_layer_total - math.floor(sparsity * per_layer_total + 0.5)
        for layer in range(g.num_layers):
            ordered = _order([u for u in live if u.layer == layer])
            excess = len(ordered) - max(keep_per_layer, min_keep)
            removed |= {u.key for u in ordered[: max(excess, 0)]}
        return removed
    keep_total = g.num_layers * per_layer_total - math.floor(sparsity * g.num_layers * per_layer_total + 0.5)
    to_remove = len(live) - keep_total
    left = {layer: sum(1 for u in live if u.layer == layer) for layer in range(g.num_layers)}
    for u in _order(live):
        if to_remove <= 0:
            break
        if left[u.layer] <= min_keep:
            continue
        removed.add(u.key)
        left[u.layer] -= 1
        to_remove -= 1
    return removed


def _remove_by_budget(units, g, cost, fixed, fraction, ranking, min_heads):
    """Greedy by importance per unit of cost until ``fraction`` of the original block cost is gone.

    ``fixed`` is each layer's cost that no pruning removes (biases, norms); it counts in the total.
    """
    full_cost = g.num_layers * (fixed + g.num_heads * cost[HEAD] + g.intermediate_size * cost[NEURON])
    removed, heads_left = set(), {layer: 0 for layer in range(g.num_layers)}
    for u in units:
        heads_left[u.layer] += u.kind == HEAD

    def ratio(u):
        return (u.score / cost[u.kind], u.layer, u.kind, u.id)

    groups = [units] if ranking == "global" else [[u for u in units if u.layer == i] for i in range(g.num_layers)]
    for group in groups:
        group_full = full_cost if ranking == "global" else full_cost / g.num_layers
        layers = g.num_layers if ranking == "global" else 1
        current = layers * fixed + sum(cost[u.kind] for u in group)
        target = (1.0 - fraction) * group_full
        for u in sorted(group, key=ratio):
            if current <= target + 1e-9:
                break
            if u.kind == HEAD and heads_left[u.layer] <= min_heads:
                continue
            removed.add(u.key)
            current -= cost[u.kind]
            heads_left[u.layer] -= u.kind == HEAD
    return removed


def _round_ffn(units, neurons, multiple):
    """Round each layer's kept FFN width *up* to a multiple, capped at the layer's live width.

    Up, so rounding never removes more than the target asked; capped, so a layer narrower than the
    multiple (or whose live width is no multiple) keeps what it has. Re-added neurons go by score.
    """
    out = []
    for layer, kept in enumerate(neurons):
        live = [u for u in units if u.layer == layer and u.kind == NEURON]
        width = min(multiple * math.ceil(len(kept) / multiple), len(live))
        kept_set = set(kept)
        ranked = sorted(live, key=lambda u: (u.id in kept_set, u.score, -u.id), reverse=True)
        out.append(sorted(u.id for u in ranked[:width]))
    return out
