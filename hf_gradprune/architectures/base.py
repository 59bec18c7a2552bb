"""What every model-family adapter provides: where heads and FFN neurons live, and how to cut them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Geometry:
    """The unpruned shape of a model's transformer blocks, which plans and scores are expressed against."""

    model_type: str
    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int

    def to_dict(self) -> dict:
        return asdict(self)


class FamilyAdapter:
    """Knows one family's module and attribute names; nothing else in the package does.

    Subclasses set ``model_types`` and ``ffn_config_attr`` and implement the accessors below. Cutting
    works in place on the existing modules (see ``slice_param_``), so hooks and references survive.
    """

    model_types: tuple[str, ...] = ()
    ffn_config_attr: str = "intermediate_size"

    # --- geometry -------------------------------------------------------------------------------
    def geometry(self, config) -> Geometry:
        raise NotImplementedError

    def layers(self, model: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    # --- hook points: their *inputs* are the head contexts / FFN activations -------------------
    def attention_output(self, layer: nn.Module) -> nn.Module:
        raise NotImplementedError

    def ffn_output(self, layer: nn.Module) -> nn.Module:
        raise NotImplementedError

    # --- live sizes ------------------------------------------------------------------------------
    def num_heads(self, layer: nn.Module) -> int:
        raise NotImplementedError

    def ffn_width(self, layer: nn.Module) -> int:
        raise NotImplementedError

    # --- magnitude baseline ----------------------------------------------------------------------
    def head_sq_norms(self, layer: nn.Module, head_dim: int) -> torch.Tensor:
        raise NotImplementedError

    def neuron_sq_norms(self, layer: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    # --- surgery (positions are indices into the layer's current units) ------------------------
    def keep_heads(self, layer: nn.Module, keep: torch.Tensor, head_dim: int) -> None:
        raise NotImplementedError

    def keep_neurons(self, layer: nn.Module, keep: torch.Tensor) -> None:
        raise NotImplementedError


def head_columns(keep: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Feature indices of the kept heads in a ``[heads * head_dim]`` axis."""
    offsets = torch.arange(head_dim, device=keep.device)
    return (keep[:, None] * head_dim + offsets).reshape(-1)


@torch.no_grad()
def slice_param_(module: nn.Module, name: str, dim: int, index: torch.Tensor) -> None:
    """Keep ``index`` along ``dim`` of ``module.<name>``, in place on the module.

    We slice parameters instead of calling ``transformers.pytorch_utils.prune_linear_layer`` because
    that returns a *new* module: hooks registered by a live ``ImportanceScorer`` and references held by
    wrappers would then point at a dead module. Dtype, device and ``requires_grad`` are kept.
    """
    old = getattr(module, name)
    if old is None:
        return
    new = old.detach().index_select(dim, index.to(old.device)).clone()
    setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))


def grouped_sq_norm(weight: torch.Tensor, dim: int, groups: int) -> torch.Tensor:
    """Sum of squares of ``weight`` split into ``groups`` equal, contiguous chunks along ``dim``."""
    w = weight.detach().float().movedim(dim, 0)
    if groups == 0:
        return w.new_zeros(0)
    return w.reshape(groups, -1).pow(2).sum(1)
