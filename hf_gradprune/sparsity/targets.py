"""Which weights weight sparsity zeroes: the linear layers of the transformer blocks (the family's adapter names
them), plus any module the caller names; embeddings, the LM head and the classifier stay dense unless named."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..architectures import get_adapter
from ..state import unwrap_model


@dataclass(frozen=True)
class WeightTarget:
    """One matrix: its module's full name in the model, its block (None for an extra module), the module and the
    axis of ``module.weight`` that runs over input features."""

    name: str
    layer: int | None
    module: nn.Module
    in_axis: int = 1

    @property
    def param_name(self) -> str:
        return f"{self.name}.weight"

    @property
    def matrix(self) -> torch.Tensor:
        """The weight as an ``[out, in]`` view of the parameter: in-place changes reach it."""
        w = self.module.weight
        return w if self.in_axis == 1 else w.t()


def weight_targets(model: nn.Module, extra_modules=()) -> list[WeightTarget]:
    """The block matrices of ``model`` in order (empty ones, left by a cut, skipped), then ``extra_modules`` (full
    module names such as ``"lm_head"`` or ``"classifier"``; each must have a 2-D ``weight``)."""
    model = unwrap_model(model)
    adapter = get_adapter(model)
    names = {m: n for n, m in model.named_modules()}
    targets = []
    for i, layer in enumerate(adapter.layers(model)):
        for module in adapter.weight_modules(layer).values():
            if module.weight.numel():
                targets.append(WeightTarget(names[module], i, module, adapter.weight_in_axis(module)))
    if isinstance(extra_modules, str):
        extra_modules = (extra_modules,)
    taken = {t.name for t in targets}
    for name in extra_modules:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"extra sparsity target {name!r}: the model has no module of that name") from None
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"extra sparsity target {name!r} has no 2-D weight: name a linear layer")
        if name not in taken:
            _warn_if_tied(model, name, weight)
            targets.append(WeightTarget(name, None, module, adapter.weight_in_axis(module)))
            taken.add(name)
    return targets


def _warn_if_tied(model: nn.Module, name: str, weight: torch.Tensor) -> None:
    """Say so when an extra target shares its weight (an LM head tied to the token embeddings): zeroing one zeroes
    the other too."""
    others = sorted(
        n.removesuffix(".weight")
        for n, p in model.named_parameters(remove_duplicate=False)
        if p is weight and n != f"{name}.weight"
    )
    if others:
        warnings.warn(
            f"{name}'s weight is tied to {', '.join(others)}: sparsifying it zeroes the same weights there too "
            "(untie the weights first, e.g. config.tie_word_embeddings=False, to keep them apart)",
            UserWarning,
            stacklevel=3,
        )
