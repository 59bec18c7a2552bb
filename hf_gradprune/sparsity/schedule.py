"""The gradual sparsity schedule: Zhu & Gupta's cubic ramp (the one oBERT and nn_pruning use)."""

from __future__ import annotations


def cubic_sparsity(step: int, start_step: int, end_step: int, final: float, initial: float = 0.0) -> float:
    """Sparsity at optimizer step ``step``: ``initial`` before ``start_step``, ``final`` from ``end_step`` on,
    and in between ``final + (initial - final) * (1 - (step - start) / (end - start)) ** 3``: fast early, while
    the network can still recover, slow at the end."""
    if end_step < start_step:
        raise ValueError(f"the sparsity schedule must end at or after its start, got {start_step} -> {end_step}")
    if step < start_step:
        return initial
    if step >= end_step:
        return final
    progress = (step - start_step) / (end_step - start_step)
    return final + (initial - final) * (1.0 - progress) ** 3
