"""Shapes: the same counts in every layer (``uniform``), the same attention with FFN widths by score
(``balanced``), and every FFN width rounded to a multiple (``ffn_multiple_of``) within the target.
Each returns the keys of the atoms removed.
"""

from __future__ import annotations

import itertools
import math

from ..architectures import Geometry
from ..units import HEAD, NEURON
from .atoms import dense_cost, kind_scales, order_key
from .validation import PlanError


def uniform_by_budget(
    atoms, g, cost, kv_cost, fixed, fraction, ranking, min_heads, multiple=1, normalize=True, min_ffn=0
):
    """The same counts in every layer: for each number of attention atoms kept per layer, the widest FFN
    that meets the budget (a ``multiple`` of neurons, or the layers' live width); the pair that keeps the most
    importance wins (Kwon et al.'s head-count sweep), each kind's importance divided by its ``kind_scales``
    (``normalize``: its mean importance per unit cost), so that the choice does not depend on the scale between
    head and neuron scores (as in ``balanced_by_budget`` and the budget split).

    ``ranking`` does not apply: every layer keeps the same counts by construction. Every layer keeps some
    attention (a config cannot say "no heads", and a decoder without attention is no language model), and at
    least ``min_ffn`` neurons (a multiple, or all it has). When no count meets the budget, the smallest allowed
    model is returned.
    """
    rows = {kind: [[] for _ in range(g.num_layers)] for kind in (HEAD, NEURON)}
    for a in sorted(atoms, key=order_key, reverse=True):  # most important first (a layer's slices: last first)
        rows[a.kind][a.layer].append(a)
    head_shapes = {tuple(a.size for a in row) for row in rows[HEAD]}
    widths = {len(row) for row in rows[NEURON]}
    if len(head_shapes) > 1 or len(widths) > 1:
        raise PlanError(
            "uniform=True needs a model whose layers are alike; this one was pruned unevenly before: prune it "
            "with uniform=False"
        )
    head_row, width_max = head_shapes.pop(), widths.pop()
    width_min = min(min_ffn, width_max)
    scale = kind_scales(atoms, cost, kv_cost, normalize)
    target = (1.0 - fraction) * dense_cost(g, cost, kv_cost, fixed)
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
        width = max(width, width_min)  # the floor is an allowed width (rounded up by ffn_floor)
        heads = [a for row in rows[HEAD] for a in row[:c]]
        value = sum(a.score for a in heads) / scale[HEAD]
        value += sum(a.score for row in rows[NEURON] for a in row[:width]) / scale[NEURON]
        left = room - width * g.num_layers * cost[NEURON]  # budget the FFN could not take back: removed beyond it
        fits = left >= -1e-9
        # With the FFN at full width and budget left over, this head count removes more than asked: only
        # when no count meets the budget closely (as close as the allowed widths go) may such a plan win.
        close = fits and (width < width_max or left < g.num_layers * cost[NEURON])
        candidates.append((fits, close, value if fits else -head_cost, c, width))
    *_, c, width = max(candidates)
    return {a.key for row in rows[HEAD] for a in row[c:]} | {a.key for row in rows[NEURON] for a in row[width:]}


def _neuron_counts(rows, order, max_total: int, ranking: str, floors=None) -> list[int]:
    """Per-layer neurons kept when ``max_total`` are kept: the most important across layers (``"global"``,
    ``order`` lists each neuron's layer, most important first) or as evenly as the live widths allow. ``floors``:
    what each layer keeps at least (at most its live width), even past ``max_total``."""
    live = [len(r) for r in rows]
    floors = [0] * len(rows) if floors is None else floors
    max_total = max(0, min(max_total, sum(live)))
    counts = list(floors)
    left = max_total - sum(counts)
    if ranking == "global":
        seen = [0] * len(rows)
        for layer in order:  # a layer's first neurons in order are its floor, already counted
            if left <= 0:
                break
            seen[layer] += 1
            if seen[layer] > floors[layer]:
                counts[layer] += 1
                left -= 1
        return counts
    while left > 0:
        open_layers = [i for i in range(len(rows)) if counts[i] < live[i]]
        level = min(counts[i] for i in open_layers)  # fill the lowest layers first: as even as the floors allow
        lowest = [i for i in open_layers if counts[i] == level]
        above = [counts[i] for i in open_layers if counts[i] > level]
        step = min([live[i] - level for i in lowest] + [h - level for h in above])
        share = max(1, min(step, left // len(lowest)))
        for i in lowest:
            take = min(share, left)
            counts[i] += take
            left -= take
            if not left:
                break
    return counts


def _round_widths(
    prefix, live, counts, max_total: int, multiple: int, ranking: str = "global", floors=None
) -> list[int]:
    """Each layer's width rounded to the nearest multiple of ``multiple`` (or its live width), then stepped
    down one block at a time while more than ``max_total`` neurons are kept, and up while a step still fits.
    ``"global"``: down the block of least importance per neuron first, up the most important first;
    ``"per_layer"``: down the layer most above its own ``counts`` first, up the one most below (ties by
    importance), so layers stay as near their own targets as the multiples allow. ``prefix[l][k]``: importance
    of layer l's top k neurons. ``floors``: widths no layer steps below (each an allowed width, at most the live
    one; the counts are at least them); when the floors keep more than ``max_total``, they stay. Serves every
    plan: balanced, budgets and counts."""
    floors = [0] * len(live) if floors is None else floors

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
        options = [i for i, w in enumerate(widths) if w > 0 and down(w) >= floors[i]]
        if not options:
            break
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
    neurons = sorted((a for a in atoms if a.kind == NEURON), key=order_key, reverse=True)
    rows = [[] for _ in range(num_layers)]
    for a in neurons:
        rows[a.layer].append(a)
    prefix = [list(itertools.accumulate((a.score for a in row), initial=0.0)) for row in rows]
    return rows, prefix, [a.layer for a in neurons]


def balanced_by_budget(atoms, g, cost, kv_cost, fixed, fraction, ranking, min_heads, multiple, normalize, min_ffn=0):
    """The same number of attention atoms in every layer (swept, as ``uniform_by_budget`` does; a layer left with
    fewer by an earlier prune keeps all of its own); for each count the FFN neurons fill what the budget leaves (by
    ``ranking``; at least ``min_ffn`` per layer, or all a layer has), widths rounded by ``_round_widths``. The count
    whose plan keeps the most importance (on the scale of ``kind_scales``) and meets the budget wins; when none
    meets it, the smallest model."""
    L = g.num_layers
    head_rows = [[] for _ in range(L)]
    for a in sorted((a for a in atoms if a.kind == HEAD), key=order_key, reverse=True):
        head_rows[a.layer].append(a)  # most important first (a layer's slices: last first, with the kv heads)
    rows, prefix, order = _neuron_rows(atoms, L)
    live = [len(r) for r in rows]
    floors = [min(min_ffn, n) for n in live]
    scale = kind_scales(atoms, cost, kv_cost, normalize)
    most = max(len(r) for r in head_rows)  # a layer with fewer live atoms (an earlier prune) keeps what it has
    candidates = []
    for c in range(min(1, most), most + 1):
        if c < most and any(sum(a.size for a in r[:c]) < min(min_heads, sum(a.size for a in r)) for r in head_rows):
            continue
        heads = [a for r in head_rows for a in r[:c]]
        head_cost = sum(a.cost(cost, kv_cost) for a in heads)
        room = neuron_room(g, cost, kv_cost, fixed, fraction, head_cost)
        if room < sum(floors) - 1e-9:  # the floors alone cost more than the budget leaves
            candidates.append((False, False, -head_cost, c, floors))
            continue
        max_total = _neurons_allowed(room, sum(live))
        counts = _neuron_counts(rows, order, max_total, ranking, floors)
        widths = _round_widths(prefix, live, counts, max_total, multiple, ranking, floors)
        if sum(widths) > max_total:  # the floors, rounded, keep more than the budget leaves
            candidates.append((False, False, -head_cost, c, widths))
            continue
        value = sum(a.score for a in heads) / scale[HEAD] + sum(p[w] for p, w in zip(prefix, widths)) / scale[NEURON]
        # an FFN kept whole with budget left over removes more than asked: such a count wins only when no other
        # count meets the budget closely (as in uniform_by_budget)
        close = sum(widths) < sum(live) or room - sum(widths) < L
        candidates.append((True, close, value, c, widths))
    *_, c, widths = max(candidates, key=lambda t: t[:4])
    return {a.key for r in head_rows for a in r[c:]} | {a.key for r, w in zip(rows, widths) for a in r[w:]}


def neuron_room(g: Geometry, cost, kv_cost, fixed, fraction, head_cost: float) -> float:
    """How many neurons (fractional; inf if neurons are free) a budget of ``fraction`` of the blocks' cost leaves
    once each layer's fixed cost and the attention kept (``head_cost``) are paid; negative when those already
    cost more."""
    room = (1.0 - fraction) * dense_cost(g, cost, kv_cost, fixed) - g.num_layers * fixed - head_cost
    return room / cost[NEURON] if cost[NEURON] > 0 else math.inf


def _neurons_allowed(room: float, live_total: int) -> int:
    return max(0, math.floor(min(room, live_total) + 1e-9))


def round_neurons(atoms, g, removed: set, multiple: int, ranking: str, room: float | None = None, min_ffn=0) -> set:
    """``removed`` with each layer's FFN width rounded by ``_round_widths``: at most as many neurons kept in
    total as ``removed`` keeps (a count target), or as ``room`` allows (a budget, in neurons; ``neuron_room``),
    so the target still holds, and never below ``min_ffn`` (an allowed width; a layer with fewer live neurons
    keeps them all). Which neurons: each layer's most important."""
    rows, prefix, _ = _neuron_rows(atoms, g.num_layers)
    live = [len(r) for r in rows]
    floors = [min(min_ffn, n) for n in live]
    counts = [max(f, sum(a.key not in removed for a in row)) for f, row in zip(floors, rows)]
    max_total = sum(counts) if room is None else _neurons_allowed(room, sum(live))
    widths = _round_widths(prefix, live, counts, max_total, multiple, ranking, floors)
    kept = {a.key for r, w in zip(rows, widths) for a in r[:w]}
    return {k for k in removed if k[1] != NEURON} | {a.key for r in rows for a in r if a.key not in kept}
