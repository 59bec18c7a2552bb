"""Sparsity patterns (unstructured, N:M) and the one check of a sparsity and pattern pair."""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass

UNSTRUCTURED = "unstructured"
# how unstructured masks compare scores: across every target, within each matrix, or within each output row
SCOPES = ("global", "layer", "row")
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class SparsityPattern:
    """``unstructured`` (``n`` and ``m`` None) or N:M: at most ``n`` nonzero weights in every group of ``m``
    consecutive weights along each weight's input dimension."""

    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else UNSTRUCTURED

    @property
    def implied_sparsity(self) -> float | None:
        """The fraction an N:M pattern zeroes, ``(m - n) / m``; None when unstructured."""
        return (self.m - self.n) / self.m if self.is_nm else None

    def __str__(self) -> str:
        return self.name


def parse_pattern(pattern) -> SparsityPattern:
    """``"unstructured"``, ``"N:M"`` (``"2:4"``, ``"4:8"``) or a ``SparsityPattern``; ``ValueError`` otherwise."""
    if isinstance(pattern, SparsityPattern):
        return pattern
    if isinstance(pattern, str):
        if pattern.strip().lower() == UNSTRUCTURED:
            return SparsityPattern()
        found = _NM.match(pattern)
        if found:
            n, m = int(found.group(1)), int(found.group(2))
            if 1 <= n < m:
                return SparsityPattern(n, m)
    raise ValueError(
        f"sparsity_pattern must be 'unstructured' or 'N:M' with 1 <= N < M (e.g. '2:4', '4:8'), got {pattern!r}"
    )


def check_sparsity(sparsity, pattern) -> tuple[float, SparsityPattern]:
    """``(sparsity, pattern)`` checked: a fraction in [0, 1) of the targets' weights to zero. An N:M pattern fixes it
    at ``(M - N) / M``: None gives that, another value is refused."""
    pattern = parse_pattern(pattern)
    if sparsity is None and pattern.is_nm:
        return pattern.implied_sparsity, pattern
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= float(sparsity) < 1:
        raise ValueError(f"weight_sparsity must be a fraction in [0, 1) of the weights to zero, got {sparsity!r}")
    sparsity = float(sparsity)
    if pattern.is_nm and abs(sparsity - pattern.implied_sparsity) > 1e-9:
        raise ValueError(
            f"sparsity_pattern {pattern.name} zeroes {pattern.m - pattern.n} of every {pattern.m} weights, so "
            f"weight_sparsity must be {pattern.implied_sparsity:g} (or None), got {sparsity:g}"
        )
    return sparsity, pattern


def check_scope(scope) -> str:
    if scope not in SCOPES:
        raise ValueError(f"sparsity_scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    return scope
