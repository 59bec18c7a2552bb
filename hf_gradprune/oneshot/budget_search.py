"""How a FLOPs/parameter budget is split between heads and neurons, chosen on calibration data.

``PruningPlan.from_scores(..., heads_kept=k)`` fixes the number of heads a budget keeps and fills the rest
with neurons; ``search_budget_split`` sweeps ``k`` (Kwon et al. 2022, "A Fast Post-Training Pruning
Framework for Transformers") and keeps the plan whose calibration loss is lowest. Candidates are not cut:
``unit_gates`` multiplies each unit's input to the output projections at run time, and zeroing a unit's
column there is exactly removing the unit, so one model serves every candidate.

Which candidate wins: the best calibration loss (or kept importance) among those that meet the budget
without removing more than one unit's cost beyond it (the costliest atom a plan removes: a head, a slice or
group under grouped-query attention, or a block of ``ffn_multiple_of`` neurons), unless none comes that
close, when only the tightest are eligible. Values within ``TIE`` (relative) of the best count as tied, and
among tied candidates the one that removes least beyond the budget wins. The head counts searched start at
the fewest heads whose plan still stays within that cost of the budget. Without the rule, near-equal losses
(a random model) picked a plan with no head left that removed 59% of the FLOPs for a budget of 30%.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from ..planning.plan import DEFAULT_FFN_MULTIPLE_OF, PlanError, PruningPlan, validate_targets
from ..scoring.scores import Scores
from ..state import pruning_state, unwrap_model
from .calibration import CalibrationError, LossFn, calibration_batches, check_count, model_loss

CRITERIA = ("loss", "importance")
# Candidates whose losses (or kept importances) differ by less than this fraction of the best one's are tied.
TIE = 1e-3

Factors = Sequence[torch.Tensor | None] | None


def _check_factors(name: str, factors: Factors, live: list[int]) -> None:
    if factors is None:
        return
    if len(factors) != len(live):
        raise ValueError(f"{name} needs one entry per layer ({len(live)}), got {len(factors)}")
    for layer, (f, n) in enumerate(zip(factors, live)):
        if f is None:
            continue
        if not isinstance(f, torch.Tensor) or f.dim() != 1 or f.numel() != n:
            shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(
                f"{name}[{layer}] must be a 1-D tensor with one factor per live unit of layer {layer} ({n}), "
                f"got {shape}"
            )


@contextlib.contextmanager
def unit_gates(model: nn.Module, heads: Factors = None, neurons: Factors = None) -> Iterator[nn.Module]:
    """Multiply each live head's and FFN neuron's contribution by a factor while the context is open.

    ``heads`` / ``neurons``: per layer, a 1-D tensor with one factor per *live* unit of that layer (in the
    order the model has them now), or None to leave the layer as is; the whole argument may be None. The
    factors scale the inputs of the attention's and the FFN's output projections (a head's ``head_dim``
    columns, a neuron's one column), so a factor 0 is exactly removing the unit. Forward pre-hooks, removed
    on exit even after an exception. Lengths are checked (``ValueError``) before any hook is added.
    """
    state = pruning_state(model)
    adapter, head_dim = state.adapter, state.geometry.head_dim
    _check_factors("heads", heads, [len(h) for h in state.head_ids])
    _check_factors("neurons", neurons, [len(n) for n in state.neuron_ids])

    def hook_for(factor: torch.Tensor, repeat: int):
        column = factor.detach().float().repeat_interleave(repeat)

        def hook(module, args, kwargs):
            x = args[0]
            if x.shape[-1] != column.numel():  # a headless layer's empty block, or a change since entry
                if x.shape[-1] == 0:
                    return None
                raise RuntimeError(
                    f"unit_gates: {type(module).__name__} got {x.shape[-1]} input features, the gates cover "
                    f"{column.numel()}: the model was pruned inside the context"
                )
            return (x * column.to(device=x.device, dtype=x.dtype), *args[1:]), kwargs

        return hook

    handles = []
    try:
        for layer, block in enumerate(state.layers):
            for factors, module, repeat in (
                (heads, adapter.attention_output(block), head_dim),
                (neurons, adapter.ffn_output(block), 1),
            ):
                if factors is None or factors[layer] is None:
                    continue
                handles.append(module.register_forward_pre_hook(hook_for(factors[layer], repeat), with_kwargs=True))
        yield model
    finally:
        for h in handles:
            h.remove()


def plan_gates(model: nn.Module, plan: PruningPlan) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The 0/1 factors of ``unit_gates`` that keep exactly the units ``plan`` keeps (original ids) on the
    model's live units. ``PlanError`` if the plan is for another model or keeps a unit the model lacks."""
    state = pruning_state(model)
    if not isinstance(plan, PruningPlan):
        raise PlanError(f"expected a PruningPlan, got {type(plan).__name__}")
    if plan.geometry != state.geometry:
        raise PlanError(
            f"a plan from another model: its geometry differs from this model's ({plan.geometry} vs {state.geometry})"
        )
    out = []
    for kind, kept_ids, live_ids in (("head", plan.heads, state.head_ids), ("neuron", plan.neurons, state.neuron_ids)):
        factors = []
        for layer, (kept, live) in enumerate(zip(kept_ids, live_ids)):
            missing = sorted(set(kept) - set(live))
            if missing:
                raise PlanError(
                    f"layer {layer}: the plan keeps {kind}s {missing[:8]} that the model no longer has (pruned "
                    "earlier): make the plan from this model's scores"
                )
            keep = set(kept)
            factors.append(torch.tensor([1.0 if i in keep else 0.0 for i in live]))
        out.append(factors)
    return out[0], out[1]


def _check_scores(scores: Scores, model: nn.Module) -> None:
    state = pruning_state(model)
    if not isinstance(scores, Scores):
        raise PlanError(f"expected Scores, got {type(scores).__name__}")
    if scores.geometry != state.geometry or (scores.head_ids, scores.neuron_ids) != (
        state.head_ids,
        state.neuron_ids,
    ):
        raise PlanError(
            "these scores are from another model (or from before this model was pruned): their geometry or live "
            "units differ from the model's; score this model again"
        )


def _kept_importance(plan: PruningPlan, scores: Scores) -> float:
    total = 0.0
    for values, ids, kept in (
        (scores.heads, scores.head_ids, plan.heads),
        (scores.neurons, scores.neuron_ids, plan.neurons),
    ):
        for v, i, k in zip(values, ids, kept):
            keep = set(k)
            total += float(sum(x for x, u in zip(v.tolist(), i) if u in keep))
    return total


def _removed(plan: PruningPlan, flops: bool, seq_len: int) -> float:
    """The fraction of the budget's measure (block FLOPs or parameters) that ``plan`` removes."""
    return plan.flops_removed(seq_len) if flops else plan.params_removed()


def _unit_step(plan: PruningPlan, flops: bool, seq_len: int, attention_unit: str, multiple: int) -> float:
    """What the costliest atom a plan removes costs, as a fraction of the budget's measure: one head (a slice
    of one query head per group, or a whole group, under grouped-query attention) or one block of
    ``multiple`` FFN neurons. Measured on the full plan with that atom gone, by the plan's own arithmetic."""
    g = plan.geometry
    if g.group_size == 1:
        head_atom = {0}
    elif attention_unit == "kv_group":
        head_atom = set(range(g.group_size))
    else:
        head_atom = set(range(0, g.num_heads, g.group_size))
    full = PruningPlan.full(g)
    steps = []
    for heads, neurons in ((head_atom, set()), (set(), set(range(min(multiple, g.intermediate_size))))):
        cut = PruningPlan(
            g,
            [[h for h in hs if not (layer == 0 and h in heads)] for layer, hs in enumerate(full.heads)],
            [[n for n in ns if not (layer == 0 and n in neurons)] for layer, ns in enumerate(full.neurons)],
        )
        steps.append(_removed(cut, flops, seq_len))
    return max(steps)


def _pick(rows: list[dict], criterion: str, step: float) -> dict:
    """The winning row under the rule in the module docstring."""
    sign = 1.0 if criterion == "loss" else -1.0  # loss: lower is better; importance: higher
    met = [r for r in rows if r["budget_met"]]
    if not met:  # none meets the budget: the best of those that miss it
        return min(rows, key=lambda r: (sign * r[criterion], r["heads_kept"]))
    tightest = min(r["overshoot"] for r in met)
    eligible = [r for r in met if r["overshoot"] <= max(step, tightest) + 1e-9]
    best = min(sign * r[criterion] for r in eligible)
    tied = [r for r in eligible if sign * r[criterion] <= best + TIE * abs(best)]
    return min(tied, key=lambda r: (r["overshoot"], r["heads_kept"]))


def _grid(lo: int, hi: int, n: int) -> list[int]:
    if hi <= lo:
        return [lo]
    return sorted({round(lo + (hi - lo) * j / (n - 1)) for j in range(n)})


@torch.no_grad()
def _mean_loss(model, batches, loss_fn, gates=None) -> float:
    heads, neurons = gates if gates is not None else (None, None)
    total = 0.0
    with unit_gates(model, heads, neurons):
        for batch in batches:
            total += float(model_loss(model, batch, loss_fn))
    return total / len(batches)


def search_budget_split(
    model: nn.Module,
    scores: Scores,
    calibration: Iterable | None,
    *,
    flops_budget: float | None = None,
    params_budget: float | None = None,
    criterion: str = "loss",
    max_batches: int | None = 4,
    num_candidates: int = 8,
    loss_fn: LossFn | None = None,
    **plan_kwargs,
) -> tuple[PruningPlan, dict]:
    """Pick how many heads a budget keeps: sweep ``heads_kept`` and keep the best plan.

    Candidates: ``num_candidates`` head totals evenly from the fewest heads whose plan removes at most one
    unit's cost beyond the budget (found by bisection on the plans alone) to every live head, then as many
    between the best one's neighbours. Each is ``PruningPlan.from_scores(scores, <budget>, heads_kept=k,
    **plan_kwargs)``.
    ``criterion="loss"``: the mean calibration loss (``calibration.model_loss``; ``loss_fn`` if given) over
    the first ``max_batches`` batches of ``calibration``, with the candidate's removed units gated off in
    eval mode (no model is cut). Unlabelled classifier batches get the unpruned model's predictions as
    labels, so the loss measures how far a candidate strays from the model. ``criterion="importance"``:
    the sum of the kept units' scores, no forward (``calibration`` may be None); it only compares heads and
    neurons fairly when scores estimate the loss increase on one scale (``fisher``), not for ``taylor``,
    ``magnitude`` or ``random``. The winner is chosen by the rule in the module docstring: within one unit's
    cost of the budget, best value, near ties to the tightest; a candidate that misses the budget (its heads
    alone cost too much) wins only if none meets it.

    Returns the best plan (``meta``: ``budget_split="search"``, ``criterion``, ``heads_kept``,
    ``candidates``: [heads kept, value] pairs) and a report (``candidates``: one row per plan tried, with its
    ``overshoot``: the fraction removed beyond the budget; ``unit_step``: one unit's cost, the overshoot
    allowed; ``best``, ``dense_loss``, ``batches``, ``seconds``).
    """
    started = time.perf_counter()
    if criterion not in CRITERIA:
        raise PlanError(f"criterion must be one of {', '.join(map(repr, CRITERIA))}, not {criterion!r}")
    if flops_budget is None and params_budget is None:
        raise PlanError("search_budget_split splits a budget: give flops_budget or params_budget")
    validate_targets(flops_budget=flops_budget, params_budget=params_budget)
    for name in ("heads_kept", "budget_split", "head_sparsity", "ffn_sparsity"):
        if name in plan_kwargs:
            raise PlanError(f"search_budget_split chooses the split itself: do not pass {name}")
    if plan_kwargs.get("uniform"):
        raise PlanError("uniform=True sweeps its own per-layer head count: call PruningPlan.from_scores directly")
    num_candidates = check_count("num_candidates", num_candidates, minimum=2, error=PlanError)
    if num_candidates is None:
        raise PlanError("num_candidates must be an integer >= 2, got None")
    max_batches = check_count("max_batches", max_batches)
    _check_scores(scores, model)
    budget = {"flops_budget": flops_budget, "params_budget": params_budget}
    target = flops_budget if flops_budget is not None else params_budget
    plans: dict[int, PruningPlan] = {}

    def make(k: int) -> PruningPlan:
        if k not in plans:
            plans[k] = PruningPlan.from_scores(scores, **budget, heads_kept=k, **plan_kwargs)
        return plans[k]

    def overshoot(plan: PruningPlan) -> float:
        return _removed(plan, flops_budget is not None, plan.meta["seq_len"]) - target

    live = sum(len(h) for h in scores.head_ids)
    min_heads = plan_kwargs.get("min_heads_per_layer", 0)
    lo = sum(min(min_heads, len(h)) for h in scores.head_ids)
    top = make(live)  # every option checked (PlanError) before any forward
    step = _unit_step(
        top,
        flops_budget is not None,
        top.meta["seq_len"],
        plan_kwargs.get("attention_unit", "head"),
        plan_kwargs.get("ffn_multiple_of", DEFAULT_FFN_MULTIPLE_OF),
    )
    # Fewer heads kept remove more once the heads alone pass the budget: the fewest that stay within one
    # unit's cost of it bound the search from below (no plan is offered that is far past the budget).
    if overshoot(top) <= step + 1e-9:
        low, high = lo, live
        while low < high:
            mid = (low + high) // 2
            low, high = (low, mid) if overshoot(make(mid)) <= step + 1e-9 else (mid + 1, high)
        lo = low

    inner = unwrap_model(model)
    batches, dense_loss = [], None
    if criterion == "loss":
        if calibration is None:
            raise CalibrationError("criterion='loss' needs calibration batches (a DataLoader)")
        batches = list(calibration_batches(calibration, inner, max_batches=max_batches))
    was_training = inner.training
    inner.eval()
    try:
        if criterion == "loss":
            batches = _with_dense_labels(inner, batches, loss_fn)
            per_batch = []
            with torch.no_grad():
                for b in batches:
                    per_batch.append(float(model_loss(inner, b, loss_fn)))
            finite = [b for b, v in zip(batches, per_batch) if math.isfinite(v)]
            if not finite:
                raise CalibrationError(
                    f"the calibration loss of the unpruned model is NaN or inf on every one of the {len(batches)} "
                    "batches: check the loss_fn, the labels and the inputs"
                )
            batches = finite  # a batch the unpruned model cannot score says nothing about a candidate
            dense_loss = sum(v for v in per_batch if math.isfinite(v)) / len(finite)

        rows, seen = [], {}

        def evaluate(k: int):
            plan = make(k)
            key = (tuple(map(tuple, plan.heads)), tuple(map(tuple, plan.neurons)))
            if key in seen:  # grouped-query atoms round several k to one plan
                return
            if criterion == "loss":
                value = _mean_loss(inner, batches, loss_fn, plan_gates(inner, plan))
                value = value if math.isfinite(value) else math.inf
            else:
                value = _kept_importance(plan, scores)
            seen[key] = plan
            rows.append(
                {
                    "heads_kept_asked": k,
                    "heads_kept": plan.num_heads,
                    "neurons_kept": plan.num_neurons,
                    "flops_removed": round(plan.flops_removed(plan.meta["seq_len"]), 6),
                    "params_removed": round(plan.params_removed(), 6),
                    "budget_met": plan.meta["budget_met"],
                    "overshoot": round(overshoot(plan), 6),
                    criterion: value,
                    "_plan": plan,
                }
            )

        def best_row():
            return _pick(rows, criterion, step)

        coarse = _grid(lo, live, num_candidates)
        for k in coarse:
            evaluate(k)
        best = best_row()["heads_kept"]
        below = max([k for k in coarse if k < best], default=lo)
        above = min([k for k in coarse if k > best], default=live)
        for k in _grid(below, above, num_candidates):
            evaluate(k)
    finally:
        inner.train(was_training)

    winner = best_row()
    plan = winner["_plan"]
    table = [{k: v for k, v in r.items() if k != "_plan"} for r in sorted(rows, key=lambda r: r["heads_kept"])]
    plan.meta.update(
        {
            "budget_split": "search",
            "criterion": criterion,
            "heads_kept": plan.num_heads,
            "candidates": [[r["heads_kept"], r[criterion]] for r in table],
        }
    )
    report = {
        "criterion": criterion,
        "candidates": table,
        "best": {k: v for k, v in winner.items() if k != "_plan"},
        "unit_step": round(step, 6),
        "dense_loss": dense_loss,
        "batches": len(batches),
        "seconds": time.perf_counter() - started,
    }
    return plan, report


def _with_dense_labels(model, batches, loss_fn):
    """Unlabelled classifier batches: label them with the unpruned model's predictions (see the search)."""
    name = type(model).__name__
    if (
        loss_fn is not None
        or "ForSequenceClassification" not in name
        or getattr(model.config, "problem_type", None) == "regression"
    ):
        return batches
    out = []
    with torch.no_grad():
        for b in batches:
            if "labels" not in b:
                b = {**b, "labels": model(**b).logits.argmax(-1)}
            out.append(b)
    return out
