"""What a model's config says about its pruning so far: original geometry and the live units' ids."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .architectures import FamilyAdapter, Geometry, get_adapter
from .modeling_gradprune import CONFIG_KEY


@dataclass
class PruningState:
    adapter: FamilyAdapter
    geometry: Geometry  # the unpruned model's
    head_ids: list[list[int]]  # original ids of the live heads, per layer, ascending
    neuron_ids: list[list[int]]


def pruning_state(model: nn.Module) -> PruningState:
    """Read the recorded plan (if any) and check it against the live modules."""
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
    return PruningState(adapter, geometry, head_ids, neuron_ids)
