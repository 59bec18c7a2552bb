"""Atoms: what a plan removes in one piece (a neuron, a head, a slice of query heads, a key/value group), made
from scores, with the order and costs every allocation (``ranking``, ``shapes``, ``latency_budget``) ranks them by.
"""

from __future__ import annotations

from typing import NamedTuple

from ..architectures import Geometry
from ..scoring.scores import Scores
from ..units import HEAD, KV_GROUP, NEURON


class Atom(NamedTuple):
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


def _attention_atoms(g: Geometry, layer: int, ids, head_scores, group_scores, attention_unit) -> list[Atom]:
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
            out.append(Atom(layer, HEAD, tuple(sorted(i for _, i in members)), score, kv=1))
        return out
    ranked = [sorted(groups[k]) for k in keys]  # ascending score, ties by id
    width = len(ranked[0]) if ranked else 0  # equal in every group (the plan that made this model checked it)
    return [
        Atom(
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


def order_key(a):
    # Ascending importance; ties broken by position (a layer's slices by rank) so plans are deterministic.
    return (a.score, a.layer, a.rank, a.ids)


def least_first(atoms):
    return sorted(atoms, key=order_key)


def units_per_layer(atoms, g: Geometry) -> list[int]:
    """Units (query heads or neurons) per layer among ``atoms``."""
    sizes = [0] * g.num_layers
    for a in atoms:
        sizes[a.layer] += a.size
    return sizes


def dense_cost(g: Geometry, cost, kv_cost, fixed) -> float:
    per_layer = fixed + g.num_heads * cost[HEAD] + g.num_key_value_heads * kv_cost + g.intermediate_size * cost[NEURON]
    return g.num_layers * per_layer


def price(a: Atom, cost: dict, kv_cost: float) -> float:
    # a slice's key/value heads go only with the layer's last slice: left out so a layer's slices go in order
    return a.size * cost[a.kind] + (0 if a.shared_kv else a.kv * kv_cost)


def kind_scales(atoms, cost, kv_cost, normalize: bool) -> dict[str, float]:
    """Each kind's mean importance per unit cost (1 without ``normalize``): what a kind's scores are divided
    by so that heads and neurons compare on one scale (``budget_split="normalized"``)."""
    scale = {HEAD: 1.0, NEURON: 1.0}
    if normalize:
        for kind in scale:
            values = [a.score / max(price(a, cost, kv_cost), 1e-30) for a in atoms if a.kind == kind]
            mean = sum(values) / len(values) if values else 0.0
            scale[kind] = mean if mean > 0 else 1.0  # all-zero scores: nothing to rescale
    return scale


def score_atoms(scores: Scores, attention_unit: str, normalize_heads: bool) -> list[Atom]:
    """Every layer's atoms (attention as ``_attention_atoms`` cuts it, then one per neuron), scored by ``scores``;
    ``normalize_heads`` divides each layer's head (and group) scores by their L2 norm first."""
    g = scores.geometry
    head_scores = [s.float().clone() for s in scores.heads]
    group_scores = None if scores.groups is None else [s.float().clone() for s in scores.groups]
    if normalize_heads:
        head_scores = [_unit_norm(s) for s in head_scores]
        group_scores = None if group_scores is None else [_unit_norm(s) for s in group_scores]
    atoms = []
    for layer in range(g.num_layers):
        layer_groups = None if group_scores is None else group_scores[layer]
        atoms += _attention_atoms(g, layer, scores.head_ids[layer], head_scores[layer], layer_groups, attention_unit)
        atoms += [Atom(layer, NEURON, (i,), float(v)) for i, v in zip(scores.neuron_ids[layer], scores.neurons[layer])]
    return atoms


def kept_ids(atoms, num_layers: int, removed: set) -> tuple[list[list[int]], list[list[int]]]:
    """The original head and neuron ids each layer keeps when the atoms keyed in ``removed`` go."""
    heads = [[] for _ in range(num_layers)]
    neurons = [[] for _ in range(num_layers)]
    for atom in atoms:
        if atom.key not in removed:
            (heads if atom.kind == HEAD else neurons)[atom.layer].extend(atom.ids)
    return heads, neurons
