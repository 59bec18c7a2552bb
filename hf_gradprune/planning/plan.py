"""``PruningPlan``: which heads and FFN neurons each layer keeps. Pure data; knows no torch modules.

Indices are always those of the *original* (unpruned) model, so plans compose: a plan made from the
scores of an already pruned model keeps a subset of that model's units, still in original indices.
Sparsity and budget targets are fractions of the original model too, which is what an iterative
schedule needs (``head_sparsity=0.5`` means half of the original heads are gone, in total).
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import NamedTuple

from ..architectures import Geometry, get_adapter
from ..scoring.scores import Scores
from ..units import ATTENTION_UNITS, HEAD, KV_GROUP, NEURON, UnitCosts


class PlanError(ValueError):
    """A plan that cannot be made or does not fit the model."""


# New plans keep FFN widths that are multiples of this (or a layer's live width): on a GPU, odd widths ran slower
# than the dense model (BERT-base 0.78x at 25% of FLOPs removed) where the same plans rounded to 64 ran 1.14-1.25x.
# ``PruningPlan.from_scores``, ``GradPruneConfig``, the command line and ``prune_oneshot`` all default to it.
DEFAULT_FFN_MULTIPLE_OF = 64


@dataclass
class PruningPlan:
    geometry: Geometry
    heads: list[list[int]]  # kept original head ids per layer, ascending
    neurons: list[list[int]]  # kept original FFN neuron ids per layer, ascending
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.geometry, Geometry):
            raise PlanError(f"a plan's geometry must be a Geometry, got {type(self.geometry).__name__}")
        try:
            self.heads, self.neurons = self.geometry.kept_units(self.heads, self.neurons)
        except ValueError as e:
            raise PlanError(str(e)) from None
        self.meta = plain_json(self.meta, "meta")
        if not isinstance(self.meta, dict):
            raise PlanError(f"a plan's meta must be a dict, got {type(self.meta).__name__}")

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
        latency_budget: float | None = None,
        latency_table=None,
        ranking: str = "global",
        normalize_heads: bool = False,
        min_heads_per_layer: int = 0,
        ffn_multiple_of: int = DEFAULT_FFN_MULTIPLE_OF,
        seq_len: int = 128,
        attention_unit: str = HEAD,
        uniform: bool = False,
        heads_kept: int | None = None,
        budget_split: str | None = None,
        balanced: bool = False,
    ) -> PruningPlan:
        """Remove the least important units.

        Targets (fractions of the *original* model, in [0, 1)): either ``head_sparsity`` and/or
        ``ffn_sparsity`` (fraction of (query) heads / neurons removed), or one of ``flops_budget`` /
        ``params_budget`` (fraction of the transformer blocks' FLOPs / parameters removed, where heads
        and neurons compete by importance per FLOP or per parameter) / ``latency_budget``.

        ``latency_budget``: fraction of the dense model's forward time to remove, as ``latency_table``
        predicts it (a ``hf_gradprune.deploy.latency.LatencyTable``, or anything with ``predict(plan) -> ms``), i.e. at
        the table's batch x sequence on the table's machine. With ``ffn_multiple_of=1``, global ranking and no
        ``uniform`` / ``balanced`` / ``heads_kept``, units go by Kwon et al.'s lookup: least importance per
        millisecond saved, read from the table at the unit's layer's current count, until the prediction meets the
        fraction. Otherwise (the default ``ffn_multiple_of`` among them) the option's own allocation runs with heads
        and neurons priced at the table's mean ms per unit, widths rounded as below, and its budget is searched by
        bisection for the smallest cut whose predicted time removes at least the fraction. A fraction above what
        removing every head and neuron gives (embeddings, norms, ... stay) is a ``PlanError`` at once; one that
        min_heads_per_layer, uniform or balanced shapes prevent gives ``meta["budget_met"] = False``. ``meta``
        records the dense and predicted ms (``latency_dense_ms``, ``latency_predicted_ms``, ``latency_removed``)
        whenever a table is given.

        ``ranking="global"`` compares units across layers; ``"per_layer"`` removes the same fraction from
        every layer. ``normalize_heads`` divides each layer's head scores by their L2 norm (Michel et al.).
        ``ffn_multiple_of`` (default ``DEFAULT_FFN_MULTIPLE_OF`` = 64; 1 turns rounding off) makes every layer's
        kept FFN width a multiple of it or the layer's live width (a live width of 96 may keep 0, 64 or 96): odd
        widths can run slower than the dense model on a GPU. Each width is rounded to the *nearest* allowed width,
        then whole blocks are taken away (the block of least importance per neuron first; under
        ``ranking="per_layer"`` from the layer most above its own unrounded width) until the target holds again,
        and given back (most important first) while it still holds. So a rounded plan still removes at least what
        ``ffn_sparsity`` or the budget asks (``budget_met`` as without rounding), at most about one block per
        layer more. Heads are not rounded; under a budget they are chosen first and the neurons fill what they
        leave. ``uniform=True`` takes the widest allowed width (the same in every layer) that still meets the
        target, i.e. the unrounded width rounded down.

        Grouped-query attention (``geometry.num_key_value_heads < num_heads``): with ``attention_unit="head"``
        (the default) every key/value head stays while its layer keeps any head, and each group of a layer
        keeps the same number of query heads (its most important ones), as ``repeat_kv`` needs; with
        ``"kv_group"`` a unit is a key/value head with all its query heads, scored as one gate.

        ``uniform=True`` keeps the same number of query heads per group, key/value heads and FFN neurons in
        every layer (which ones still follow the scores), so that families whose config can say it (the
        Llama family) save a stock checkpoint. Under a budget it picks, among the per-layer head counts, the
        one that keeps the most importance once the FFN widths fill the rest of the budget (Kwon et al.);
        every layer keeps at least one head (or group) there.

        How a budget is split between heads and neurons (their scores are on different scales, e.g. Taylor's
        ``|sum a*g|`` makes heads look cheap per FLOP): ``budget_split="normalized"`` (the default for a budget,
        None) first divides each kind's scores by that kind's mean score per unit cost, so the split no longer
        depends on the scale between kinds; ``"ratio"`` removes the units of least raw score per unit cost,
        heads and neurons alike (measured: Taylor then keeps 3 of 72 heads at 50% of MiniLM's FLOPs and falls
        to chance, where ``"normalized"`` keeps 43 and 0.82; benchmarks/README.md).
        ``heads_kept=k`` (with a budget only) keeps the ``k`` most important (query) heads in total (globally,
        or spread as evenly as possible over layers under ``ranking="per_layer"``; at least
        ``min_heads_per_layer`` per layer), then removes the least important neurons (ranked among neurons
        only) until the budget is met. Under grouped-query attention heads go in atoms (slices of one query
        head per group, or whole groups), so the count kept is the nearest the atoms allow (``plan.num_heads``
        says it). ``search_budget_split`` (``budget_split.py``) picks ``k`` by calibration loss.

        ``balanced=True`` keeps the same number of attention atoms (query heads, or slices / groups under
        grouped-query attention) in every layer, like ``uniform``, but lets FFN widths differ by score, rounded as
        above for every head count it tries (so the rounding weighs in the choice). Under a budget the head count is
        the one keeping the most importance (each kind's scores divided by its mean score per unit cost, unless
        ``budget_split="ratio"``); every layer keeps some attention, as under ``uniform``.

        ``meta["budget_met"]`` (budgets only) says whether the plan removes at least the budget; it is False
        when the heads kept (or ``min_heads_per_layer``) cost more than the budget leaves even with every
        neuron removed (or, under a latency budget, when the shapes the options allow cannot reach it).
        """
        targets = {"head_sparsity": head_sparsity, "ffn_sparsity": ffn_sparsity}
        budgets = {"flops_budget": flops_budget, "params_budget": params_budget, "latency_budget": latency_budget}
        validate_targets(**targets, **budgets)
        has_budget = any(v is not None for v in budgets.values())
        validate_options(
            ranking=ranking,
            min_heads_per_layer=min_heads_per_layer,
            ffn_multiple_of=ffn_multiple_of,
            seq_len=seq_len,
            num_heads=scores.geometry.num_heads,
            attention_unit=attention_unit,
            uniform=uniform,
            heads_kept=heads_kept,
            budget_split=budget_split,
            has_budget=has_budget,
            balanced=balanced,
        )
        g = scores.geometry
        scores.validate()
        if latency_budget is not None and latency_table is None:
            raise PlanError(
                "latency_budget is a fraction of the time a latency table predicts: pass latency_table= (from "
                "hf_gradprune.deploy.latency: measure_latency_table, cached_latency_table or LatencyTable.load)"
            )
        latency_dense = None
        if latency_table is not None:
            try:  # a table of another model is refused here, before any work
                latency_dense = float(latency_table.predict(cls.full(g)))
            except ValueError as e:
                raise PlanError(f"latency_table: {e}") from e
            if not math.isfinite(latency_dense) or latency_dense <= 0:  # any object with predict(), not only ours
                raise PlanError(
                    f"latency_table predicts {latency_dense} ms for the dense model; a budget needs a finite time "
                    "above 0: measure the table again (measure_latency_table / cached_latency_table)"
                )
        if attention_unit == KV_GROUP and g.group_size > 1 and scores.groups is None:
            raise PlanError(
                "attention_unit='kv_group' needs scores of whole key/value groups, which these scores lack "
                "(saved by an older hf_gradprune?): score the model again with ImportanceScorer"
            )

        head_scores = [s.float().clone() for s in scores.heads]
        group_scores = None if scores.groups is None else [s.float().clone() for s in scores.groups]
        if normalize_heads:
            head_scores = [_unit_norm(s) for s in head_scores]
            group_scores = None if group_scores is None else [_unit_norm(s) for s in group_scores]
        atoms = []
        for layer in range(g.num_layers):
            layer_groups = None if group_scores is None else group_scores[layer]
            atoms += _attention_atoms(
                g, layer, scores.head_ids[layer], head_scores[layer], layer_groups, attention_unit
            )
            atoms += [
                _Atom(layer, NEURON, (i,), float(v)) for i, v in zip(scores.neuron_ids[layer], scores.neurons[layer])
            ]

        normalize = (budget_split or "normalized") == "normalized"

        def allocate(per_unit, per_kv, fixed, fraction):
            args = (atoms, g, per_unit, per_kv, fixed, fraction, ranking, min_heads_per_layer)
            if uniform:
                return _uniform_by_budget(*args, ffn_multiple_of)
            if balanced:
                return _balanced_by_budget(*args, ffn_multiple_of, normalize)
            if heads_kept is not None:
                removed = _keep_heads_then_neurons(*args, heads_kept)
            else:
                removed = _remove_by_budget(*args, normalize=normalize)
            if ffn_multiple_of == 1:
                return removed
            # the heads stay as chosen; the neurons are rounded within what the budget leaves them
            head_cost = sum(a.cost(per_unit, per_kv) for a in atoms if a.kind == HEAD and a.key not in removed)
            room = _neuron_room(g, per_unit, per_kv, fixed, fraction, head_cost)
            return _round_neurons(atoms, g, removed, ffn_multiple_of, ranking, room)

        def kept(removed):
            heads = [[] for _ in range(g.num_layers)]
            neurons = [[] for _ in range(g.num_layers)]
            for atom in atoms:
                if atom.key not in removed:
                    (heads if atom.kind == HEAD else neurons)[atom.layer].extend(atom.ids)
            return heads, neurons

        budgets_given = [k for k, v in budgets.items() if v is not None]
        if latency_budget is not None:
            _check_latency_reachable(g, latency_table, latency_dense, latency_budget)
            if uniform or balanced or heads_kept is not None or ranking != "global" or ffn_multiple_of > 1:
                heads, neurons = _search_latency(g, latency_table, latency_dense, latency_budget, allocate, kept)
            else:
                removed = _remove_by_latency(
                    atoms, g, latency_table, latency_dense, latency_budget, min_heads_per_layer, normalize
                )
                heads, neurons = kept(removed)
        elif budgets_given:
            costs = _unit_costs(g, seq_len)  # only budgets need the family's costs
            # All block FLOPs are in the units; parameters also count each layer's fixed ones (biases, norms).
            per_unit = costs.flops() if flops_budget is not None else costs.params()
            per_kv = costs.kv_head_flops if flops_budget is not None else costs.kv_head_params
            fixed = 0 if flops_budget is not None else costs.fixed_params
            heads, neurons = kept(allocate(per_unit, per_kv, fixed, budgets[budgets_given[0]]))
        else:
            removed = set()
            for kind, sparsity, total in (
                (HEAD, head_sparsity, g.num_heads),
                (NEURON, ffn_sparsity, g.intermediate_size),
            ):
                if sparsity is not None:
                    min_keep = min_heads_per_layer if kind == HEAD else 0
                    even = uniform or (balanced and kind == HEAD)
                    rank = "per_layer" if even else ranking
                    removed |= _remove_by_count(atoms, g, kind, sparsity, total, rank, min_keep, even, ffn_multiple_of)
            if ffn_sparsity is not None and ffn_multiple_of > 1 and not uniform:  # uniform rounds in _remove_by_count
                removed = _round_neurons(atoms, g, removed, ffn_multiple_of, ranking)
            heads, neurons = kept(removed)
        meta = {
            "method": scores.method,
            "num_examples": scores.num_examples,
            "ranking": ranking,
            "normalize_heads": normalize_heads,
            "min_heads_per_layer": min_heads_per_layer,
            "ffn_multiple_of": ffn_multiple_of,
            "seq_len": seq_len,
            "attention_unit": attention_unit,
            "uniform": uniform,
            **{k: v for k, v in {**targets, **budgets}.items() if v is not None},
        }
        if balanced:
            meta["balanced"] = True
        if budgets_given:
            meta["budget_split"] = (
                "heads_kept" if heads_kept is not None else "uniform" if uniform else budget_split or "normalized"
            )
            if heads_kept is not None:
                meta["heads_kept"] = int(heads_kept)
        plan = cls(g, heads, neurons, meta)
        if latency_table is not None:
            predicted = float(latency_table.predict(plan))
            key = getattr(latency_table, "key", None)
            if callable(key):
                plan.meta["latency_table"] = {k: v for k, v in key().items() if k != "geometry"}
            plan.meta.update(
                latency_dense_ms=round(latency_dense, 4),
                latency_predicted_ms=round(predicted, 4),
                latency_removed=round(1 - predicted / latency_dense, 6) if latency_dense > 0 else 0.0,
            )
        if latency_budget is not None:
            done = 1 - predicted / latency_dense if latency_dense > 0 else 0.0
            plan.meta["budget_met"] = bool(done >= latency_budget - 1e-9)
        elif budgets_given:
            done = plan.flops_removed(seq_len) if flops_budget is not None else plan.params_removed()
            plan.meta["budget_met"] = bool(done >= budgets[budgets_given[0]] - 1e-9)
        if uniform and not plan.is_uniform():
            raise PlanError(
                "uniform=True cannot be met: the model's layers already differ in what they keep (an earlier "
                "non-uniform prune); prune it with uniform=False"
            )
        return plan

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

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads kept (each with at least one query head); ``num_heads`` without grouped-query attention."""
        return sum(len(self.kv_heads(layer)) for layer in range(self.geometry.num_layers))

    def kv_heads(self, layer: int) -> list[int]:
        """Original ids of the key/value heads ``layer`` keeps: those its kept query heads read."""
        return sorted({h // self.geometry.group_size for h in self.heads[layer]})

    def is_uniform(self) -> bool:
        """Whether every layer keeps as many query heads, key/value heads and FFN neurons as every other."""
        shape = {(len(h), len(self.kv_heads(i)), len(n)) for i, (h, n) in enumerate(zip(self.heads, self.neurons))}
        return len(shape) == 1

    def block_params(self) -> int:
        """Parameters in the transformer blocks (attention + FFN + their norms) under this plan."""
        costs = _unit_costs(self.geometry, 1)
        return self.geometry.num_layers * costs.fixed_params + self._cost(costs.params(), costs.kv_head_params)

    def block_flops(self, seq_len: int = 128) -> int:
        """Matmul FLOPs of the transformer blocks for one sequence of ``seq_len`` tokens."""
        validate_options(seq_len=seq_len)
        costs = _unit_costs(self.geometry, seq_len)
        return int(seq_len * self._cost(costs.flops(), costs.kv_head_flops))

    def _cost(self, per_unit: dict[str, float], per_kv_head: float) -> float:
        return self.num_heads * per_unit[HEAD] + self.num_kv_heads * per_kv_head + self.num_neurons * per_unit[NEURON]

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
        grouped = g.group_size > 1
        kv_title = f" {'KV heads kept':>13}" if grouped else ""
        lines = [f"{'layer':>5} {'heads kept':>11}{kv_title} {'FFN neurons kept':>17}"]
        for layer, (h, n) in enumerate(zip(self.heads, self.neurons)):
            kv = f" {len(self.kv_heads(layer)):>7} / {g.num_key_value_heads:<4}" if grouped else ""
            lines.append(f"{layer:>5} {len(h):>5} / {g.num_heads:<4}{kv} {len(n):>8} / {g.intermediate_size:<6}")
        p0, p1 = full.block_params(), self.block_params()
        f0, f1 = full.block_flops(seq_len), self.block_flops(seq_len)
        kv_line = f", key/value heads {full.num_kv_heads} -> {self.num_kv_heads}" if grouped else ""
        lines.append(
            f"heads {full.num_heads} -> {self.num_heads}{kv_line}, FFN neurons {full.num_neurons} -> {self.num_neurons}"
        )
        lines.append(f"block parameters {p0:,} -> {p1:,} ({1 - p1 / p0:.1%} removed)")
        lines.append(
            f"block GFLOPs per sequence of {seq_len} {f0 / 1e9:.3f} -> {f1 / 1e9:.3f} ({1 - f1 / f0:.1%} removed)"
        )
        return "\n".join(lines)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        meta = plain_json(self.meta, "meta")  # meta may have been added to since construction
        return {"geometry": self.geometry.to_dict(), "heads": self.heads, "neurons": self.neurons, "meta": meta}

    @classmethod
    def from_dict(cls, data: dict) -> PruningPlan:
        """The plan ``to_dict`` gave; a missing or malformed field is a ``PlanError`` naming it."""
        if not isinstance(data, dict):
            raise PlanError(f"a plan is a dict (JSON object) of geometry, heads, neurons and meta, got {data!r:.80}")
        missing = [k for k in ("geometry", "heads", "neurons") if k not in data]
        if missing:
            raise PlanError(
                f"the plan lacks {', '.join(map(repr, missing))} (it has {sorted(data)}); a plan file is what "
                "PruningPlan.to_json writes"
            )
        if not isinstance(data["geometry"], dict):
            raise PlanError(f"the plan's 'geometry' must be a dict of Geometry fields, got {data['geometry']!r:.80}")
        try:
            geometry = Geometry(**data["geometry"])
        except (TypeError, ValueError) as e:
            raise PlanError(f"the plan's 'geometry' is not valid: {e}") from None
        return cls(geometry, data["heads"], data["neurons"], data.get("meta", {}))

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict())
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> PruningPlan:
        text = os.fspath(path_or_text)
        source = "the text"
        if not text.lstrip().startswith("{"):
            source = text
            with open(text) as f:
                text = f.read()
        try:
            data = json.loads(text)
        except ValueError as e:
            raise PlanError(f"{source} is not valid JSON ({e}); a plan file is what PruningPlan.to_json writes") from e
        return cls.from_dict(data)


# ---------------------------------------------------------------------- validation
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
    if budget_split is not None and uniform:
        raise PlanError(
            f"budget_split={budget_split!r} cannot be combined with uniform=True, which sweeps the per-layer head "
            "count itself; leave budget_split unset"
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


# ---------------------------------------------------------------------- ids and costs
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


def _unit_costs(g: Geometry, seq_len: int) -> UnitCosts:
    # The family's adapter knows what a head and a neuron cost; the plan only does the arithmetic.
    return get_adapter(g.model_type).unit_costs(g, seq_len)


class _Atom(NamedTuple):
    """What a plan removes in one piece: a neuron, a head, a slice of query heads, or a key/value group.

    ``ids``: the original unit ids it holds. ``kv``: key/value heads that go with it. ``shared_kv``: a slice
    (one query head of each group) whose ``kv`` are the groups' heads, gone only with the layer's last slice;
    they are left out of its importance per cost so that a layer's slices go in order. ``rank``: the
    slice's place in its layer (least important first).
    """

    layer: int
    kind: str
    ids: tuple[int, ...]
    score: float
    kv: int = 0
    shared_kv: bool = False
    rank: int = 0

    @property
    def key(self) -> tuple:
        return (self.layer, self.kind, self.ids)

    @property
    def size(self) -> int:
        return len(self.ids)

    def cost(self, cost: dict, kv_cost: float) -> float:
        return self.size * cost[self.kind] + self.kv * kv_cost


def _unit_norm(s):
    return s / s.norm().clamp_min(1e-12) if s.numel() else s


def _attention_atoms(g: Geometry, layer: int, ids, head_scores, group_scores, attention_unit) -> list[_Atom]:
    """A layer's attention, in the pieces the plan may remove.

    Without grouped-query attention each head is one (with its own key/value projections). With it, under
    ``"kv_group"`` each key/value head with its query heads (scored by ``group_scores``, the gate of the
    whole group); under ``"head"`` the slices: the r-th least important query head of every group, so
    that removing slices keeps every group equally wide. A slice's score is the sum of its heads'; within a
    group heads are ranked by score, so slice scores grow with r and slices go in order.
    """
    groups: dict[int, list[tuple[float, int]]] = {}
    for i, v in zip(ids, head_scores.tolist()):
        groups.setdefault(i // g.group_size, []).append((v, i))
    keys = sorted(groups)
    if attention_unit == KV_GROUP or g.group_size == 1:
        out = []
        for pos, k in enumerate(keys):
            members = groups[k]
            score = float(group_scores[pos]) if group_scores is not None else sum(v for v, _ in members)
            out.append(_Atom(layer, HEAD, tuple(sorted(i for _, i in members)), score, kv=1))
        return out
    ranked = [sorted(groups[k]) for k in keys]  # ascending score, ties by id
    width = len(ranked[0]) if ranked else 0  # equal in every group (the plan that made this model checked it)
    return [
        _Atom(
            layer,
            HEAD,
            tuple(sorted(members[r][1] for members in ranked)),
            sum(members[r][0] for members in ranked),
            kv=len(keys) if r == width - 1 else 0,
            shared_kv=True,
            rank=r,
        )
        for r in range(width)
    ]


def _order_key(a):
    # Ascending importance; ties broken by position (a layer's slices by rank) so plans are deterministic.
    return (a.score, a.layer, a.rank, a.ids)


def _order(atoms):
    return sorted(atoms, key=_order_key)


def _sizes(atoms, g: Geometry) -> list[int]:
    """Units (query heads or neurons) per layer among ``atoms``."""
    sizes = [0] * g.num_layers
    for a in atoms:
        sizes[a.layer] += a.size
    return sizes


def _remove_by_count(atoms, g, kind, sparsity, per_layer_total, ranking, min_keep, uniform=False, multiple=1):
    """Remove the least important ``kind`` atoms until ``sparsity`` of the original units are gone (to the
    nearest count the atoms allow), keeping at least ``min_keep`` units per layer. ``uniform``: every layer keeps
    the same count, for neurons rounded down to a ``multiple`` unless it is the layers' live width."""
    live = [a for a in atoms if a.kind == kind]
    left = _sizes(live, g)
    removed = set()
    if ranking == "per_layer":
        keep = per_layer_total - math.floor(sparsity * per_layer_total + 0.5)
        if uniform:  # a layer cannot grow back: the narrowest one sets every layer's count
            keep = min([keep, *left])
            if kind == NEURON and keep < min(left, default=0):
                keep -= keep % multiple  # down: the rounded plan still removes what was asked
        for layer in range(g.num_layers):
            for a in _order([a for a in live if a.layer == layer]):
                # remove while that brings the layer nearer its target (no nearer: keep the atom)
                if left[layer] - a.size / 2 > keep and left[layer] - a.size >= min_keep:
                    removed.add(a.key)
                    left[layer] -= a.size
        return removed
    keep_total = g.num_layers * per_layer_total - math.floor(sparsity * g.num_layers * per_layer_total + 0.5)
    to_remove = sum(left) - keep_total
    for a in _order(live):
        if to_remove - a.size / 2 <= 0:
            continue
        if left[a.layer] - a.size < min_keep:
            continue
        removed.add(a.key)
        left[a.layer] -= a.size
        to_remove -= a.size
    return removed


def _full_cost(g: Geometry, cost, kv_cost, fixed) -> float:
    per_layer = fixed + g.num_heads * cost[HEAD] + g.num_key_value_heads * kv_cost + g.intermediate_size * cost[NEURON]
    return g.num_layers * per_layer


def _remove_by_budget(atoms, g, cost, kv_cost, fixed, fraction, ranking, min_heads, normalize=False):
    """Greedy by importance per unit of cost until ``fraction`` of the original block cost is gone.

    ``fixed`` is each layer's cost that no pruning removes (biases, norms); it counts in the total.
    ``normalize`` divides each kind's importance per cost by the kind's mean (over all live atoms of the
    kind), so scaling one kind's scores changes nothing.
    """
    full_cost = _full_cost(g, cost, kv_cost, fixed)
    removed, heads_left = set(), _sizes([a for a in atoms if a.kind == HEAD], g)

    scale = _kind_scales(atoms, cost, kv_cost, normalize)

    def ratio(a):
        return (a.score / _price(a, cost, kv_cost) / scale[a.kind], a.layer, a.kind, a.rank, a.ids)

    groups = [atoms] if ranking == "global" else [[a for a in atoms if a.layer == i] for i in range(g.num_layers)]
    for group in groups:
        group_full = full_cost if ranking == "global" else full_cost / g.num_layers
        layers = g.num_layers if ranking == "global" else 1
        current = layers * fixed + sum(a.cost(cost, kv_cost) for a in group)
        target = (1.0 - fraction) * group_full
        for a in sorted(group, key=ratio):
            if current <= target + 1e-9:
                break
            if a.kind == HEAD and heads_left[a.layer] - a.size < min_heads:
                continue
            removed.add(a.key)
            current -= a.cost(cost, kv_cost)
            heads_left[a.layer] -= a.size if a.kind == HEAD else 0
    return removed


def _keep_heads_then_neurons(atoms, g, cost, kv_cost, fixed, fraction, ranking, min_heads, heads_kept):
    """Keep the ``heads_kept`` most important (query) heads, then remove the least important neurons until
    ``fraction`` of the original block cost is gone (or no neuron is left).

    Heads and neurons are ranked within their kind only, so the scale between kinds never matters. Heads go
    in atoms; an atom is kept while that brings the count no farther from ``heads_kept`` (ties keep it).
    Under ``"per_layer"`` ranking each next atom goes to the layer keeping the fewest heads so far, and
    neurons are removed from the layer with the most left, so layers stay as even as their live units allow.
    """
    head_atoms = [a for a in atoms if a.kind == HEAD]
    live = _sizes(head_atoms, g)
    floor = sum(min(min_heads, n) for n in live)
    if heads_kept > sum(live):
        raise PlanError(f"heads_kept={heads_kept} is more than the {sum(live)} heads the model has")
    if heads_kept < floor:
        raise PlanError(
            f"heads_kept={heads_kept} is fewer than min_heads_per_layer={min_heads} allows ({floor} heads in "
            "total): lower min_heads_per_layer or keep more heads"
        )
    rows = [[] for _ in range(g.num_layers)]
    for a in sorted(head_atoms, key=_order_key, reverse=True):  # most important first (slices: last first)
        rows[a.layer].append(a)
    kept, count, taken = set(), [0] * g.num_layers, [0] * g.num_layers

    def take(layer):
        a = rows[layer][taken[layer]]
        kept.add(a.key)
        count[layer] += a.size
        taken[layer] += 1

    for layer in range(g.num_layers):  # min_heads_per_layer first: those heads stay whatever the count
        while count[layer] < min_heads and taken[layer] < len(rows[layer]):
            take(layer)
    if ranking == "global":
        rest = sorted((a for row, t in zip(rows, taken) for a in row[t:]), key=_order_key, reverse=True)
        for a in rest:
            if sum(count) + a.size / 2 <= heads_kept:
                kept.add(a.key)
                count[a.layer] += a.size
    else:
        while True:
            open_layers = [i for i in range(g.num_layers) if taken[i] < len(rows[i])]
            if not open_layers:
                break
            layer = min(open_layers, key=lambda i: (count[i], -rows[i][taken[i]].score, i))
            if sum(count) + rows[layer][taken[layer]].size / 2 > heads_kept:
                break
            take(layer)
    removed = {a.key for a in head_atoms if a.key not in kept}

    # What is left of the budget goes to the neurons, least important first.
    current = g.num_layers * fixed + sum(a.cost(cost, kv_cost) for a in atoms if a.key not in removed)
    target = (1.0 - fraction) * _full_cost(g, cost, kv_cost, fixed)
    neuron_rows = [[] for _ in range(g.num_layers)]
    for a in _order([a for a in atoms if a.kind == NEURON]):  # least important first
        neuron_rows[a.layer].append(a)
    if ranking == "global":
        order = _order([a for row in neuron_rows for a in row])
    else:  # round robin from the widest layer: as even as the live widths allow
        order, left, pos = [], [len(row) for row in neuron_rows], [0] * g.num_layers
        while any(p < len(row) for p, row in zip(pos, neuron_rows)):
            open_layers = [i for i in range(g.num_layers) if pos[i] < len(neuron_rows[i])]
            layer = max(open_layers, key=lambda i: (left[i], -neuron_rows[i][pos[i]].score, -i))
            order.append(neuron_rows[layer][pos[layer]])
            pos[layer] += 1
            left[layer] -= 1
    for a in order:
        if current <= target + 1e-9:
            break
        removed.add(a.key)
        current -= a.cost(cost, kv_cost)
    return removed


def _uniform_by_budget(atoms, g, cost, kv_cost, fixed, fraction, ranking, min_heads, multiple=1):
    """The same counts in every layer: for each number of attention atoms kept per layer, the widest FFN
    that meets the budget (a ``multiple`` of neurons, or the layers' live width); the pair that keeps the most
    importance wins (Kwon et al.'s head-count sweep).

    ``ranking`` does not apply: every layer keeps the same counts by construction. Every layer keeps some
    attention (a config cannot say "no heads", and a decoder without attention is no language model). When
    no count meets the budget, the smallest allowed model is returned.
    """
    rows = {kind: [[] for _ in range(g.num_layers)] for kind in (HEAD, NEURON)}
    for a in sorted(atoms, key=_order_key, reverse=True):  # most important first (a layer's slices: last first)
        rows[a.kind][a.layer].append(a)
    head_shapes = {tuple(a.size for a in row) for row in rows[HEAD]}
    widths = {len(row) for row in rows[NEURON]}
    if len(head_shapes) > 1 or len(widths) > 1:
        raise PlanError(
            "uniform=True needs a model whose layers are alike; this one was pruned unevenly before: prune it "
            "with uniform=False"
        )
    head_row, width_max = head_shapes.pop(), widths.pop()
    target = (1.0 - fraction) * _full_cost(g, cost, kv_cost, fixed)
    candidates = []
    for c in range(min(1, len(head_row)), len(head_row) + 1):
        if sum(head_row[:c]) < min_heads and c < len(head_row):
            continue
        # the kept slices include the layer's last one, which carries the key/value heads
        head_cost = sum(a.cost(cost, kv_cost) for row in rows[HEAD] for a in row[:c])
        room = target - g.num_layers * fixed - head_cost
        width = min(width_max, max(0, math.floor(room / (g.num_layers * cost[NEURON]) + 1e-9)))
        if width < width_max:
            width -= width % multiple  # down: the widest allowed width that still meets the budget
        kept = [a for row in rows[HEAD] for a in row[:c]] + [a for row in rows[NEURON] for a in row[:width]]
        left = room - width * g.num_layers * cost[NEURON]  # budget the FFN could not take back: removed beyond it
        fits = left >= -1e-9
        # With the FFN at full width and budget left over, this head count removes more than asked: only
        # when no count meets the budget closely (as close as the allowed widths go) may such a plan win.
        close = fits and (width < width_max or left < g.num_layers * cost[NEURON])
        candidates.append((fits, close, sum(a.score for a in kept) if fits else -head_cost, c, width))
    *_, c, width = max(candidates)
    return {a.key for row in rows[HEAD] for a in row[c:]} | {a.key for row in rows[NEURON] for a in row[width:]}


# ---------------------------------------------------------------------- balanced shapes
def _price(a: _Atom, cost: dict, kv_cost: float) -> float:
    # a slice's key/value heads go only with the layer's last slice: left out so a layer's slices go in order
    return a.size * cost[a.kind] + (0 if a.shared_kv else a.kv * kv_cost)


def _kind_scales(atoms, cost, kv_cost, normalize: bool) -> dict[str, float]:
    """Each kind's mean importance per unit cost (1 without ``normalize``): what a kind's scores are divided
    by so that heads and neurons compare on one scale (``budget_split="normalized"``)."""
    scale = {HEAD: 1.0, NEURON: 1.0}
    if normalize:
        for kind in scale:
            values = [a.score / max(_price(a, cost, kv_cost), 1e-30) for a in atoms if a.kind == kind]
            mean = sum(values) / len(values) if values else 0.0
            scale[kind] = mean if mean > 0 else 1.0  # all-zero scores: nothing to rescale
    return scale


def _neuron_counts(rows, order, max_total: int, ranking: str) -> list[int]:
    """Per-layer neurons kept when ``max_total`` are kept: the most important across layers (``"global"``,
    ``order`` lists each neuron's layer, most important first) or as evenly as the live widths allow."""
    live = [len(r) for r in rows]
    max_total = max(0, min(max_total, sum(live)))
    counts = [0] * len(rows)
    if ranking == "global":
        for layer in order[:max_total]:
            counts[layer] += 1
        return counts
    left = max_total
    while left > 0:
        open_layers = [i for i in range(len(rows)) if counts[i] < live[i]]
        share = max(1, left // len(open_layers))
        for i in open_layers:
            take = min(share, live[i] - counts[i], left)
            counts[i] += take
            left -= take
            if not left:
                break
    return counts


def _round_widths(prefix, live, counts, max_total: int, multiple: int, ranking: str = "global") -> list[int]:
    """Each layer's width rounded to the nearest multiple of ``multiple`` (or its live width), then stepped
    down one block at a time while more than ``max_total`` neurons are kept, and up while a step still fits.
    ``"global"``: down the block of least importance per neuron first, up the most important first;
    ``"per_layer"``: down the layer most above its own ``counts`` first, up the one most below (ties by
    importance), so layers stay as near their own targets as the multiples allow. ``prefix[l][k]``: importance
    of layer l's top k neurons. Serves every plan: balanced, budgets and counts."""

    def down(w):
        return w - (w % multiple or multiple)

    def up(layer, w):
        return None if w >= live[layer] else min(w + multiple, live[layer])

    def density(layer, a, b):  # importance per neuron of layer's neurons a..b (a < b)
        return (prefix[layer][b] - prefix[layer][a]) / (b - a)

    per_layer = ranking == "per_layer"
    widths = []
    for layer, c in enumerate(counts):
        lower = c - c % multiple
        upper = min(lower + multiple, live[layer])
        widths.append(lower if c == lower or c - lower < upper - c else upper)  # ties round up
    while sum(widths) > max_total:
        options = [i for i, w in enumerate(widths) if w > 0]
        layer = min(
            options,
            key=lambda i: (
                counts[i] - widths[i] if per_layer else 0,
                density(i, down(widths[i]), widths[i]),
                i,
            ),
        )
        widths[layer] = down(widths[layer])
    while True:
        total = sum(widths)
        options = [i for i, w in enumerate(widths) if up(i, w) is not None and total + up(i, w) - w <= max_total]
        if not options:
            return widths
        layer = max(
            options,
            key=lambda i: (
                counts[i] - widths[i] if per_layer else 0,
                density(i, widths[i], up(i, widths[i])),
                -i,
            ),
        )
        widths[layer] = up(layer, widths[layer])


def _neuron_rows(atoms, num_layers: int):
    """Each layer's neuron atoms (most important first), the prefix sums of their scores, and every neuron's
    layer in order of importance across layers."""
    neurons = sorted((a for a in atoms if a.kind == NEURON), key=_order_key, reverse=True)
    rows = [[] for _ in range(num_layers)]
    for a in neurons:
        rows[a.layer].append(a)
    prefix = [list(itertools.accumulate((a.score for a in row), initial=0.0)) for row in rows]
    return rows, prefix, [a.layer for a in neurons]


def _balanced_by_budget(atoms, g, cost, kv_cost, fixed, fraction, ranking, min_heads, multiple, normalize):
    """The same number of attention atoms in every layer (swept, as ``_uniform_by_budget`` does; a layer left with
    fewer by an earlier prune keeps all of its own); for each count the FFN neurons fill what the budget leaves (by
    ``ranking``), widths rounded by ``_round_widths``. The count whose plan keeps the most importance (on the scale
    of ``_kind_scales``) and meets the budget wins; when none meets it, the smallest model."""
    L = g.num_layers
    head_rows = [[] for _ in range(L)]
    for a in sorted((a for a in atoms if a.kind == HEAD), key=_order_key, reverse=True):
        head_rows[a.layer].append(a)  # most important first (a layer's slices: last first, with the kv heads)
    rows, prefix, order = _neuron_rows(atoms, L)
    live = [len(r) for r in rows]
    scale = _kind_scales(atoms, cost, kv_cost, normalize)
    most = max(len(r) for r in head_rows)  # a layer with fewer live atoms (an earlier prune) keeps what it has
    candidates = []
    for c in range(min(1, most), most + 1):
        if c < most and any(sum(a.size for a in r[:c]) < min(min_heads, sum(a.size for a in r)) for r in head_rows):
            continue
        heads = [a for r in head_rows for a in r[:c]]
        head_cost = sum(a.cost(cost, kv_cost) for a in heads)
        room = _neuron_room(g, cost, kv_cost, fixed, fraction, head_cost)
        if room < -1e-9:
            candidates.append((False, False, -head_cost, c, [0] * L))
            continue
        max_total = _neurons_allowed(room, sum(live))
        counts = _neuron_counts(rows, order, max_total, ranking)
        widths = _round_widths(prefix, live, counts, max_total, multiple, ranking)
        value = sum(a.score for a in heads) / scale[HEAD] + sum(p[w] for p, w in zip(prefix, widths)) / scale[NEURON]
        # an FFN kept whole with budget left over removes more than asked: such a count wins only when no other
        # count meets the budget closely (as in _uniform_by_budget)
        close = sum(widths) < sum(live) or room - sum(widths) < L
        candidates.append((True, close, value, c, widths))
    *_, c, widths = max(candidates, key=lambda t: t[:4])
    return {a.key for r in head_rows for a in r[c:]} | {a.key for r, w in zip(rows, widths) for a in r[w:]}


def _neuron_room(g: Geometry, cost, kv_cost, fixed, fraction, head_cost: float) -> float:
    """How many neurons (fractional; inf if neurons are free) a budget of ``fraction`` of the blocks' cost leaves
    once each layer's fixed cost and the attention kept (``head_cost``) are paid; negative when those already
    cost more."""
    room = (1.0 - fraction) * _full_cost(g, cost, kv_cost, fixed) - g.num_layers * fixed - head_cost
    return room / cost[NEURON] if cost[NEURON] > 0 else math.inf


def _neurons_allowed(room: float, live_total: int) -> int:
    return max(0, math.floor(min(room, live_total) + 1e-9))


def _round_neurons(atoms, g, removed: set, multiple: int, ranking: str, room: float | None = None) -> set:
    """``removed`` with each layer's FFN width rounded by ``_round_widths``: at most as many neurons kept in
    total as ``removed`` keeps (a count target), or as ``room`` allows (a budget, in neurons; ``_neuron_room``),
    so the target still holds. Which neurons: each layer's most important."""
    rows, prefix, _ = _neuron_rows(atoms, g.num_layers)
    live = [len(r) for r in rows]
    counts = [sum(a.key not in removed for a in row) for row in rows]
    max_total = sum(counts) if room is None else _neurons_allowed(room, sum(live))
    widths = _round_widths(prefix, live, counts, max_total, multiple, ranking)
    kept = {a.key for r, w in zip(rows, widths) for a in r[:w]}
    return {k for k in removed if k[1] != NEURON} | {a.key for r in rows for a in r if a.key not in kept}


# ---------------------------------------------------------------------- latency budgets
class _Shape(NamedTuple):
    """What a latency table reads of a plan: its geometry and the units each layer keeps."""

    geometry: Geometry
    heads: list
    neurons: list


def _uniform_ms(g: Geometry, table, heads: int, neurons: int) -> float:
    # a table reads only how many units each layer keeps, so ranges stand in for the id lists
    return float(table.predict(_Shape(g, [range(heads)] * g.num_layers, [range(neurons)] * g.num_layers)))


def _check_latency_reachable(g: Geometry, table, dense_ms: float, fraction: float) -> None:
    floor_ms = _uniform_ms(g, table, 0, 0)
    if dense_ms <= 0 or 1 - floor_ms / dense_ms < fraction - 1e-12:
        most = 1 - floor_ms / dense_ms if dense_ms > 0 else 0.0
        raise PlanError(
            f"latency_budget={fraction} cannot be met: with every head and neuron removed the latency table still "
            f"predicts {floor_ms:.3f} of the dense {dense_ms:.3f} ms (embeddings, norms, ...), at most {most:.1%} "
            "removed; lower latency_budget"
        )


def _remove_by_latency(atoms, g: Geometry, table, dense_ms: float, fraction: float, min_heads: int, normalize: bool):
    """Kwon et al.'s lookup-table allocation: remove, across all layers, the atom of least importance per
    millisecond it saves, where what it saves is read from the table at its layer's current count, until the
    predicted time is at most ``1 - fraction`` of ``dense_ms`` (or nothing more may go).

    So where the table says a layer's last neurons cost more per neuron (the FFN's fixed overhead, spread over
    the first samples), they are priced so, and a nearly empty layer is emptied sooner than FLOPs would say.
    The choice is greedy, one step at a time (no lookahead past the next unit). A layer's part
    is its share of the uniform shapes' prediction (a ``LatencyTable`` is per layer already). Importance is on
    the scale of ``_kind_scales`` (priced at the table's mean ms per unit).
    """
    L, H, N = g.num_layers, g.num_heads, g.intermediate_size
    floor = _uniform_ms(g, table, 0, 0)
    attn = [(_uniform_ms(g, table, h, 0) - floor) / L for h in range(H + 1)]
    ffn = [(_uniform_ms(g, table, 0, n) - floor) / L for n in range(N + 1)]
    per_unit = {HEAD: max(attn[H] / H, 1e-12), NEURON: max(ffn[N] / N, 1e-12)}
    scale = _kind_scales(atoms, per_unit, 0.0, normalize)
    rows = {HEAD: [[] for _ in range(L)], NEURON: [[] for _ in range(L)]}
    for a in _order(atoms):  # least important first (a layer's slices in rank order)
        rows[a.kind][a.layer].append(a)
    count = {kind: [sum(a.size for a in row) for row in rows[kind]] for kind in rows}
    pos = {kind: [0] * L for kind in rows}
    curve = {HEAD: attn, NEURON: ffn}
    current = floor + sum(attn[h] for h in count[HEAD]) + sum(ffn[n] for n in count[NEURON])
    target = (1.0 - fraction) * dense_ms
    tiny = 1e-12 * max(dense_ms, 1e-12)  # a step the table says is free goes last, unless it is worth nothing
    heap = []

    def push(layer, kind):
        i = pos[kind][layer]
        if i >= len(rows[kind][layer]):
            return
        a, left = rows[kind][layer][i], count[kind][layer]
        if kind == HEAD and left - a.size < min(min_heads, left):
            return
        saving = curve[kind][left] - curve[kind][left - a.size]
        heapq.heappush(heap, (a.score / scale[kind] / max(saving, tiny), layer, kind, i))

    for layer in range(L):
        push(layer, HEAD)
        push(layer, NEURON)
    removed = set()
    while heap and current > target + 1e-12:
        _, layer, kind, i = heapq.heappop(heap)
        a, left = rows[kind][layer][i], count[kind][layer]
        current -= curve[kind][left] - curve[kind][left - a.size]
        count[kind][layer] -= a.size
        pos[kind][layer] += 1
        removed.add(a.key)
        push(layer, kind)
    return removed


def _search_latency(g: Geometry, table, dense_ms: float, fraction: float, allocate, kept):
    """The smallest cut whose predicted time removes ``fraction`` of ``dense_ms``: bisection over the fraction
    of the blocks' cost given to ``allocate``, with heads and neurons priced by the table's mean ms per unit.

    Each step's plan is checked by the table itself, so what is returned meets the fraction by prediction
    (unless even the largest cut the options allow does not: then that cut). ``allocate(per_unit, per_kv,
    fixed, fraction) -> removed`` and ``kept(removed) -> (heads, neurons)`` are ``from_scores``' own.
    """
    L, H, N = g.num_layers, g.num_heads, g.intermediate_size

    def predict(heads, neurons):
        return float(table.predict(_Shape(g, heads, neurons)))

    all_heads, all_neurons = [range(H)] * L, [range(N)] * L
    # the table's mean ms per unit: what the allocators weigh heads against neurons by (the kv heads' time is in
    # the query heads' counts, so they are free here)
    per_unit = {
        HEAD: max((dense_ms - predict([[]] * L, all_neurons)) / (L * H), 1e-12),
        NEURON: max((dense_ms - predict(all_heads, [[]] * L)) / (L * N), 1e-12),
    }

    def attempt(x):
        heads, neurons = kept(allocate(per_unit, 0.0, 0.0, x))
        return 1 - predict(heads, neurons) / dense_ms, (heads, neurons)

    lo, hi = 0.0, 1.0 - 1e-9
    done, best = attempt(hi)
    if done < fraction - 1e-12:
        return best  # the options forbid a larger cut; budget_met says so
    if fraction <= 0:
        return attempt(0.0)[1]
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        done, shape = attempt(mid)
        if done >= fraction - 1e-12:
            hi, best = mid, shape
        else:
            lo = mid
    return best
