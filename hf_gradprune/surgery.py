"""``prune_model``: physically remove the heads and FFN neurons a plan drops, in place."""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .dispatch import check_in_memory
from .modeling_gradprune import (
    CONFIG_KEY,
    FORMAT_REQUIRES,
    FORMAT_VERSION,
    SPARSITY_KEY,
    auto_map_for,
    gradprune_class,
    stock_class,
    structure_of,
)
from .planning.plan import PlanError, PruningPlan, plain_json
from .sparsity.record import refresh_weight_sparsity_record
from .state import pruning_state, uniform_config, unwrap_model
from .units import HEAD, NEURON


def prune_model(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Cut ``model`` down to ``plan`` (indices of the original model) and record the plan in its config.

    Everything is validated before the first cut, so after an error the model is unchanged. Works on
    any device and dtype, and through ``torch.compile`` (the compiled module is cut; DDP/FSDP-style
    wrappers are refused: prune before wrapping). A model dispatched by Accelerate is cut when every weight is on
    a real device; one with offloaded weights (``"disk"`` / ``"cpu"`` offload) is refused (``OffloadedModelError``).

    Whatever the config can say is written into it: an FFN width shared by every layer, and (for families
    whose config can express it, the Llama family) a head and key/value-head count shared by every layer.
    When that describes the whole model, it stays a stock transformers model whose folder loads anywhere
    with plain ``from_pretrained`` (its class is the transformers one, under the same name, with an atomic
    ``save_pretrained``). Otherwise its class becomes ``GradPrune<Class>`` (a thin subclass) so that
    ``save_pretrained`` writes a folder that reloads with ``trust_remote_code=True`` anywhere. The plan is
    recorded in ``config.gradprune`` either way. Returns the same model object.

    The cut makes new parameters: create the optimizer after it (``optimizer = torch.optim.AdamW(
    model.parameters(), ...)``). A step of an optimizer that still holds replaced parameters raises.
    """
    target = unwrap_model(model, allow_distributed=False)
    if not isinstance(plan, PruningPlan):
        raise TypeError(f"prune_model needs a PruningPlan, got {type(plan).__name__} (see PruningPlan.from_scores)")
    check_in_memory(target, "prune_model")  # offloaded weights (Accelerate's device_map) are beyond a cut's reach
    state = pruning_state(target)
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
            (HEAD, plan.heads[layer], state.head_ids[layer]),
            (NEURON, plan.neurons[layer], state.neuron_ids[layer]),
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

    # The rest that can fail, also before the first cut: the pruned class, its auto_map, and the
    # structure diff (which refuses modules a fresh model lacks; cutting adds or removes none).
    pruned_class, plain_class = gradprune_class(type(target)), stock_class(type(target))
    auto_map = auto_map_for(target.config.model_type)
    structure_of(target)
    meta = plain_json(plan.meta, "plan.meta")  # the config saves as JSON: no NumPy numbers, nothing it cannot hold
    if not _HOOK:  # one global hook (torch's registry of optimizer step hooks), registered before the first cut
        _HOOK.append(register_optimizer_step_pre_hook(_refuse_replaced))

    adapter = state.adapter
    before = list(target.parameters())
    device = before[0].device
    for layer_module, (heads, neurons) in zip(state.layers, positions):
        if heads is not None:
            adapter.keep_heads(layer_module, torch.tensor(heads, dtype=torch.long, device=device), g.head_dim)
        if neurons is not None:
            adapter.keep_neurons(layer_module, torch.tensor(neurons, dtype=torch.long, device=device))

    _watch_replaced(before, target)

    config = target.config
    # What every layer shares goes into the config (an FFN width, Llama's head counts): no structure entry needed.
    for name, value in uniform_config(adapter, g, plan.heads, plan.neurons).items():
        setattr(config, name, value)
    record = getattr(config, CONFIG_KEY, None) or {}
    history = list(record.get("history", []))
    history.append(meta)  # a copy: the caller may reuse the plan
    setattr(
        config,
        CONFIG_KEY,
        {
            "format_version": FORMAT_VERSION,
            "requires": FORMAT_REQUIRES,
            "geometry": g.to_dict(),
            "plan": {"heads": plan.heads, "neurons": plan.neurons},
            "history": history,
            "structure": {},
        },
    )
    structure = structure_of(target)
    getattr(config, CONFIG_KEY)["structure"] = structure
    refresh_weight_sparsity_record(target, record.get(SPARSITY_KEY))  # weights zeroed before the cut stay zero
    if structure:
        target.__class__ = pruned_class
        config.auto_map = auto_map
    else:  # the config alone builds this model: a stock one (no remote code; plain from_pretrained)
        target.__class__ = plain_class  # the transformers class, saving atomically
        if getattr(config, "auto_map", None) == auto_map:  # ours, from an earlier prune; never another's
            del config.auto_map
    return model


# Parameters a cut replaced (id -> parameter), while anything (an optimizer made before the cut) still holds them.
_REPLACED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_HOOK = []


def _watch_replaced(before: list[nn.Parameter], model: nn.Module) -> None:
    """Remember the parameters the cut replaced (it makes new, smaller ones), and refuse any optimizer step that
    would still update them: it would leave the model's sliced weights untouched, silently."""
    now = {id(p) for p in model.parameters()}
    _REPLACED.update((id(p), p) for p in before if id(p) not in now)


def _refuse_replaced(optimizer, args, kwargs) -> None:
    if not _REPLACED:  # nothing holds a replaced parameter any more: nothing to look at
        return
    stale = sum(_REPLACED.get(id(p)) is p for group in optimizer.param_groups for p in group["params"])
    if stale:
        raise RuntimeError(
            f"{type(optimizer).__name__}.step(): this optimizer holds {stale} parameter(s) that prune_model replaced "
            "(a cut makes new, smaller parameters), so it would never update the pruned weights. Create the "
            "optimizer (and its LR scheduler) after prune_model: optimizer = torch.optim.AdamW(model.parameters(), "
            "...). GradPruneTrainer does this itself."
        )


def current_plan(model: nn.Module) -> PruningPlan:
    """The plan a model is at now (everything kept for an unpruned model); through any wrapper."""
    model = unwrap_model(model)
    state = pruning_state(model)
    record = getattr(model.config, CONFIG_KEY, None) or {}
    meta = (record.get("history") or [{}])[-1]
    return PruningPlan(state.geometry, state.head_ids, state.neuron_ids, dict(meta))


def summarize(model: nn.Module, seq_len: int = 128) -> str:
    """The current plan's per-layer summary plus the whole model's parameter count."""
    total = sum(p.numel() for p in model.parameters())
    return f"{current_plan(model).summary(seq_len)}\nmodel parameters {total:,}"
