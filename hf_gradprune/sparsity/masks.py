"""Masks from weight scores (unstructured global / per layer / per row, or N:M), and ``WeightMasks``: keeping the
pruned weights at zero through training (weights, gradients, optimizer moments) and through a checkpoint."""

from __future__ import annotations

import torch
from torch import nn

from ..state import unwrap_model
from .patterns import check_scope, parse_pattern
from .targets import WeightTarget


def check_targets(targets: list[WeightTarget], pattern) -> None:
    """Refuse, before anything changes, a pattern a target's shape cannot hold (N:M needs an input width that is a
    multiple of M)."""
    pattern = parse_pattern(pattern)
    if not targets:
        raise ValueError("there are no weights to sparsify: the model's blocks hold no linear layer")
    if pattern.is_nm:
        bad = [f"{t.name} ({t.matrix.shape[1]} inputs)" for t in targets if t.matrix.shape[1] % pattern.m]
        if bad:
            raise ValueError(
                f"sparsity_pattern {pattern.name} groups {pattern.m} consecutive input weights, but "
                f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} cannot be split so: use 'unstructured', or "
                f"keep widths multiples of {pattern.m} (ffn_multiple_of)"
            )


def _prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep mask of a 1-D score vector with its ``k`` lowest pruned; ties go to the lower index (stable)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(scores, stable=True)[:k]] = False
    return keep


def _nm_mask(scores: torch.Tensor, m: int, per_group: int) -> torch.Tensor:
    out, width = scores.shape
    groups = scores.reshape(out, width // m, m)
    keep = torch.ones_like(groups, dtype=torch.bool)
    if per_group > 0:
        lowest = torch.argsort(groups, dim=-1, stable=True)[..., :per_group]
        keep.scatter_(-1, lowest, False)
    return keep.reshape(out, width)


def _check_scores(name: str, s: torch.Tensor) -> torch.Tensor:
    if s.dim() != 2:
        raise ValueError(f"weight scores of {name} must be an [out, in] matrix, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"weight scores of {name} hold NaN or inf: the calibration loss or its gradient overflowed")
    return s.float()


def masks_from_scores(scores: dict, sparsity: float, pattern="unstructured", scope: str = "layer") -> dict:
    """``{name: keep mask}`` (``[out, in]`` bools, like the scores) pruning the lowest scores.

    Unstructured: exactly ``round(sparsity * n)`` weights of ``n`` go, compared across every matrix
    (``"global"``), within each (``"layer"``) or within each output row (``"row"``, as Wanda does). N:M: in every
    group of M consecutive inputs the ``round(sparsity * M)`` lowest go, at most ``M - N`` (a gradual schedule
    passes through 1:4 to 2:4 zeroed); ``scope`` does not apply. Ties go to the earlier weight, so every rank and
    every rerun gets the same masks.
    """
    pattern, scope = parse_pattern(pattern), check_scope(scope)
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    scores = {name: _check_scores(name, s) for name, s in scores.items()}
    if pattern.is_nm:
        per_group = min(pattern.m - pattern.n, round(sparsity * pattern.m))
        for name, s in scores.items():
            if s.shape[1] % pattern.m:
                raise ValueError(f"{name}: {s.shape[1]} inputs are not a multiple of {pattern.m} ({pattern.name})")
        return {name: _nm_mask(s, pattern.m, per_group) for name, s in scores.items()}
    if scope == "layer":
        return {n: _prune_lowest(s.reshape(-1), round(sparsity * s.numel())).view_as(s) for n, s in scores.items()}
    if scope == "row":
        out = {}
        for name, s in scores.items():
            k = round(sparsity * s.shape[1])
            keep = torch.ones_like(s, dtype=torch.bool)
            if k:
                keep.scatter_(1, torch.argsort(s, dim=1, stable=True)[:, :k], False)
            out[name] = keep
        return out
    return _global_masks(scores, sparsity)


def _global_masks(scores: dict, sparsity: float) -> dict:
    """One threshold across every matrix; the weights tied at it go in target order, so the count is exact."""
    total = sum(s.numel() for s in scores.values())
    k = round(sparsity * total)
    if k == 0:
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
    flat = torch.cat([s.reshape(-1).cpu() for s in scores.values()])
    threshold = flat.kthvalue(k).values.item()
    below = int((flat < threshold).sum())
    ties_left = k - below
    masks = {}
    for name, s in scores.items():
        keep = s >= threshold
        at = (s == threshold).reshape(-1).nonzero().squeeze(1)
        take = at[: max(0, ties_left)]
        ties_left -= len(take)
        keep.view(-1)[take] = False
        masks[name] = keep
    return masks


class WeightMasks:
    """Keep masks by parameter name, in the parameter's own layout. ``apply_`` zeroes the pruned weights,
    ``zero_grads_`` their gradients, ``zero_optimizer_state_`` every optimizer state the size of a parameter
    (Adam's moments), so that nothing revives a pruned weight."""

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = {name: m.bool() for name, m in masks.items()}

    @classmethod
    def from_scores(
        cls, targets: list[WeightTarget], scores: dict, sparsity: float, pattern="unstructured", scope="layer"
    ) -> WeightMasks:
        """Masks for ``targets`` from ``[out, in]`` scores by target name."""
        missing = [t.name for t in targets if t.name not in scores]
        if missing:
            raise ValueError(f"no weight scores for {', '.join(missing[:3])}")
        keep = masks_from_scores({t.name: scores[t.name] for t in targets}, sparsity, pattern, scope)
        return cls({t.param_name: (keep[t.name] if t.in_axis == 1 else keep[t.name].t()).contiguous() for t in targets})

    @classmethod
    def from_zeros(cls, targets: list[WeightTarget]) -> WeightMasks:
        """The masks a sparsified model's exact zeros say (a weight trained to exactly 0 counts as pruned)."""
        return cls({t.param_name: t.module.weight.detach() != 0 for t in targets})

    def _params(self, model: nn.Module):
        model = unwrap_model(model)
        for name, mask in self.masks.items():
            try:
                param = model.get_parameter(name)
            except AttributeError:
                raise ValueError(f"the model has no parameter {name!r} that these masks cover") from None
            if param.shape != mask.shape:
                raise ValueError(f"{name} is {tuple(param.shape)}, its mask {tuple(mask.shape)}: the model changed")
            yield param, mask

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> None:
        for param, mask in self._params(model):
            # +0.0, not a product's -0.0 for a negative weight: a packed folder then needs no sign bits
            param.masked_fill_(~mask.to(param.device), 0)

    @torch.no_grad()
    def zero_grads_(self, model: nn.Module) -> None:
        for param, mask in self._params(model):
            if param.grad is not None:
                param.grad.mul_(mask.to(param.grad.device))

    @torch.no_grad()
    def zero_optimizer_state_(self, model: nn.Module, optimizer) -> None:
        state = getattr(optimizer, "state", {})
        for param, mask in self._params(model):
            for value in state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    value.mul_(mask.to(value.device))

    @property
    def sparsity(self) -> float:
        """The fraction of the covered weights the masks prune."""
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total if total else 0.0

    def per_matrix(self) -> dict[str, float]:
        return {name: 1.0 - m.float().mean().item() for name, m in self.masks.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: m.cpu() for name, m in self.masks.items()}

    def load_state_dict(self, state: dict) -> None:
        self.masks = {name: torch.as_tensor(m).bool() for name, m in state.items()}

    def equal(self, other: WeightMasks) -> bool:
        return self.masks.keys() == other.masks.keys() and all(
            torch.equal(m.cpu(), other.masks[n].cpu()) for n, m in self.masks.items()
        )


def matrix_sparsity(targets: list[WeightTarget]) -> dict:
    """What the weights themselves say: the fraction of exact zeros overall and per matrix."""
    per = {t.name: float((t.module.weight == 0).float().mean()) for t in targets}
    total = sum(t.module.weight.numel() for t in targets)
    zeros = sum(int((t.module.weight == 0).sum()) for t in targets)
    return {"sparsity": zeros / total if total else 0.0, "per_matrix": per}


def satisfies_nm(matrix: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive inputs of an ``[out, in]`` matrix has at most ``n`` nonzeros."""
    out, width = matrix.shape
    if width % m:
        return False
    return bool(((matrix.reshape(out, width // m, m) != 0).sum(-1) <= n).all())
