"""Removing the least important atoms: a count of one kind (``head_sparsity`` / ``ffn_sparsity``), a FLOPs or
parameter budget by importance per unit cost, or a number of heads kept then neurons to the budget; across all
layers (``ranking="global"``) or layer by layer (``"per_layer"``). Each returns the keys of the atoms removed.
"""

from __future__ import annotations

import math

from ..units import HEAD, NEURON
from .atoms import dense_cost, kind_scales, least_first, order_key, price, units_per_layer
from .validation import PlanError


def remove_by_count(atoms, g, kind, sparsity, per_layer_total, ranking, min_keep, uniform=False, multiple=1):
    """Remove the least important ``kind`` atoms until ``sparsity`` of the original units are gone (to the
    nearest count the atoms allow), keeping at least ``min_keep`` units per layer. ``uniform``: every layer keeps
    the same count, for neurons rounded down to a ``multiple`` unless it is the layers' live width."""
    live = [a for a in atoms if a.kind == kind]
    left = units_per_layer(live, g)
    removed = set()
    if ranking == "per_layer":
        keep = per_layer_total - math.floor(sparsity * per_layer_total + 0.5)
        if uniform:  # a layer cannot grow back: the narrowest one sets every layer's count
            keep = min([keep, *left])
            if kind == NEURON and keep < min(left, default=0):
                keep -= keep % multiple  # down: the rounded plan still removes what was asked
        for layer in range(g.num_layers):
            for a in least_first([a for a in live if a.layer == layer]):
                # remove while that brings the layer nearer its target (no nearer: keep the atom)
                if left[layer] - a.size / 2 > keep and left[layer] - a.size >= min_keep:
                    removed.add(a.key)
                    left[layer] -= a.size
        return removed
    keep_total = g.num_layers * per_layer_total - math.floor(sparsity * g.num_layers * per_layer_total + 0.5)
    to_remove = sum(left) - keep_total
    for a in least_first(live):
        if to_remove - a.size / 2 <= 0:
            continue
        if left[a.layer] - a.size < min_keep:
            continue
        removed.add(a.key)
        left[a.layer] -= a.size
        to_remove -= a.size
    return removed


def remove_by_budget(atoms, g, cost, kv_cost, fixed, fraction, ranking, min_heads, normalize=False, min_ffn=0):
    """Greedy by importance per unit of cost until ``fraction`` of the original block cost is gone.

    ``fixed`` is each layer's cost that no pruning removes (biases, norms); it counts in the total.
    ``normalize`` divides each kind's importance per cost by the kind's mean (over all live atoms of the
    kind), so scaling one kind's scores changes nothing. ``min_ffn``: neurons every layer keeps (or all it has).
    """
    full_cost = dense_cost(g, cost, kv_cost, fixed)
    removed, heads_left = set(), units_per_layer([a for a in atoms if a.kind == HEAD], g)
    neurons_left = units_per_layer([a for a in atoms if a.kind == NEURON], g)

    scale = kind_scales(atoms, cost, kv_cost, normalize)

    def ratio(a):
        return (a.score / price(a, cost, kv_cost) / scale[a.kind], a.layer, a.kind, a.rank, a.ids)

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
            if a.kind == NEURON and neurons_left[a.layer] - a.size < min_ffn:
                continue
            removed.add(a.key)
            current -= a.cost(cost, kv_cost)
            (heads_left if a.kind == HEAD else neurons_left)[a.layer] -= a.size
    return removed


def keep_heads_then_neurons(atoms, g, cost, kv_cost, fixed, fraction, ranking, min_heads, heads_kept, min_ffn=0):
    """Keep the ``heads_kept`` most important (query) heads, then remove the least important neurons until
    ``fraction`` of the original block cost is gone (or no neuron is left).

    Heads and neurons are ranked within their kind only, so the scale between kinds never matters. Heads go
    in atoms; an atom is kept while that brings the count no farther from ``heads_kept`` (ties keep it).
    Under ``"per_layer"`` ranking each next atom goes to the layer keeping the fewest heads so far, and
    neurons are removed from the layer with the most left, so layers stay as even as their live units allow.
    ``min_ffn``: neurons every layer keeps (or all it has).
    """
    head_atoms = [a for a in atoms if a.kind == HEAD]
    live = units_per_layer(head_atoms, g)
    floor = sum(min(min_heads, n) for n in live)
    if heads_kept > sum(live):
        raise PlanError(f"heads_kept={heads_kept} is more than the {sum(live)} heads the model has")
    if heads_kept < floor:
        raise PlanError(
            f"heads_kept={heads_kept} is fewer than min_heads_per_layer={min_heads} allows ({floor} heads in "
            "total): lower min_heads_per_layer or keep more heads"
        )
    rows = [[] for _ in range(g.num_layers)]
    for a in sorted(head_atoms, key=order_key, reverse=True):  # most important first (slices: last first)
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
        rest = sorted((a for row, t in zip(rows, taken) for a in row[t:]), key=order_key, reverse=True)
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
    target = (1.0 - fraction) * dense_cost(g, cost, kv_cost, fixed)
    neuron_rows = [[] for _ in range(g.num_layers)]
    for a in least_first([a for a in atoms if a.kind == NEURON]):  # least important first
        neuron_rows[a.layer].append(a)
    if ranking == "global":
        order = least_first([a for row in neuron_rows for a in row])
    else:  # round robin from the widest layer: as even as the live widths allow
        order, left, pos = [], [len(row) for row in neuron_rows], [0] * g.num_layers
        while any(p < len(row) for p, row in zip(pos, neuron_rows)):
            open_layers = [i for i in range(g.num_layers) if pos[i] < len(neuron_rows[i])]
            layer = max(open_layers, key=lambda i: (left[i], -neuron_rows[i][pos[i]].score, -i))
            order.append(neuron_rows[layer][pos[layer]])
            pos[layer] += 1
            left[layer] -= 1
    neurons_left = [len(row) for row in neuron_rows]
    for a in order:
        if current <= target + 1e-9:
            break
        if neurons_left[a.layer] - a.size < min_ffn:
            continue
        removed.add(a.key)
        current -= a.cost(cost, kv_cost)
        neurons_left[a.layer] -= a.size
    return removed
