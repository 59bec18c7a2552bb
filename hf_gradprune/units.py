"""The kinds of prunable unit, spelled one way everywhere in the package."""

from __future__ import annotations

from typing import NamedTuple

HEAD = "head"
NEURON = "neuron"
UNIT_KINDS = (HEAD, NEURON)
# A key/value head with the query heads that read it (grouped-query attention): the other attention unit a
# plan can remove whole (``attention_unit="kv_group"``); by default query heads go within their groups.
KV_GROUP = "kv_group"
ATTENTION_UNITS = (HEAD, KV_GROUP)


class UnitCosts(NamedTuple):
    """What one unit of each kind costs, as plain numbers; a family's adapter says (``unit_costs``).

    The budget splits in ``planning/`` (``ranking.py``, ``shapes.py``) read only these, so they know no family.
    """

    head_params: int
    neuron_params: int
    fixed_params: int  # per layer, what no pruning removes (output biases, norms)
    head_flops: float  # per token, including the attention-score term at the sequence length asked for
    neuron_flops: float  # per token
    # A key/value head's own projections under grouped-query attention (0 where each head has its own,
    # whose cost is then in the head's): removed only with the last query head of its group.
    kv_head_params: int = 0
    kv_head_flops: float = 0.0

    def params(self) -> dict[str, int]:
        return {HEAD: self.head_params, NEURON: self.neuron_params}

    def flops(self) -> dict[str, float]:
        return {HEAD: self.head_flops, NEURON: self.neuron_flops}
