"""Mask rearrangement (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers").

A plan removes, per layer, the units of least importance one by one. Two units can each look unimportant
yet cost a lot together: the Fisher estimate of the loss change from removing a set ``R`` of a layer's
units is ``sum over batches b of (sum over u in R of G[u, b])**2``, where ``G[u, b]`` is the gradient of
batch ``b``'s loss w.r.t. unit ``u``'s gate (``ImportanceScorer(..., record_batches=True)`` records it).
The diagonal of that quadratic form is the Fisher score; the plan ignores the rest. Kwon's greedy swap
keeps each layer's count and lowers the whole objective: starting from the plan's removed set, each kept
unit in ascending order of ``sum_b G**2`` joins the set, then the unit whose leaving gives the smallest
objective leaves it (possibly the one that just joined).

Heads are rearranged only without grouped-query attention: under it a plan removes slices across
groups or whole groups, not single heads, and a swap of heads could leave groups unequally wide.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..units import HEAD, NEURON
from .plan import PruningPlan

_HOW = "score with ImportanceScorer(..., record_batches=True) and pass its batch_gradients"


def objective(grads: torch.Tensor, removed: Sequence[int]) -> float:
    """``sum over batches of (sum over removed units of grads[u, b])**2`` for ``grads`` ``[units, batches]``."""
    idx = torch.as_tensor(list(removed), dtype=torch.long)
    return float(grads.double()[idx].sum(0).square().sum())


def greedy_swap(grads: torch.Tensor, removed: Sequence[int]) -> tuple[list[int], float, float]:
    """Kwon et al.'s greedy rearrangement of one layer's removed set; the count stays the same.

    ``grads``: ``[units, batches]`` per-batch gate gradients; ``removed``: the positions (rows) the plan
    removes. Returns (new removed positions, ascending; objective before; objective after), after <= before.
    """
    g = grads.detach().double().cpu()
    units = g.shape[0]
    start = sorted({int(i) for i in removed})
    if any(not 0 <= i < units for i in start) or len(start) != len(removed):
        raise ValueError(f"removed positions must be distinct and in [0, {units}), got {list(removed)}")
    before = objective(g, start)
    if not start or len(start) == units:
        return start, before, before
    norms = g.square().sum(1)  # each unit's own objective: its Fisher score
    in_start = torch.zeros(units, dtype=torch.bool)
    in_start[start] = True
    order = torch.argsort(norms, stable=True)
    candidates = order[~in_start[order]].tolist()  # the kept units, least important first

    # The removed set lives in a buffer with one spare row: a joining unit takes the spare row and the unit
    # that leaves frees its row. The running sum is updated, never recomputed, so a step costs one
    # matrix-vector product over the set.
    n = len(start)
    rows = torch.empty(n + 1, g.shape[1], dtype=torch.float64)
    rows[:n] = g[start]
    ids = torch.tensor(start + [-1])
    row_norms = torch.empty(n + 1, dtype=torch.float64)
    row_norms[:n] = norms[start]
    total = rows[:n].sum(0)
    spare = n
    for unit in candidates:
        rows[spare], ids[spare], row_norms[spare] = g[unit], unit, norms[unit]
        joined = total + g[unit]
        # ||joined - row||^2 for every row: the objective if that row's unit leaves
        after_leaving = joined.square().sum() - 2 * (rows @ joined) + row_norms
        leave = int(torch.argmin(after_leaving))
        # On a tie the newcomer leaves: a swap that gains nothing is no swap.
        if after_leaving[leave] >= after_leaving[spare]:
            leave = spare
        total = joined - rows[leave]
        spare = leave
    keep = torch.ones(n + 1, dtype=torch.bool)
    keep[spare] = False
    result = sorted(ids[keep].tolist())
    after = objective(g, result)  # from scratch: the running sum's rounding does not decide
    if after > before:  # each step can only lower it; should rounding say otherwise, keep the plan's set
        return start, before, before
    return result, before, after


def rearrange_plan(
    plan: PruningPlan,
    batch_gradients: dict[str, list[torch.Tensor]],
    head_ids: list[list[int]],
    neuron_ids: list[list[int]],
) -> tuple[PruningPlan, list[dict]]:
    """Rearrange which units ``plan`` removes in each layer, keeping every layer's counts.

    ``batch_gradients``: ``ImportanceScorer(..., record_batches=True).batch_gradients``; ``head_ids`` /
    ``neuron_ids``: the original ids of its columns (``scorer.scores.head_ids`` / ``.neuron_ids``, or
    ``pruning_state(model)``'s), i.e. the live units of the model the plan will prune. Neurons are always
    rearranged, heads only without grouped-query attention. A unit that is not live is never added.

    Returns the new plan (``meta["rearranged"] = True``) and one report per layer and kind: ``layer``,
    ``kind``, ``removed`` (units the plan removes there), ``swapped`` (units now removed instead of others),
    ``objective_before`` / ``objective_after``, or ``skipped`` with the reason.
    """
    g = plan.geometry
    live = {HEAD: head_ids, NEURON: neuron_ids}
    kept = {HEAD: plan.heads, NEURON: plan.neurons}
    for kind in (HEAD, NEURON):
        if len(live[kind]) != g.num_layers:
            raise ValueError(f"{kind} ids must cover all {g.num_layers} layers, got {len(live[kind])}")
        if kind not in batch_gradients or len(batch_gradients[kind]) != g.num_layers:
            raise ValueError(f"batch_gradients lack the {kind}s of all {g.num_layers} layers; {_HOW}")
        for layer in range(g.num_layers):
            extra = sorted(set(kept[kind][layer]) - set(live[kind][layer]))
            if extra:
                raise ValueError(
                    f"layer {layer}: the plan keeps {kind}s {extra[:8]} that are not among the live ids the "
                    "gradients cover: was it made for another model, or from scores taken before a prune?"
                )
            shape = tuple(batch_gradients[kind][layer].shape)
            if len(shape) != 2 or shape[1] != len(live[kind][layer]):
                raise ValueError(
                    f"layer {layer}: {kind} batch gradients of shape {shape} do not match the "
                    f"{len(live[kind][layer])} live {kind} ids given ([passes, live units] expected)"
                )
            if shape[0] == 0:
                raise ValueError(f"no recorded passes for the {kind}s of layer {layer}; {_HOW}")

    new = {HEAD: [list(x) for x in plan.heads], NEURON: [list(x) for x in plan.neurons]}
    report = []
    for layer in range(g.num_layers):
        for kind in (HEAD, NEURON):
            ids = list(live[kind][layer])
            kept_set = set(kept[kind][layer])
            removed = [pos for pos, i in enumerate(ids) if i not in kept_set]
            entry = {"layer": layer, "kind": kind, "removed": len(removed)}
            if kind == HEAD and g.group_size > 1:
                entry["skipped"] = (
                    "grouped-query attention: the plan removes heads in slices across key/value groups or as "
                    "whole groups, which a swap of single heads would not keep equally wide"
                )
                report.append(entry)
                continue
            grads = batch_gradients[kind][layer].T  # [units, passes]
            result, before, after = greedy_swap(grads, removed)
            gone = {ids[pos] for pos in result}
            new[kind][layer] = [i for i in ids if i not in gone]
            entry.update(swapped=len(set(result) - set(removed)), objective_before=before, objective_after=after)
            report.append(entry)
    meta = {**plan.meta, "rearranged": True}
    return PruningPlan(g, new[HEAD], new[NEURON], meta), report
