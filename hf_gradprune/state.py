"""What a model's config says about its pruning so far: original geometry and the live units' ids."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from transformers import PreTrainedModel

from .architectures import FamilyAdapter, Geometry, get_adapter
from .modeling_gradprune import CONFIG_KEY, check_format


class RecordError(ValueError):
    """A model's config contradicts its recorded pruning (``config.gradprune``), or the record is malformed."""


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


def uniform_config(adapter: FamilyAdapter, geometry: Geometry, heads, neurons) -> dict:
    """The config attributes a cut to ``heads`` / ``neurons`` writes: what every layer shares and the config can
    say (the FFN width; head counts where the family's config states them)."""
    out = {}
    widths = {len(n) for n in neurons}
    if len(widths) == 1:
        out[adapter.ffn_config_attr] = widths.pop()
    counts = {(len(h), len({i // geometry.group_size for i in h})) for h in heads}
    if len(counts) == 1:
        out.update(adapter.uniform_head_config(geometry, *counts.pop()) or {})
    return out


def _recorded_plan(record: dict) -> tuple[Geometry, list[list[int]], list[list[int]]]:
    """The recorded geometry and kept units, checked as a plan is (``Geometry.kept_units``)."""
    try:
        geometry = Geometry(**record["geometry"])
        return (geometry, *geometry.kept_units(record["plan"]["heads"], record["plan"]["neurons"]))
    except (KeyError, TypeError, ValueError) as e:
        what = f"lacks {e}" if isinstance(e, KeyError) else f"is not valid: {e}"
        raise RecordError(f"the recorded pruning plan (config.{CONFIG_KEY}) {what}") from None


def _config_contradictions(config, adapter: FamilyAdapter, g: Geometry, heads, neurons) -> list[str]:
    """Where the config says other than the recorded plan: the shape a cut never writes (layers, hidden and head
    size; head counts where the family's config cannot state them), and what it wrote (``uniform_config``)."""
    try:
        said = adapter.geometry(config)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError) as e:
        return [f"it describes no {g.model_type} model ({type(e).__name__}: {e})"]
    fixed = ["model_type", "num_layers", "hidden_size", "head_dim"]
    if adapter.uniform_head_config(g, g.num_heads, g.num_key_value_heads) is None:
        fixed += ["num_heads", "num_key_value_heads"]
    found = {}
    for k in fixed:
        if getattr(said, k) != getattr(g, k):
            found[k] = f"{k}={getattr(said, k)!r} (recorded: {getattr(g, k)!r})"
    for k, v in uniform_config(adapter, g, heads, neurons).items():
        if getattr(config, k, None) != v:
            found.setdefault(k, f"{k}={getattr(config, k, None)!r} (the plan gives {v!r})")
    return list(found.values())


def pruning_state(model: nn.Module) -> PruningState:
    """Read the recorded plan (if any) and check it against the config and the live modules (through any
    wrapper). ``RecordError`` for a contradiction; ``FolderFormatError`` for a record of a newer format."""
    model = unwrap_model(model)
    adapter = get_adapter(model)
    record = getattr(model.config, CONFIG_KEY, None) or {}
    if record:
        check_format(record)
    if record.get("geometry"):
        geometry, head_ids, neuron_ids = _recorded_plan(record)
        wrong = _config_contradictions(model.config, adapter, geometry, head_ids, neuron_ids)
        if wrong:
            raise RecordError(
                f"the config contradicts its recorded pruning plan (config.{CONFIG_KEY}): it says {'; '.join(wrong)}. "
                "It was edited or mixed with another model's config: restore those values"
            )
    else:
        geometry = adapter.geometry(model.config)
        head_ids = [list(range(geometry.num_heads)) for _ in range(geometry.num_layers)]
        neuron_ids = [list(range(geometry.intermediate_size)) for _ in range(geometry.num_layers)]
    layers = adapter.layers(model)
    if len(layers) != geometry.num_layers:
        raise RecordError(f"the model has {len(layers)} layers but its config describes {geometry.num_layers}")
    for i, layer in enumerate(layers):
        if adapter.num_heads(layer) != len(head_ids[i]) or adapter.ffn_width(layer) != len(neuron_ids[i]):
            raise RecordError(
                f"layer {i} has {adapter.num_heads(layer)} heads and {adapter.ffn_width(layer)} FFN neurons, but "
                f"the recorded plan says {len(head_ids[i])} and {len(neuron_ids[i])}: the model was changed "
                "outside hf_gradprune"
            )
        kv = len({h // geometry.group_size for h in head_ids[i]})
        if adapter.num_kv_heads(layer) != kv:
            raise RecordError(
                f"layer {i} has {adapter.num_kv_heads(layer)} key/value heads, but the recorded plan's query heads "
                f"read {kv}: the model was changed outside hf_gradprune"
            )
    return PruningState(adapter, geometry, head_ids, neuron_ids, layers)
