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
from ..units import HEAD, NEURON

WHERE = ("auto", "device", "cpu", "disk", "activations")
# Host memory a CPU copy may take, as a share of what is available: the rest is the run's own working space.
HOST_SHARE = 0.7


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


def available_host_bytes() -> int | None:
    try:
        import psutil  # installed with accelerate
    except ImportError:  # pragma: no cover - accelerate requires it
        return None
    return int(psutil.virtual_memory().available)


def fits_in_host(size: int) -> bool:
    """Whether ``size`` bytes fit in host memory with room to spare (``HOST_SHARE`` of what is available)."""
    free = available_host_bytes()
    return free is None or size <= HOST_SHARE * free


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
    free = available_host_bytes()
    if free is None or size <= HOST_SHARE * free:
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
        return cls(model, where, stored, tmp, why)

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


class DenseTargets:
    """What reconstruction reads from the dense model, recorded during a forward the call runs anyway (the
    scoring pass of ``prune_oneshot``): per layer and calibration batch, the residual stream right after the
    attention and after the FFN (``FamilyAdapter.residual_output``). With them no dense layer runs again and
    no copy of the weights is kept: reconstruction costs only the pruned model's passes. They take
    ``2 x layers x tokens x hidden`` values of the model's dtype, where the activations are: ``prune_oneshot``
    records them by default only on the CPU, when they fit in host memory (``reference="auto"``)."""

    where = "activations"

    def __init__(self, model: nn.Module, batches: int, why: str = ""):
        state = pruning_state(model)
        self.adapter, self.geometry = state.adapter, state.geometry
        self.head_ids = [list(h) for h in state.head_ids]
        self.neuron_ids = [list(n) for n in state.neuron_ids]
        self.why = why
        self._layers = state.layers
        self._n = batches
        self._store: list[dict] = [{} for _ in self._layers]  # per layer: (kind, batch) -> tensor
        self._chunks: dict | None = None  # while a batch records: (layer, kind) -> [chunk tensors]
        self._in_forward = False
        self.failed: str | None = None

    @staticmethod
    def size(model: nn.Module, batches: list[dict]) -> int:
        """Bytes the targets of ``batches`` take (two hidden vectors per layer and position)."""
        state = pruning_state(model)
        element = next(model.parameters()).element_size()
        positions = 0
        for b in batches:
            ids = b.get("input_ids", b.get("inputs_embeds"))
            positions += int(ids.shape[0] * ids.shape[1]) if isinstance(ids, torch.Tensor) else 0
        return 2 * len(state.layers) * positions * state.geometry.hidden_size * element

    def __len__(self) -> int:
        return len(self._layers)

    @contextlib.contextmanager
    def recording(self, model: nn.Module) -> Iterator[None]:
        """Hooks that record the targets of the batches entered with ``batch(b)``. Only a forward of the whole
        model counts: a checkpointed layer's recompute inside the backward does not record twice."""

        def enter(module, args, kwargs):
            self._in_forward = True

        def leave(module, args, kwargs, output):
            self._in_forward = False

        def grab(index, kind):
            def hook(value):
                if self._chunks is not None and self._in_forward:
                    value = value[0] if isinstance(value, (tuple, list)) else value
                    self._chunks.setdefault((index, kind), []).append(value.detach())

            return hook

        handles = [
            model.register_forward_pre_hook(enter, with_kwargs=True),
            model.register_forward_hook(leave, with_kwargs=True, always_call=True),
        ]
        for index, layer in enumerate(self._layers):
            for kind in (HEAD, NEURON):
                module, where = self.adapter.residual_output(layer, kind)
                g = grab(index, kind)
                if where == "input":
                    handles.append(module.register_forward_pre_hook(lambda m, a, g=g: g(a)))
                else:
                    handles.append(module.register_forward_hook(lambda m, a, o, g=g: g(o)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self._chunks, self._in_forward = None, False

    @contextlib.contextmanager
    def batch(self, b: int, rows: int) -> Iterator[None]:
        """Record batch ``b`` (of ``rows`` sequences) from the forwards inside the context (its micro-batches, in
        order); batches from the ``batches``-th on are not recorded."""
        if b >= self._n or self.failed:
            yield
            return
        self._chunks = {}
        try:
            yield
        finally:
            chunks, self._chunks = self._chunks, None
        for index in range(len(self._layers)):
            for kind in (HEAD, NEURON):
                parts = chunks.get((index, kind), [])
                got = torch.cat(parts) if len(parts) > 1 else (parts[0] if parts else None)
                if got is None or got.shape[0] != rows:
                    self.failed = f"batch {b}: the scoring pass did not run all its sequences through layer {index}"
                    self._store = [{} for _ in self._layers]
                    return
                self._store[index][(kind, b)] = got

    @property
    def complete(self) -> bool:
        return self.failed is None and all(len(s) == 2 * self._n for s in self._store)

    def targets(self, index: int) -> dict:
        """Layer ``index``'s targets: ``{HEAD: [per batch], NEURON: [per batch]}``."""
        return {kind: [self._store[index][(kind, b)] for b in range(self._n)] for kind in (HEAD, NEURON)}

    def close(self) -> None:
        self._store, self._layers = [], []

    def to_dict(self) -> dict:
        return {"where": self.where, "why": self.why}
