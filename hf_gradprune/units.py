"""The two kinds of prunable unit, spelled one way everywhere in the package."""

from __future__ import annotations

from typing import NamedTuple

HEAD = "head"
NEURON = "neuron"
UNIT_KINDS = (HEAD, NEURON)


class Unit(NamedTuple):
    """One live unit while a plan is being made: its layer, kind, original id and importance."""

    layer: int
    kind: str  # HEAD or NEURON
    id: int  # index in the original (unpruned) model
    score: float

    @property
    def key(self) -> tuple[int, str, int]:
        """What identifies the unit, whatever its score."""
        return (self.layer, self.kind, self.id)
