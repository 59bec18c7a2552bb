"""``PruningPlan``: which heads and FFN neurons each layer keeps. Pure data; knows no torch modules.

Indices are always those of the *original* (unpruned) model, so plans compose: a plan made from the
scores of an already pruned model keeps a subset of that model's units, still in original indices.
Sparsity and budget targets are fractions of the original model too, which is what an iterative
schedule needs (``head_sparsity=0.5`` means half of the original heads are gone, in total).

``from_scores`` is the one entry point that makes a plan: it checks the targets (``validation``), cuts the scores
into atoms (``atoms``) and hands them to the allocation the options name (``ranking``, ``shapes``,
``latency_budget``), each of which returns the atoms removed and knows nothing of this class.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field

from ..architectures import Geometry, get_adapter
from ..scoring.scores import Scores
from ..units import HEAD, KV_GROUP, NEURON, UnitCosts
from .atoms import kept_ids, score_atoms
from .latency_budget import check_latency_reachable, remove_by_latency, search_latency
from .ranking import keep_heads_then_neurons, remove_by_budget, remove_by_count
from .shapes import balanced_by_budget, neuron_room, round_neurons, uniform_by_budget
from .validation import (
    BUDGET_NAMES,
    DEFAULT_FFN_MULTIPLE_OF,
    TARGET_NAMES,
    PlanError,
    ffn_floor,
    plain_json,
    validate_options,
    validate_targets,
)

# The names other modules import from here since before the algorithms and checks moved out of this file.
__all__ = [
    "BUDGET_NAMES",
    "DEFAULT_FFN_MULTIPLE_OF",
    "TARGET_NAMES",
    "PlanError",
    "PruningPlan",
    "plain_json",
    "validate_options",
    "validate_targets",
]


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
        min_ffn_per_layer: float = 0.0,
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
        one that keeps the most importance once the FFN widths fill the rest of the budget (Kwon et al.), with
        the same scale-free rule as the budget split below: each kind's kept importance is divided by that
        kind's mean score per unit cost (``budget_split="normalized"``, the default; ``"ratio"`` sums raw
        scores), so multiplying the head scores by any factor picks the same plan (raw sums let Taylor's small
        head scores collapse SmolLM2 to perplexity 1,277 at 20% of its parameters). Every layer keeps at least
        one head (or group) there.

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

        ``min_ffn_per_layer`` (a fraction in [0, 1) of ``geometry.intermediate_size``; 0, the default, is off):
        every layer keeps at least that many FFN neurons (its most important; rounded up, then up to a multiple of
        ``ffn_multiple_of``), under every target, ranking and shape, so that global ranking cannot leave the last
        FFNs with a handful of neurons; rounding never steps a layer below it, and a layer whose live width is
        below it keeps all it has. Heads then pay for what the floor keeps; when nothing can, ``budget_met`` is
        False (as for ``min_heads_per_layer``). Recorded in ``meta``.

        ``meta["budget_met"]`` (budgets only) says whether the plan removes at least the budget; it is False
        when the heads kept (or ``min_heads_per_layer``) cost more than the budget leaves even with every
        neuron removed (every neuron above ``min_ffn_per_layer``), or, under a latency budget, when the shapes the
        options allow cannot reach it.
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
            min_ffn_per_layer=min_ffn_per_layer,
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

        atoms = score_atoms(scores, attention_unit, normalize_heads)

        normalize = (budget_split or "normalized") == "normalized"
        # neurons every layer keeps (rounded up to an allowed width; a layer with fewer keeps all it has)
        min_ffn = ffn_floor(g.intermediate_size, min_ffn_per_layer, ffn_multiple_of)

        def allocate(per_unit, per_kv, fixed, fraction):
            args = (atoms, g, per_unit, per_kv, fixed, fraction, ranking, min_heads_per_layer)
            if uniform:
                return uniform_by_budget(*args, ffn_multiple_of, normalize, min_ffn)
            if balanced:
                return balanced_by_budget(*args, ffn_multiple_of, normalize, min_ffn)
            if heads_kept is not None:
                removed = keep_heads_then_neurons(*args, heads_kept, min_ffn)
            else:
                removed = remove_by_budget(*args, normalize=normalize, min_ffn=min_ffn)
            if ffn_multiple_of == 1:
                return removed
            # the heads stay as chosen; the neurons are rounded within what the budget leaves them
            head_cost = sum(a.cost(per_unit, per_kv) for a in atoms if a.kind == HEAD and a.key not in removed)
            room = neuron_room(g, per_unit, per_kv, fixed, fraction, head_cost)
            return round_neurons(atoms, g, removed, ffn_multiple_of, ranking, room, min_ffn)

        kept = functools.partial(kept_ids, atoms, g.num_layers)

        budgets_given = [k for k, v in budgets.items() if v is not None]
        if latency_budget is not None:
            check_latency_reachable(g, latency_table, latency_dense, latency_budget)
            if uniform or balanced or heads_kept is not None or ranking != "global" or ffn_multiple_of > 1:
                heads, neurons = search_latency(g, latency_table, latency_dense, latency_budget, allocate, kept)
            else:
                removed = remove_by_latency(
                    atoms, g, latency_table, latency_dense, latency_budget, min_heads_per_layer, normalize, min_ffn
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
                    min_keep = min_heads_per_layer if kind == HEAD else min_ffn
                    even = uniform or (balanced and kind == HEAD)
                    rank = "per_layer" if even else ranking
                    removed |= remove_by_count(atoms, g, kind, sparsity, total, rank, min_keep, even, ffn_multiple_of)
            if ffn_sparsity is not None and ffn_multiple_of > 1 and not uniform:  # uniform rounds in remove_by_count
                removed = round_neurons(atoms, g, removed, ffn_multiple_of, ranking, min_ffn=min_ffn)
            heads, neurons = kept(removed)
        meta = {
            "method": scores.method,
            "num_examples": scores.num_examples,
            "ranking": ranking,
            "normalize_heads": normalize_heads,
            "min_heads_per_layer": min_heads_per_layer,
            "min_ffn_per_layer": min_ffn_per_layer,
            "ffn_multiple_of": ffn_multiple_of,
            "seq_len": seq_len,
            "attention_unit": attention_unit,
            "uniform": uniform,
            **{k: v for k, v in {**targets, **budgets}.items() if v is not None},
        }
        if balanced:
            meta["balanced"] = True
        if budgets_given:
            meta["budget_split"] = "heads_kept" if heads_kept is not None else budget_split or "normalized"
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


def _unit_costs(g: Geometry, seq_len: int) -> UnitCosts:
    # The family's adapter knows what a head and a neuron cost; the plan only does the arithmetic.
    return get_adapter(g.model_type).unit_costs(g, seq_len)
