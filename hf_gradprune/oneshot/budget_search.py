"""How a FLOPs/parameter budget is split between heads and neurons, chosen on calibration data.

``PruningPlan.from_scores(..., heads_kept=k)`` fixes the number of heads a budget keeps and fills the rest
with neurons; ``search_budget_split`` sweeps ``k`` (Kwon et al. 2022, "A Fast Post-Training Pruning
Framework for Transformers") and keeps the plan whose calibration loss is lowest. The sweep measures a coarse
grid of ``k``, then narrows a bracket around the best one (``_sweep``): each plan costs one forward per
calibration batch, so the number measured is the search's cost. Candidates are not cut:
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
import numbers
import time
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from ..planning.plan import DEFAULT_FFN_MULTIPLE_OF, PlanError, PruningPlan, validate_targets
from ..scoring.scores import Scores
from ..state import pruning_state, unwrap_model
from .calibration import CalibrationError, LossFn, calibration_batches, check_count, model_loss
from .score_pass import batch_loss

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


def _sweep(lo: int, hi: int, num_candidates: int, measure, winner, rank) -> None:
    """Drive the head totals tried: a coarse grid of ``ceil(num_candidates / 2)`` totals (at least 3, at most
    ``num_candidates``) from ``lo`` to ``hi``, then a narrowing bracket: the larger of the two gaps beside the
    current winner is halved (on equal gaps, the one beside the better neighbour), until the winner's neighbours
    are adjacent totals or ``num_candidates`` plans were measured.

    ``measure(k)`` returns whether plan ``k`` was new (a plan seen under another ``k`` costs nothing and does
    not count); ``winner()`` the smallest and largest ``k`` tried that gave the current winner's plan;
    ``rank(k)`` how good a measured ``k``'s plan is (lower is better). The
    whole coarse grid is always measured, so a loss curve that is not unimodal still has its best region
    found at the grid's resolution; the bracket only narrows around the best the grid found.
    """
    tried: set[int] = set()
    count = 0
    for k in _grid(lo, hi, min(num_candidates, max(3, math.ceil(num_candidates / 2)))):
        tried.add(k)
        count += measure(k)
    while count < num_candidates:
        first, last = winner()
        below = max((k for k in tried if k < first), default=first)
        above = min((k for k in tried if k > last), default=last)
        if max(first - below, above - last) < 2:
            return  # the winner's neighbours are adjacent: nothing left between them
        left, right = first - below, above - last
        if left == right:  # the side of the better neighbour, where a smooth curve's minimum more likely is
            left += rank(below) < rank(above)
        k = (below + first) // 2 if left >= right else (last + above + 1) // 2
        tried.add(k)
        count += measure(k)


@torch.no_grad()
def _mean_loss(model, batches, loss_fn, gates=None, micro_batch_size=None) -> float:
    heads, neurons = gates if gates is not None else (None, None)
    total = 0.0
    with unit_gates(model, heads, neurons):
        for batch in batches:
            total += float(batch_loss(model, batch, loss_fn, micro_batch_size))
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
    dense_losses: Sequence[float] | None = None,
    micro_batch_size: int | None = None,
    **plan_kwargs,
) -> tuple[PruningPlan, dict]:
    """Pick how many heads a budget keeps: sweep ``heads_kept`` and keep the best plan.

    Candidates: each is ``PruningPlan.from_scores(scores, <budget>, heads_kept=k, **plan_kwargs)``, for head
    totals ``k`` from the fewest heads whose plan removes at most one unit's cost beyond the budget (found by
    bisection on the plans alone) to every live head. ``num_candidates`` is the most plans measured: half of
    them (at least 3) on an even grid over that range, the rest halving the gaps beside the best so far
    until its neighbours are adjacent totals (``_sweep``); a plan two totals give is measured once.
    ``criterion="loss"``: the mean calibration loss (``calibration.model_loss``; ``loss_fn`` if given) over
    the first ``max_batches`` batches of ``calibration``, with the candidate's removed units gated off in
    eval mode (no model is cut). Unlabelled classifier batches get the unpruned model's predictions as
    labels, so the loss measures how far a candidate strays from the model. ``criterion="importance"``:
    the sum of the kept units' scores, no forward (``calibration`` may be None); it only compares heads and
    neurons fairly when scores estimate the loss increase on one scale (``fisher``), not for ``taylor``,
    ``magnitude`` or ``random``. The winner is chosen by the rule in the module docstring: within one unit's
    cost of the budget, best value, near ties to the tightest; a candidate that misses the budget (its heads
    alone cost too much) wins only if none meets it.

    ``dense_losses``: the unpruned model's loss on each batch the search uses (the first ``max_batches``, in
    order; the same ``loss_fn``, eval mode), as floats, when the caller already has them (``prune_oneshot``'s
    scoring pass): the search then skips its own dense forward. A non-finite value drops its batch, as a
    computed one would. Unused with ``criterion="importance"``. Unlabelled classifier batches still take one
    forward each for their labels, which gives their dense loss too.

    ``micro_batch_size``: each forward runs at most that many sequences (``score_pass.batch_loss``: the batch's
    loss combined exactly from its chunks; the default loss only), which bounds the activations and logits an
    LLM's long calibration sequences take.

    Cost: ``criterion="loss"`` runs at most ``(num_candidates + 1) * batches`` forwards of one batch (the
    ``+ 1``: the dense pass, skipped with ``dense_losses`` unless classifier batches need labels), no
    backward.

    Returns the best plan (``meta``: ``budget_split="search"``, ``criterion``, ``heads_kept``,
    ``candidates``: [heads kept, value] pairs) and a report (``candidates``: one row per plan measured, with
    its ``overshoot``: the fraction removed beyond the budget; ``unit_step``: one unit's cost, the overshoot
    allowed; ``best``, ``dense_loss``, ``dense_loss_from``: ``"given"``, ``"labelling"`` (the classifier
    labelling pass), ``"forward"`` or None; ``batches``; ``forwards``: forwards of one batch run, dense ones
    included; ``dense_forwards``; ``seconds``).
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
    micro_batch_size = check_count("micro_batch_size", micro_batch_size)
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
    batches, dense_loss, dense_from = [], None, None
    if criterion == "loss":
        if calibration is None:
            raise CalibrationError("criterion='loss' needs calibration batches (a DataLoader)")
        batches = list(calibration_batches(calibration, inner, max_batches=max_batches))
        dense_losses = _check_dense_losses(dense_losses, len(batches))
    forwards = {"dense": 0, "candidates": 0}
    was_training = inner.training
    inner.eval()
    try:
        if criterion == "loss":
            batches, labelled = _with_dense_labels(inner, batches, loss_fn)
            forwards["dense"] += len(batches) if labelled else 0
            if dense_losses is not None:
                per_batch, dense_from = dense_losses, "given"
            elif labelled:  # the labelling pass gave the losses too
                per_batch, dense_from = labelled, "labelling"
            else:
                with torch.no_grad():
                    per_batch = [float(batch_loss(inner, b, loss_fn, micro_batch_size)) for b in batches]
                forwards["dense"] += len(batches)
                dense_from = "forward"
            finite = [b for b, v in zip(batches, per_batch) if math.isfinite(v)]
            if not finite:
                raise CalibrationError(
                    f"the calibration loss of the unpruned model is NaN or inf on every one of the {len(batches)} "
                    "batches: check the loss_fn, the labels and the inputs"
                )
            batches = finite  # a batch the unpruned model cannot score says nothing about a candidate
            dense_loss = sum(v for v in per_batch if math.isfinite(v)) / len(finite)

        rows, seen, asked, keys = [], {}, {}, {}

        def evaluate(k: int) -> bool:
            plan = make(k)
            key = (tuple(map(tuple, plan.heads)), tuple(map(tuple, plan.neurons)))
            asked.setdefault(key, []).append(k)
            keys[k] = key
            if key in seen:  # grouped-query atoms round several k to one plan
                return False
            if criterion == "loss":
                value = _mean_loss(inner, batches, loss_fn, plan_gates(inner, plan), micro_batch_size)
                value = value if math.isfinite(value) else math.inf
                forwards["candidates"] += len(batches)
            else:
                value = _kept_importance(plan, scores)
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
                    "_key": key,
                }
            )
            seen[key] = rows[-1]
            return True

        def best_row():
            return _pick(rows, criterion, step)

        def winner() -> tuple[int, int]:
            ks = asked[best_row()["_key"]]
            return min(ks), max(ks)

        sign = 1.0 if criterion == "loss" else -1.0

        def rank(k: int) -> float:
            return sign * seen[keys[k]][criterion]

        _sweep(lo, live, num_candidates, evaluate, winner, rank)
    finally:
        inner.train(was_training)

    winner = best_row()
    plan = winner["_plan"]
    table = [{k: v for k, v in r.items() if k[0] != "_"} for r in sorted(rows, key=lambda r: r["heads_kept"])]
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
        "best": {k: v for k, v in winner.items() if k[0] != "_"},
        "unit_step": round(step, 6),
        "dense_loss": dense_loss,
        "dense_loss_from": dense_from,
        "batches": len(batches),
        "forwards": forwards["dense"] + forwards["candidates"],
        "dense_forwards": forwards["dense"],
        "seconds": time.perf_counter() - started,
    }
    return plan, report


def _with_dense_labels(model, batches, loss_fn) -> tuple[list, list[float]]:
    """Unlabelled classifier batches: label them with the unpruned model's predictions (see the search).

    Returns the batches and, when it ran the model, each batch's loss against those labels (the loss
    ``model_loss`` gives the unlabelled batch), so the dense loss needs no second forward; else ``[]``.
    """
    name = type(model).__name__
    if (
        loss_fn is not None
        or "ForSequenceClassification" not in name
        or getattr(model.config, "problem_type", None) == "regression"
        or all("labels" in b for b in batches)
    ):
        return batches, []
    out, losses = [], []
    with torch.no_grad():
        for b in batches:
            if "labels" in b:
                losses.append(float(model_loss(model, b)))
            else:
                logits = model(**b).logits
                b = {**b, "labels": logits.argmax(-1)}
                losses.append(float(nn.functional.cross_entropy(logits.float(), b["labels"])))
            out.append(b)
    return out, losses


def _check_dense_losses(dense_losses, n: int) -> list[float] | None:
    """``dense_losses`` as floats, one per batch the search uses; ``CalibrationError`` naming what is wrong."""
    if dense_losses is None:
        return None
    if isinstance(dense_losses, (str, bytes)) or not isinstance(dense_losses, Sequence):
        raise CalibrationError(
            f"dense_losses must be a list of floats (the unpruned model's loss on each search batch), got "
            f"{type(dense_losses).__name__}"
        )
    bad = [v for v in dense_losses if isinstance(v, bool) or not isinstance(v, numbers.Real)]
    if bad:
        raise CalibrationError(
            f"dense_losses must hold plain numbers (float(loss) per batch), got {type(bad[0]).__name__}: {bad[0]!r}"
        )
    if len(dense_losses) != n:
        raise CalibrationError(
            f"dense_losses has {len(dense_losses)} values, the search uses {n} batches (the first max_batches of "
            "calibration): pass one loss per search batch, in order, or None to compute them here"
        )
    return [float(v) for v in dense_losses]
