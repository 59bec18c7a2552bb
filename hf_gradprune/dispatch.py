"""Models dispatched by Accelerate (``device_map=...``, ``offload_folder=...``): which ones pruning can reach.

A cut slices weight tensors in place. Accelerate's offload (a ``device_map`` entry ``"disk"``, or ``"cpu"`` beside a
GPU) keeps a module's weights in an offload folder or a weights map and leaves ``meta`` tensors on the module, which
its hook (``module._hf_hook``, ``offload=True``) fills for each forward and empties after. A cut would slice the
empty tensors and leave the full-size stored ones behind: the next forward then fails on the shapes or, worse, runs
the unpruned weights. So such models are refused before any change. A dispatched model whose weights all live on
real devices (hooks that only move inputs and outputs) is pruned, scored and reconstructed like any other: the
hooks stay on the same modules, as the cut keeps every module and only replaces its parameters.

Accelerate is read by duck typing (``_hf_hook``, its ``offload`` flag, ``SequentialHook.hooks``), not imported.
"""

from __future__ import annotations

from torch import nn

SHOWN = 5  # module names an error lists


class OffloadedModelError(ValueError):
    """The model keeps weights off its modules (Accelerate's cpu/disk offload, or the meta device)."""


def _hooks(module: nn.Module) -> list:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])  # a SequentialHook chains several


def _on_meta(module: nn.Module) -> bool:
    tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return any(t.is_meta for t in tensors)


def offloaded_modules(model: nn.Module) -> list[str]:
    """Names of the modules whose weights Accelerate holds off the module: a hook with ``offload`` set, or a hooked
    module whose own parameters or buffers are on the ``meta`` device. Empty for a model that is not dispatched,
    or whose device map places every weight on a real device."""
    return [
        name
        for name, module in model.named_modules()
        if (hooks := _hooks(module)) and (any(getattr(h, "offload", False) for h in hooks) or _on_meta(module))
    ]


def _device_map_entries(model: nn.Module, names: list[str]) -> list[str]:
    """``"model.layers.1 (disk)"``: the ``hf_device_map`` entries the offloaded modules are under (in map order),
    else the module names themselves (a model offloaded by ``cpu_offload`` / ``disk_offload`` has no map)."""
    device_map = getattr(model, "hf_device_map", None) or {}
    under = set()
    for name in names:
        keys = [k for k in device_map if k == "" or name == k or name.startswith(k + ".")]
        if not keys:
            return names
        under.add(max(keys, key=len))
    return [f"{k or '(the whole model)'} ({device_map[k]})" for k in device_map if k in under]


def check_in_memory(model: nn.Module, caller: str, *, needs_weights: bool = False) -> None:
    """Refuse, before any change, a model pruning cannot cut in place: one with offloaded weights.

    ``needs_weights=True`` (scoring, the budget search, reconstruction read the weights) also refuses a model whose
    parameters are on the ``meta`` device without an offload hook (built under ``init_empty_weights`` or moved to
    ``meta``): it has no weights to read. ``prune_model`` cuts such a skeleton fine (it only needs the shapes).
    Raises ``OffloadedModelError`` naming the first modules and what to do.
    """
    names = offloaded_modules(model)
    if names:
        entries = _device_map_entries(model, names)
        shown = ", ".join(entries[:SHOWN]) + (f", ... ({len(entries)} in all)" if len(entries) > SHOWN else "")
        raise OffloadedModelError(
            f"{caller} cannot prune a model whose weights Accelerate offloaded (a device_map with 'disk' or 'cpu' "
            f"offload, an offload_folder): {shown} keep their weights in an offload folder or weights map, which a "
            "cut cannot reach (it slices the weights on the modules, in place). Nothing was changed. Load the model "
            "with every weight in memory (device_map='cpu', or a device_map / max_memory that offloads nothing), "
            "prune it, save_pretrained the pruned model, then load that folder with your device_map and "
            "offload_folder for inference (load_pruned(folder, device_map=..., offload_folder=...))."
        )
    if needs_weights:
        empty = [name for name, p in model.named_parameters() if p.is_meta]
        if empty:
            raise OffloadedModelError(
                f"{caller} needs the model's weights, but {len(empty)} parameters are on the meta device (e.g. "
                f"{', '.join(empty[:SHOWN])}): it was built without them (init_empty_weights, device='meta'). Load "
                "it with its weights (from_pretrained) and call again. Nothing was changed."
            )
