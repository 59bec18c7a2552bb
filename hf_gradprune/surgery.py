"""``prune_model``: physically remove the heads and FFN neurons a plan drops, in place."""

from __future__ import annotations

import torch
from torch import nn

from .modeling_gradprune import CONFIG_KEY, FORMAT_VERSION, auto_map_for, gradprune_class, structure_of
from .plan import PlanError, PruningPlan
from .state import pruning_state


def prune_model(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Cut ``model`` down to ``plan`` (indices of the original model) and record the plan in its config.

    Everything is validated before the first cut, so after an error the model is unchanged. Works on
    any device and dtype. The model's class becomes ``GradPrune<Class>`` (a thin subclass) so that
    ``save_pretrained`` writes a folder that reloads with ``trust_remote_code=True`` anywhere. Returns
    the same model object.
    """
    state = pruning_state(model)
    g = state.geometry
    if plan.geometry != g:
        raise PlanError(
            f"this plan is for a different model: plan {plan.geometry} vs model {g} "
            "(make the plan from scores of this model)"
        )
    positions = []
    for layer in range(g.num_layers):
        entry = []
        for kind, new, live in (
            ("head", plan.heads[layer], state.head_ids[layer]),
            ("neuron", plan.neurons[layer], state.neuron_ids[layer]),
        ):
            index = {unit: pos for pos, unit in enumerate(live)}
            gone = [u for u in new if u not in index]
            if gone:
                raise PlanError(
                    f"layer {layer}: the plan keeps {kind}(s) {gone[:5]} that this model has already pruned; "
                    "pruned units cannot come back (make the plan from this model's scores)"
                )
            entry.append(None if len(new) == len(live) else [index[u] for u in new])
        positions.append(entry)

    adapter = state.adapter
    device = next(model.parameters()).device
    for layer_module, (heads, neurons) in zip(adapter.layers(model), positions):
        if heads is not None:
            adapter.keep_heads(layer_module, torch.tensor(heads, dtype=torch.long, device=device), g.head_dim)
        if neurons is not None:
            adapter.keep_neurons(layer_module, torch.tensor(neurons, dtype=torch.long, device=device))

    config = model.config
    widths = {len(n) for n in plan.neurons}
    if len(widths) == 1:
        # Uniform FFN: say so in the config, so the FFN needs no structure entry and a uniform
        # FFN-only model loads with plain from_pretrained.
        setattr(config, adapter.ffn_config_attr, widths.pop())
    record = getattr(config, CONFIG_KEY, None) or {}
    history = list(record.get("history", []))
    history.append(plan.meta)
    setattr(
        config,
        CONFIG_KEY,
        {
            "format_version": FORMAT_VERSION,
            "geometry": g.to_dict(),
            "plan": {"heads": plan.heads, "neurons": plan.neurons},
            "history": history,
            "structure": {},
        },
    )
    model.__class__ = gradprune_class(type(model))
    config.auto_map = auto_map_for(config.model_type)
    getattr(config, CONFIG_KEY)["structure"] = structure_of(model)
    return model


def current_plan(model: nn.Module) -> PruningPlan:
    """The plan a model is at now (everything kept for an unpruned model)."""
    state = pruning_state(model)
    record = getattr(model.config, CONFIG_KEY, None) or {}
    meta = (record.get("history") or [{}])[-1]
    return PruningPlan(state.geometry, state.head_ids, state.neuron_ids, dict(meta))


def summarize(model: nn.Module, seq_len: int = 128) -> str:
    """The current plan's per-layer summary plus the whole model's parameter count."""
    total = sum(p.numel() for p in model.parameters())
    return f"{current_plan(model).summary(seq_len)}\nmodel parameters {total:,}"
