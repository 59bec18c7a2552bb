"""Peer baseline for the quality benchmark (issue 5): Torch-Pruning with its Taylor importance.

Version: ``torch-pruning==1.6.1`` from PyPI (its module still says ``__version__ = "1.6.0"``), installed with
``--no-deps`` next to the project's torch. It is optional: nothing in ``hf_gradprune`` imports it.

Settings, the same for every target (everything not listed is Torch-Pruning's default)::

    tp.pruner.MetaPruner(
        model, example_inputs,                      # one example of the first batch, traced in eval mode
        importance=tp.importance.TaylorImportance(),  # sum |w * dL/dw| per channel, group mean, mean-normalized
        global_pruning=True,                        # heads ranked across layers, FFN channels across layers
        pruning_ratio=r_ffn,                        # FFN channels (intermediate.dense out / output.dense in)
        num_heads={query: H, key: H, value: H},     # per BertSelfAttention
        prune_num_heads=True, head_pruning_ratio=r_heads,
        prune_head_dims=False,                      # whole heads only; head_dim stays (v5 views with -1, head_dim)
        ignored_layers=[embeddings, pooler, classifier],  # the hidden size (residual stream) is never pruned
        output_transform=lambda out: out.logits.sum(),
        iterative_steps=1,
    )

Taylor gradients: ``loss.backward()`` on every given batch (summed), model in eval mode, as the library's
Taylor examples do. After ``pruner.step()`` each ``BertSelfAttention`` gets ``num_attention_heads`` and
``all_head_size`` from the new ``query.out_features`` (transformers v5 reads them only in ``__init__``).

The FLOPs target is met by a small search on the unpruned model (no weights change while searching):
bisection on a common ratio ``r_heads = r_ffn = r`` (the split of Torch-Pruning's own BERT example), then, with
the head ratio fixed, bisection on ``r_ffn`` alone to land close to the target (heads are coarse units).
FLOPs are counted with hf_gradprune's cost model (``PruningPlan.flops_removed``), so the numbers compare with
ours. If head pruning fails (an error, partial heads, a forward that breaks, or logits that differ from
hf_gradprune's surgery with the same kept units), it falls back to FFN only and ``info["why"]`` says why.

Afterwards the kept units are recorded in ``model.config`` exactly as ``hf_gradprune.prune_model`` records them
(``config.gradprune``, the ``GradPrune<Class>`` class), so the benchmark's recovery (``GradPruneTrainer`` with
distillation), ``current_plan`` and ``save_pruned`` / ``load_pruned`` take the peer's model like ours. Like
``prune_model``, this edits ``model.config`` in place: give each run its own (deep) copy of the model.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from importlib import metadata

import torch
from torch import nn

from hf_gradprune import PruningPlan, current_plan, prune_model

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")
_MAX_RATIO = 0.99
_SEARCH_STEPS = 8  # per stage; each trial traces the model once and scores every group (no pruning)
_TOLERANCE = 0.002  # stop searching once the removed FLOPs fraction is this close to the target


class PeerPruningError(RuntimeError):
    """Torch-Pruning could not prune the model as asked."""


def torch_pruning_version() -> str:
    import torch_pruning as tp

    dist = metadata.version("torch-pruning")
    mod = getattr(tp, "__version__", "?")
    return dist if mod == dist else f"{dist} (module __version__ says {mod})"


def prune_with_torch_pruning(
    model, batches, flops_budget: float, seq_len: int, *, record_plan: bool = True
) -> tuple[nn.Module, dict]:
    """Prune a transformers v5 BertForSequenceClassification in place with Torch-Pruning's Taylor importance
    so that about ``flops_budget`` of the transformer blocks' FLOPs are removed. ``batches`` is a list of dicts
    (input_ids, attention_mask, labels) used to accumulate Taylor gradients (loss.backward on each, as
    Torch-Pruning's Taylor importance requires). Returns the pruned model (runnable: forward works) and an
    info dict: {"pruned": "heads+ffn" or "ffn only", "why": "...", "heads_kept": [...per layer], "ffn_kept": [...],
    "block_flops_removed": float measured, "torch_pruning_version": ...}.

    Extra keys: ``target``, ``pruning_ratio`` / ``head_pruning_ratio`` (the chosen Torch-Pruning ratios),
    ``search`` (every trial: ratios and FLOPs removed), ``plan`` (the kept units in original indices, a
    ``PruningPlan`` dict; ``prune_model(dense_copy, PruningPlan.from_dict(plan))`` builds the same network),
    ``max_logit_diff_vs_surgery`` (Torch-Pruning's logits vs that network's, one batch: 0.0 in practice),
    ``params_before`` / ``params_after`` and ``torch_pruning_macs`` (Torch-Pruning's own counter, one example).

    ``record_plan`` (default True) records the kept units in the config as ``prune_model`` does, so hf_gradprune's
    trainer and save/load accept the model; with False the model is left as Torch-Pruning made it (plus the
    ``num_attention_heads`` / ``all_head_size`` fix), which hf_gradprune then refuses as changed outside it.
    """
    import torch_pruning  # noqa: F401  (fail early and clearly when the peer is not installed)

    if not 0.0 <= flops_budget < 1.0:
        raise ValueError(f"flops_budget must be a fraction in [0, 1), got {flops_budget!r}")
    if not batches:
        raise ValueError("give at least one batch to accumulate Taylor gradients on")
    start = current_plan(model)
    geometry = start.geometry
    full = PruningPlan.full(geometry)
    if (start.heads, start.neurons) != (full.heads, full.neurons):
        raise ValueError("prune_with_torch_pruning expects a dense (unpruned) model")

    was_training = model.training
    device = next(model.parameters()).device
    batches = [{k: v.to(device) for k, v in b.items() if k in (*MODEL_KEYS, "labels")} for b in batches]
    example = {k: v[:1] for k, v in batches[0].items() if k in MODEL_KEYS}
    params_before = sum(p.numel() for p in model.parameters())
    _accumulate_taylor_grads(model, batches)

    info = {"torch_pruning_version": torch_pruning_version(), "target": float(flops_budget), "seq_len": seq_len}
    try:  # the heads path is tried on a copy first, so a failure leaves the model untouched for the fallback
        kept, ratios, trials = _search(model, example, geometry, flops_budget, seq_len, heads=True)
        reference = _surgery_reference(model, geometry, kept)
        probe = _copy_with_grads(model)
        _prune(probe, example, geometry, ratios, heads=True, expect=kept)
        _compare(probe, reference, batches[0])
        del probe
        heads, reason = True, None
    except Exception as err:  # noqa: BLE001 - any failure of the heads path means: fall back, and say why
        heads, reason = False, f"{type(err).__name__}: {err}"
        kept, ratios, trials = _search(model, example, geometry, flops_budget, seq_len, heads=False)
        reference = _surgery_reference(model, geometry, kept)
    _prune(model, example, geometry, ratios, heads=heads, expect=kept)
    diff = _compare(model, reference, batches[0])
    if record_plan:
        _adopt_record(model, reference)
    del reference

    version = info["torch_pruning_version"]
    if heads:
        info["pruned"] = "heads+ffn"
        info["why"] = (
            f"Torch-Pruning {version} pruned whole attention heads and FFN neurons of transformers v5 BERT: the "
            "dependency graph couples query/key/value out-features with attention.output.dense in-features "
            "(and intermediate.dense out with output.dense in); with num_heads, prune_num_heads=True and "
            "prune_head_dims=False it removes whole heads, ranked globally by Taylor importance averaged per head. "
            "The hidden size is kept because the embeddings are in ignored_layers (that makes the residual-stream "
            "group unprunable); the pooler and classifier are ignored too. Only fix needed: transformers v5 sets "
            "BertSelfAttention.num_attention_heads/all_head_size in __init__, so they are reset from "
            "query.out_features afterwards (forward itself views with -1 heads). Checked (on a copy first): every "
            "layer keeps whole heads, forward runs, and the logits equal hf_gradprune's surgery with the same kept "
            f"units (max |diff| {diff:.2e}). Torch-Pruning has no FLOPs-aware trade-off between heads and FFN "
            "neurons, so the split is ours: a common ratio for heads and FFN channels (as its BERT example), then "
            f"the FFN ratio alone tuned to the FLOPs target (chosen head_pruning_ratio={ratios[0]:.4f}, "
            f"pruning_ratio={ratios[1]:.4f})."
        )
    else:
        info["pruned"] = "ffn only"
        info["why"] = (
            f"Head pruning with Torch-Pruning {version} failed on this transformers v5 BERT, so every "
            "BertAttention module is in ignored_layers and only FFN neurons (intermediate.dense out / "
            f"output.dense in) are pruned, globally by Taylor importance (pruning_ratio={ratios[1]:.4f}). "
            f"The heads path failed with: {reason}"
        )

    plan = PruningPlan(geometry, kept[0], kept[1], {"method": "torch_pruning_taylor", "seq_len": seq_len})
    removed = plan.flops_removed(seq_len)
    layers = list(model.base_model.encoder.layer)
    heads_kept = [layer.attention.self.query.out_features // geometry.head_dim for layer in layers]
    ffn_kept = [layer.intermediate.dense.out_features for layer in layers]
    if heads_kept != [len(h) for h in kept[0]] or ffn_kept != [len(n) for n in kept[1]]:
        raise PeerPruningError(f"pruned widths {heads_kept}, {ffn_kept} do not match the chosen units")
    if _non_monotone(trials):
        info["why"] += (
            " Note: Torch-Pruning never empties a layer: when every head (or every FFN neuron) of a layer falls "
            "under the global threshold, DependencyGraph.check_pruning_group rejects that group and the layer is "
            "kept whole, so the FLOPs removed are not monotone in the ratio at high ratios; the search keeps the "
            "closest trial."
        )
    if abs(removed - flops_budget) > 0.03:
        info["why"] += (
            f" The FLOPs target {flops_budget:.3f} was not reached within 3 points "
            f"(measured {removed:.3f}): the closest the ratios allow."
        )
    if record_plan:
        info["why"] += (
            " The kept units are recorded in the config as hf_gradprune's surgery would (GradPrune class, "
            "config.gradprune), so GradPruneTrainer recovery, current_plan and save_pruned accept the model."
        )

    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.eval()
        model(**example)  # runnable after pruning
    model.train(was_training)
    info.update(
        heads_kept=heads_kept,
        ffn_kept=ffn_kept,
        block_flops_removed=float(removed),
        head_pruning_ratio=float(ratios[0]),
        pruning_ratio=float(ratios[1]),
        search=trials,
        plan=plan.to_dict(),
        max_logit_diff_vs_surgery=diff,
        params_before=params_before,
        params_after=sum(p.numel() for p in model.parameters()),
        torch_pruning_macs=_tp_macs(model, example),
    )
    return model, info


# ---------------------------------------------------------------------- gradients
def _accumulate_taylor_grads(model, batches) -> None:
    """Summed gradients of the loss over ``batches`` on every parameter (eval mode: no dropout)."""
    flags = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        for p in flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            for b in batches:
                out = model(**b)
                if out.loss is None:
                    raise ValueError("Taylor importance needs a loss: give batches with labels")
                out.loss.backward()
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def _copy_with_grads(model):
    clone = copy.deepcopy(model)  # deepcopy drops .grad
    for p, q in zip(model.parameters(), clone.parameters()):
        q.grad = None if p.grad is None else p.grad.clone()
    return clone


# ---------------------------------------------------------------------- Torch-Pruning
def _make_pruner(model, example, geometry, ratios, heads: bool):
    import torch_pruning as tp

    bert = model.base_model
    layers = list(bert.encoder.layer)
    ignored = [bert.embeddings, model.classifier]
    if getattr(bert, "pooler", None) is not None:
        ignored.append(bert.pooler)
    num_heads = {}
    if heads:
        for layer in layers:
            attn = layer.attention.self
            for proj in (attn.query, attn.key, attn.value):
                num_heads[proj] = geometry.num_heads
    else:
        ignored += [layer.attention for layer in layers]
    with torch.enable_grad():  # the dependency graph is traced through autograd
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.TaylorImportance(),
            global_pruning=True,
            pruning_ratio=float(ratios[1]),
            num_heads=num_heads,
            prune_num_heads=heads,
            prune_head_dims=False,
            head_pruning_ratio=float(ratios[0]) if heads else 0.0,
            ignored_layers=ignored,
            output_transform=lambda out: out.logits.sum(),
            iterative_steps=1,
            # Fresh dicts: the library's defaults are shared mutable dicts that it writes into (they would
            # carry head counts from one pruner to the next).
            in_channel_groups={},
            out_channel_groups={},
        )
    return pruner


def _removed_units(model, geometry, pruner, groups) -> tuple[list[list[int]], list[list[int]]]:
    """Kept head / neuron ids per layer (original indices: the model is unpruned when groups are made)."""
    layers = list(model.base_model.encoder.layer)
    where = {}
    for i, layer in enumerate(layers):
        where[layer.attention.self.query] = ("h", i)
        where[layer.intermediate.dense] = ("n", i)
    gone = {("h", i): set() for i in range(len(layers))} | {("n", i): set() for i in range(len(layers))}
    for group in groups:
        for dep, idxs in group:
            key = where.get(dep.target.module)
            if key is not None and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                gone[key] |= {int(i) for i in idxs}
    d = geometry.head_dim
    heads, neurons = [], []
    for i in range(len(layers)):
        cols = gone[("h", i)]
        dropped = {c // d for c in cols}
        if cols != {h * d + j for h in dropped for j in range(d)}:
            raise PeerPruningError(f"layer {i}: Torch-Pruning removed parts of heads (columns {sorted(cols)})")
        heads.append([h for h in range(geometry.num_heads) if h not in dropped])
        neurons.append([n for n in range(geometry.intermediate_size) if n not in gone[("n", i)]])
    return heads, neurons


def _plan_only(model, example, geometry, ratios, heads: bool):
    """What Torch-Pruning would remove with these ratios, without touching the weights."""
    pruner = _make_pruner(model, example, geometry, ratios, heads)
    groups = list(pruner.step(interactive=True))  # groups hold indices; nothing is pruned until .prune()
    return _removed_units(model, geometry, pruner, groups)


def _prune(model, example, geometry, ratios, heads: bool, expect) -> None:
    pruner = _make_pruner(model, example, geometry, ratios, heads)
    groups = list(pruner.step(interactive=True))
    kept = _removed_units(model, geometry, pruner, groups)
    if kept != tuple(expect):
        raise PeerPruningError("Torch-Pruning chose different units than in the search (non-deterministic?)")
    for group in groups:
        group.prune()
    for layer in model.base_model.encoder.layer:
        attn = layer.attention.self
        width = attn.query.out_features
        if width % attn.attention_head_size or {attn.key.out_features, attn.value.out_features} != {width}:
            raise PeerPruningError(f"q/k/v widths {width}, {attn.key.out_features}, {attn.value.out_features}")
        if layer.attention.output.dense.in_features != width:
            raise PeerPruningError("attention.output.dense in_features do not match the kept heads")
        attn.num_attention_heads = width // attn.attention_head_size
        attn.all_head_size = width
        if layer.output.dense.in_features != layer.intermediate.dense.out_features:
            raise PeerPruningError("output.dense in_features do not match intermediate.dense out_features")


def _surgery_reference(dense, geometry, kept):
    """hf_gradprune's surgery keeping the units Torch-Pruning chose, on a copy of the (still dense) model."""
    return prune_model(copy.deepcopy(dense), PruningPlan(geometry, kept[0], kept[1]))


@torch.no_grad()
def _compare(pruned, reference, batch) -> float:
    """Max |logit difference| between Torch-Pruning's network and the reference; they must be the same function."""
    inputs = {k: v for k, v in batch.items() if k in MODEL_KEYS}
    modes = pruned.training
    pruned.eval()
    reference.eval()
    a, b = pruned(**inputs).logits, reference(**inputs).logits
    pruned.train(modes)
    diff = float((a - b).abs().max())
    if not math.isfinite(diff) or diff > 1e-4 * max(1.0, float(b.abs().max())):
        raise PeerPruningError(f"pruned logits differ from the same units cut by hf_gradprune (max |diff| {diff})")
    return diff


def _adopt_record(model, reference) -> None:
    """Give the Torch-Pruning model the config record and class that ``prune_model`` gave the reference."""
    config, ref = model.config, reference.config
    for key in set(ref.to_dict()) | set(config.to_dict()):
        if getattr(config, key, None) != getattr(ref, key, None):
            setattr(config, key, copy.deepcopy(getattr(ref, key)))
    model.__class__ = type(reference)
    if config.to_dict() != ref.to_dict():
        raise PeerPruningError("could not record the plan in the model's config")
    current_plan(model)  # raises if the record does not describe the live modules


# ---------------------------------------------------------------------- FLOPs search
def _removed_fraction(geometry, kept, seq_len) -> float:
    return PruningPlan(geometry, kept[0], kept[1]).flops_removed(seq_len)


def _search(model, example, geometry, target, seq_len, heads: bool):
    """Ratios whose removed block-FLOPs fraction is closest to ``target``; trials are recorded."""
    trials, best = [], None

    def trial(r_heads, r_ffn):
        nonlocal best
        for t in trials:
            if (t["head_pruning_ratio"], t["pruning_ratio"]) == (r_heads, r_ffn):
                return t["block_flops_removed"]
        kept = _plan_only(model, example, geometry, (r_heads, r_ffn), heads)
        removed = _removed_fraction(geometry, kept, seq_len)
        trials.append({"head_pruning_ratio": r_heads, "pruning_ratio": r_ffn, "block_flops_removed": removed})
        if best is None or abs(removed - target) < abs(best[2] - target):
            best = (kept, (r_heads, r_ffn), removed)
        return removed

    def bisect(fn, lo, hi):
        for _ in range(_SEARCH_STEPS):
            if abs(best[2] - target) <= _TOLERANCE:
                return
            mid = (lo + hi) / 2
            if fn(mid) < target:
                lo = mid
            else:
                hi = mid

    trial(0.0, 0.0)
    if heads:
        bisect(lambda r: trial(r, r), 0.0, _MAX_RATIO)
    # Heads are coarse units: keep the head ratio and move the FFN ratio alone, from the best point so far.
    r_heads, r_ffn = best[1]
    lo, hi = (r_ffn, _MAX_RATIO) if best[2] < target else (0.0, r_ffn)
    bisect(lambda r: trial(r_heads, r), lo, hi)
    return best[0], best[1], trials


def _non_monotone(trials) -> bool:
    """Whether removing more (a larger ratio) ever removed fewer FLOPs, within one search stage."""
    stages = {}
    for t in trials:
        common = t["head_pruning_ratio"] == t["pruning_ratio"]
        stages.setdefault("common" if common else t["head_pruning_ratio"], []).append(t)
    for stage in stages.values():
        done = sorted(stage, key=lambda t: (t["pruning_ratio"], t["head_pruning_ratio"]))
        if any(b["block_flops_removed"] < a["block_flops_removed"] - 1e-12 for a, b in zip(done, done[1:])):
            return True
    return False


def _tp_macs(model, example):
    """Torch-Pruning's own counter (nn.Linear etc., not the attention matmuls), for one example."""
    import torch_pruning as tp

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a batch-size warning for keyword inputs
            macs, params = tp.utils.count_ops_and_params(model, example)
    except Exception as err:  # noqa: BLE001 - a cross-check only
        return {"error": f"{type(err).__name__}: {err}"}
    return {"macs": int(macs), "params": int(params)}
