"""What a model's config says about its pruning so far: original geometry and the live units' ids."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from transformers import PreTrainedModel

from .architectures import FamilyAdapter, Geometry, get_adapter
from .modeling_gradprune import CONFIG_KEY


@dataclass
class PruningState:
    adapter: FamilyAdapter
    geometry: Geometry  # the unpruned model's
    head_ids: list[list[int]]  # original ids of the live heads, per layer, ascending
    neuron_ids: list[list[int]]
    layers: list[nn.Module] = field(default_factory=list)  # the live blocks, under any wrapper


def unwrap_model(model, *, allow_distributed: bool = True) -> PreTrainedModel:
    """The transformers model under ``torch.compile`` (``_orig_mod``) and DDP/FSDP-style (``.module``) wrappers.

    ``allow_distributed=False`` refuses the ``.module`` wrappers: they hold their own references to the
    parameters (DDP's gradient buckets, FSDP's flat parameters) that a cut would leave stale. Raises
    ``TypeError`` for anything that is not a transformers model.
    """
    inner = model
    while not isinstance(inner, PreTrainedModel):
        compiled, wrapped = getattr(inner, "_orig_mod", None), getattr(inner, "module", None)
        if isinstance(compiled, nn.Module):  # torch.compile runs the very module it wraps
            inner = compiled
        elif isinstance(wrapped, nn.Module) and allow_distributed:
            inner = wrapped
        elif isinstance(wrapped, nn.Module):
            raise TypeError(
                f"cannot cut through {type(inner).__name__}: it keeps its own references to the parameters a cut "
                "replaces. Prune the model inside it (`.module`), then wrap that again."
            )
        else:
            raise TypeError(f"expected a transformers model (PreTrainedModel), got {type(model).__name__}")
    return inner


def pruning_state(model: nn.Module) -> PruningState:
    """Read the recorded plan (if any) and check it against the live modules (through any wrapper)."""
    model = unwrap_model(model)
    adapter = get_adapter(model)
    record = getattr(model.config, CONFIG_KEY, None) or {}
    if record.get("geometry"):
        geometry = Geometry(**record["geometry"])
        head_ids = [list(h) for h in record["plan"]["heads"]]
        neuron_ids = [list(n) for n in record["plan"]["neurons"]]
    else:
        geometry = adapter.geometry(model.config)
        head_ids = [list(range(geometry.num_heads)) for _ in range(geometry.num_layers)]
        neuron_ids = [list(range(geometry.intermediate_size)) for _ in range(geometry.num_layers)]
    layers = adapter.layers(model)
    if len(layers) != geometry.num_layers:
        raise ValueError(f"the model has {len(layers)} layers but its config describes {geometry.num_layers}")
    for i, layer in enumerate(layers):
        if adapter.num_heads(layer) != len(head_ids[i]) or adapter.ffn_width(layer) != len(neuron_ids[i]):
            raise ValueError(
                f"layer {i} has {adapter.num_heads(layer)} heads and {adapter.ffn_width(layer)} FFN neurons, but "
                f"the recorded plan says {len(head_ids[i])} and {len(neuron_ids[i])}: the model was changed "
                "outside hf_gradprune"
            )
        kv = len({h // geometry.group_size for h in head_ids[i]})
        if adapter.num_kv_heads(layer) != kv:
            raise ValueError(
                f"layer {i} has {adapter.num_kv_heads(layer)} key/value heads, but the recorded plan's query heads "
                f"read {kv}: the model was changed outside hf_gradprune"
            )
    return PruningState(adapter, geometry, head_ids, neuron_ids, layers)
