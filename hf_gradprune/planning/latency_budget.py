"""Planning to a latency budget: a fraction of the dense model's time as a latency table predicts it, by Kwon et
al.'s lookup (``remove_by_latency``) or by bisection over another allocation's budget (``search_latency``). A table
is anything with ``predict(plan) -> ms``; this module never imports ``deploy``.
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

from ..architectures import Geometry
from ..units import HEAD, NEURON
from .atoms import kind_scales, least_first
from .validation import PlanError


class _Shape(NamedTuple):
    """What a latency table reads of a plan: its geometry and the units each layer keeps."""

    geometry: Geometry
    heads: list
    neurons: list


def _uniform_ms(g: Geometry, table, heads: int, neurons: int) -> float:
    # a table reads only how many units each layer keeps, so ranges stand in for the id lists
    return float(table.predict(_Shape(g, [range(heads)] * g.num_layers, [range(neurons)] * g.num_layers)))


def check_latency_reachable(g: Geometry, table, dense_ms: float, fraction: float) -> None:
    floor_ms = _uniform_ms(g, table, 0, 0)
    if dense_ms <= 0 or 1 - floor_ms / dense_ms < fraction - 1e-12:
        most = 1 - floor_ms / dense_ms if dense_ms > 0 else 0.0
        raise PlanError(
            f"latency_budget={fraction} cannot be met: with every head and neuron removed the latency table still "
            f"predicts {floor_ms:.3f} of the dense {dense_ms:.3f} ms (embeddings, norms, ...), at most {most:.1%} "
            "removed; lower latency_budget"
        )


def remove_by_latency(
    atoms, g: Geometry, table, dense_ms: float, fraction: float, min_heads: int, normalize: bool, min_ffn: int = 0
):
    """Kwon et al.'s lookup-table allocation: remove, across all layers, the atom of least importance per
    millisecond it saves, where what it saves is read from the table at its layer's current count, until the
    predicted time is at most ``1 - fraction`` of ``dense_ms`` (or nothing more may go).

    So where the table says a layer's last neurons cost more per neuron (the FFN's fixed overhead, spread over
    the first samples), they are priced so, and a nearly empty layer is emptied sooner than FLOPs would say.
    The choice is greedy, one step at a time (no lookahead past the next unit). A layer's part
    is its share of the uniform shapes' prediction (a ``LatencyTable`` is per layer already). Importance is on
    the scale of ``kind_scales`` (priced at the table's mean ms per unit). Every layer keeps ``min_heads`` heads
    and ``min_ffn`` neurons (or all it has).
    """
    L, H, N = g.num_layers, g.num_heads, g.intermediate_size
    floor = _uniform_ms(g, table, 0, 0)
    attn = [(_uniform_ms(g, table, h, 0) - floor) / L for h in range(H + 1)]
    ffn = [(_uniform_ms(g, table, 0, n) - floor) / L for n in range(N + 1)]
    per_unit = {HEAD: max(attn[H] / H, 1e-12), NEURON: max(ffn[N] / N, 1e-12)}
    scale = kind_scales(atoms, per_unit, 0.0, normalize)
    rows = {HEAD: [[] for _ in range(L)], NEURON: [[] for _ in range(L)]}
    for a in least_first(atoms):  # least important first (a layer's slices in rank order)
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
        if left - a.size < min(min_heads if kind == HEAD else min_ffn, left):
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


def search_latency(g: Geometry, table, dense_ms: float, fraction: float, allocate, kept):
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
