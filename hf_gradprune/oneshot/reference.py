"""The dense reference of a reconstruction: the model's layers as they were before a prune, one at a time.

Reconstruction fits every pruned layer to what the same layer did before the cut, so it needs the dense
weights, but only one layer's at a time: each layer's targets are computed from the hidden states the
dense model gave the layer before. ``DenseLayers`` holds those weights where there is room and brings one
layer to the model's device when its targets are computed:

- ``"device"``: a copy of every layer on the model's device (fastest; one more model's worth of device memory);
- ``"cpu"``: a copy in host memory, each layer copied to the device when it is used;
- ``"disk"``: one safetensors file per layer in a temporary folder this object creates and removes;
- ``"model"``: a dense model the caller keeps (``reconstruct(model, dense_model, ...)``), used in place.

The embeddings and everything around the layers are never pruned, so the dense layers get the same
inputs and arguments as the pruned model's; no other part of the model is kept.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..state import pruning_state

WHERE = ("auto", "device", "cpu", "disk")
# Host memory a CPU copy may take, as a share of what is available: the rest is the run's own working space.
_HOST_SHARE = 0.7


class DenseReferenceError(ValueError):
    """A dense reference that cannot be made or used as asked (nothing was changed)."""


def _copy_module(module: nn.Module, make) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are ``make(tensor)`` (made once each, no other copy)."""
    memo: dict[int, object] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(make(p.detach()), requires_grad=False)
    for b in module.buffers():
        memo[id(b)] = make(b.detach())
    return copy.deepcopy(module, memo)


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (persistent or not) by name, as a state dict would name them."""
    out = dict(module.named_parameters())
    out.update(module.named_buffers())
    return {k: v.detach() for k, v in out.items()}


def layer_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``model``'s layers (what a copy of them takes)."""
    return sum(t.numel() * t.element_size() for layer in pruning_state(model).layers for t in _tensors(layer).values())


def _available_host_bytes() -> int | None:
    try:
        import psutil  # installed with accelerate
    except ImportError:  # pragma: no cover - accelerate requires it
        return None
    return int(psutil.virtual_memory().available)


def choose_where(model: nn.Module, where: str = "auto") -> tuple[str, str]:
    """Where the dense reference of ``model`` lives, and why (``where="auto"``: host memory when it holds the
    layers with room to spare, else disk). On an accelerator the layers are streamed from the host rather than
    copied on the device: the copy would double the device memory the call needs to save a host-to-device
    transfer of one model's weights (seconds for an 8B model, against minutes of scoring and reconstruction)."""
    if where not in WHERE:
        raise DenseReferenceError(f"reference must be one of {', '.join(map(repr, WHERE))}, not {where!r}")
    size = layer_bytes(model)
    gib = size / 2**30
    if where != "auto":
        return where, f"asked for (the layers take {gib:.2f} GiB)"
    free = _available_host_bytes()
    if free is None or size <= _HOST_SHARE * free:
        device = next(model.parameters()).device
        on = "the model is in host memory" if device.type == "cpu" else f"streamed to {device} one layer at a time"
        have = "" if free is None else f" of {free / 2**30:.1f} GiB available"
        return "cpu", f"a copy of the layers ({gib:.2f} GiB) fits in host memory{have}; {on}"
    return "disk", (
        f"a copy of the layers ({gib:.2f} GiB) would not fit in the {free / 2**30:.1f} GiB of host memory available: "
        "one safetensors file per layer, read when the layer is reconstructed"
    )


class DenseLayers:
    """The layers of a model before a prune, and its unit ids then; ``layer(i, device)`` lends layer ``i``."""

    def __init__(self, model: nn.Module, where: str, stored: list, folder: Path | None = None, why: str = ""):
        state = pruning_state(model)
        self.adapter, self.geometry = state.adapter, state.geometry
        self.head_ids = [list(h) for h in state.head_ids]
        self.neuron_ids = [list(n) for n in state.neuron_ids]
        self.attn_implementation = getattr(model.config, "_attn_implementation", None)
        self.where, self.why = where, why
        self._stored, self._folder = stored, folder  # per layer: a module, or (meta skeleton, file)

    @classmethod
    def of_model(cls, model: nn.Module) -> DenseLayers:
        """The layers of a dense model the caller keeps (nothing is copied)."""
        return cls(model, "model", list(pruning_state(model).layers))

    @classmethod
    def capture(cls, model: nn.Module, where: str = "auto", folder: str | Path | None = None) -> DenseLayers:
        """Copy ``model``'s layers as they are now to ``where`` (see ``choose_where``). ``folder``: where the
        ``"disk"`` files go (a temporary folder is made inside it, and removed by ``close``); the system's
        temporary folder by default. The model is not changed."""
        where, why = choose_where(model, where)
        layers = pruning_state(model).layers
        device = next(model.parameters()).device
        stored, tmp = [], None
        try:
            if where == "disk":
                if folder is not None and not Path(folder).is_dir():
                    raise DenseReferenceError(f"reference folder {str(folder)!r} is not a directory: create it first")
                tmp = Path(tempfile.mkdtemp(prefix="gradprune-dense-", dir=folder))
            for i, layer in enumerate(layers):
                if where == "device":
                    stored.append(_copy_module(layer, lambda t: t.clone()))
                elif where == "cpu":
                    stored.append(_copy_module(layer, lambda t: t.to("cpu", copy=True)))
                else:
                    path = tmp / f"layer-{i:04d}.safetensors"
                    # contiguous copies: safetensors refuses views and shared storage
                    save_file({k: v.contiguous().clone() for k, v in _tensors(layer).items()}, str(path))
                    stored.append((_copy_module(layer, lambda t: torch.empty_like(t, device="meta")), path))
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        out = cls(model, where, stored, tmp, why)
        out._device = device
        return out

    def __len__(self) -> int:
        return len(self._stored)

    @contextlib.contextmanager
    def layer(self, index: int, device: torch.device) -> Iterator[nn.Module]:
        """Layer ``index`` on ``device`` (eval mode) while the context is open; a streamed copy is dropped on exit."""
        stored = self._stored[index]
        if isinstance(stored, nn.Module) and (self.where in ("model", "device") or torch.device(device).type == "cpu"):
            yield stored.eval()
            return
        if isinstance(stored, nn.Module):  # host copy to the device
            live = _copy_module(stored, lambda t: t.to(device, non_blocking=True))
        else:
            skeleton, path = stored
            values = load_file(str(path), device=str(device))
            live = _copy_module(skeleton, lambda t: torch.empty_like(t, device=device))
            named = _tensors(live)
            if set(named) != set(values):
                raise DenseReferenceError(f"{path} does not hold layer {index}'s tensors (was it changed?)")
            with torch.no_grad():
                for name, t in named.items():
                    t.copy_(values[name])
            del values
        try:
            yield live.eval()
        finally:
            del live

    def close(self) -> None:
        """Drop the copies; remove the files this object wrote."""
        self._stored = []
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> DenseLayers:
        return self

    def __exit__(self, *exc) -> None:
        if self.where != "model":
            self.close()

    def to_dict(self) -> dict:
        return {"where": self.where, "why": self.why}
