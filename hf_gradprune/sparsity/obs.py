"""SparseGPT's layer-wise solver (Frantar & Alistarh 2023): prune a matrix and update its remaining weights so
that its output on the calibration inputs changes as little as possible. Pure tensor math on ``W`` and its
Hessian ``H = sum over tokens of x x^T``; no model knowledge (``oneshot/weights.py`` collects ``H``).

Columns (input features) are processed left to right. Pruning weight ``(r, j)`` costs ``w_rj^2 / [H^-1]_jj``
(the OBS saliency, with ``H^-1`` of the columns not yet processed) and the columns after ``j`` of row ``r`` take the
exact least-squares correction ``- (w_rj / [H^-1]_jj) * H^-1[j, j:]``. The inverse Hessians of the shrinking
column sets are the rows of the upper Cholesky factor of ``H^-1`` (one factorisation for the whole matrix), and
corrections are applied to the columns of one block at a time, the rest once per block (lazy batch updates).
Masks are chosen per block of ``blocksize`` columns (adaptive: on the weights as the earlier blocks left them),
or per group of ``M`` columns for N:M.
"""

from __future__ import annotations

import math
import numbers

import torch

from .patterns import check_scope, check_sparsity


def _check(W, H, blocksize, percdamp, pattern, scope) -> None:
    if not isinstance(W, torch.Tensor) or W.dim() != 2 or not W.is_floating_point():
        raise ValueError("sparsegpt_prune_ needs W as a 2-D float [out, in] tensor")
    if W.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"sparsegpt_prune_ updates W in float32 or float64, got {W.dtype}: pass W.float()")
    cols = W.shape[1]
    if not isinstance(H, torch.Tensor) or tuple(H.shape) != (cols, cols):
        shape = tuple(H.shape) if isinstance(H, torch.Tensor) else type(H).__name__
        raise ValueError(f"H must be the [in, in] = [{cols}, {cols}] Hessian sum x x^T of W's inputs, got {shape}")
    if not torch.isfinite(H).all():
        raise ValueError("H holds NaN or inf: the calibration activations overflowed")
    if isinstance(blocksize, bool) or not isinstance(blocksize, numbers.Integral) or blocksize < 1:
        raise ValueError(f"blocksize must be an integer >= 1, got {blocksize!r}")
    if not (isinstance(percdamp, numbers.Real) and math.isfinite(percdamp) and percdamp >= 0):
        raise ValueError(f"percdamp must be a finite number >= 0, got {percdamp!r}")
    if pattern.is_nm and cols % pattern.m:
        raise ValueError(f"{cols} inputs are not a multiple of {pattern.m} ({pattern.name})")
    if scope == "global":
        raise ValueError("sparsegpt prunes one matrix at a time: scope must be 'layer' or 'row', not 'global'")


def _upper_inverse_factor(H: torch.Tensor, percdamp: float, dtype) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``(H + damp I)^-1`` (``U^T U``), factorised in float64."""
    H = H.detach().to(torch.float64).clone()
    dead = torch.diagonal(H) == 0  # an input that is always 0: any weight there is free to go
    H[dead, dead] = 1.0
    damp = percdamp * torch.diagonal(H).mean()
    H.diagonal().add_(damp)
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise ValueError(
            "the calibration Hessian is not positive definite (too few tokens for this width?): raise percdamp "
            "(e.g. 0.1) or give more calibration tokens"
        )
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).to(dtype)


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask of the ``k`` lowest entries of ``scores`` (ties to the earlier entry)."""
    out = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k > 0:
        out.view(-1)[torch.argsort(scores.reshape(-1), stable=True)[:k]] = True
    return out


def _block_prune(scores: torch.Tensor, sparsity: float, i1: int, i2: int, scope: str) -> torch.Tensor:
    """Unstructured: the block's share of the count, so the whole matrix (or each row) loses exactly
    ``round(sparsity * n)``: the count up to ``i2`` minus the count up to ``i1``."""
    rows = scores.shape[0]
    if scope == "row":
        k = round(sparsity * i2) - round(sparsity * i1)
        prune = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        if k > 0:
            prune.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :k], True)
        return prune
    return _lowest(scores, round(sparsity * rows * i2) - round(sparsity * rows * i1))


@torch.no_grad()
def sparsegpt_prune_(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float | None = None,
    pattern="unstructured",
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    scope: str = "layer",
) -> torch.Tensor:
    """Prune ``W`` (``[out, in]``, float32 or float64) in place and return its keep mask (``[out, in]`` bools).

    ``H``: ``[in, in]``, the sum of ``x x^T`` over the calibration tokens (any positive scale; it is not changed).
    ``percdamp``: ``percdamp`` times the mean of ``H``'s diagonal is added to it (SparseGPT's 1%).
    Unstructured: exactly ``round(sparsity * out * in)`` weights go (``scope="layer"``), or ``round(sparsity * in)``
    per row (``"row"``), chosen block by block. N:M (``sparsity`` None or ``(M - N) / M``): in every group of ``M``
    consecutive inputs the ``M - N`` of least saliency go. The pruned weights are exact zeros; the kept ones carry
    the correction.
    """
    sparsity, pattern = check_sparsity(sparsity, pattern)
    scope = check_scope(scope)
    _check(W, H, blocksize, percdamp, pattern, scope)
    rows, cols = W.shape
    if pattern.is_nm:
        blocksize = -(-blocksize // pattern.m) * pattern.m  # whole groups per block
        per_group = pattern.m - pattern.n
    hinv = _upper_inverse_factor(H.to(W.device), percdamp, W.dtype)
    keep = torch.ones(rows, cols, dtype=torch.bool, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diagonal(hinv1)
        err = torch.zeros_like(W1)
        if pattern.is_nm:
            prune = torch.zeros(W1.shape, dtype=torch.bool, device=W1.device)
        else:
            prune = _block_prune(W1.square() / d.square()[None, :], sparsity, i1, i2, scope)
        for i in range(i2 - i1):
            if pattern.is_nm and i % pattern.m == 0:
                group = W1[:, i : i + pattern.m].square() / d[i : i + pattern.m].square()[None, :]
                lowest = torch.argsort(group, dim=1, stable=True)[:, :per_group]
                prune[:, i : i + pattern.m].scatter_(1, lowest, True)
            w = W1[:, i]
            q = w.masked_fill(prune[:, i], 0.0)
            e = (w - q) / d[i]
            W1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            W1[:, i] = q  # exact zeros (the update leaves them at rounding error)
            err[:, i] = e
        W[:, i1:i2] = W1
        if i2 < cols:
            W[:, i2:] -= err @ hinv[i1:i2, i2:]
        keep[:, i1:i2] = ~prune
    return keep
