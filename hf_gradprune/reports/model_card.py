"""The Hub model card of a pruned model (``huggingface_hub.ModelCard``), written by ``GradPruneTrainer``."""

from __future__ import annotations

import os

from huggingface_hub import ModelCard, ModelCardData

from ..modeling_gradprune import auto_classes
from ..sparsity import parse_pattern
from ..surgery import current_plan
from .run_report import STAGES, stage_metrics


def _schedule_text(args, max_steps: int) -> str:
    targets = ", ".join(f"{k}={v}" for k, v in args.plan_targets().items())
    steps = [step for step, _ in args.round_schedule(max_steps)]  # the run's steps (fractions resolved)
    if not args.prunes_units:
        sched = (
            "no heads or neurons removed in this run"
            if args.sparsifies_weights
            else "no pruning in this run (recovery of an already pruned model)"
        )
        targets = "-"
    elif args.pruning_schedule == "one_shot":
        sched = "one-shot before training" if steps == [0] else f"one-shot at step {steps[0]}"
    else:
        sched = f"iterative, {len(steps)} rounds at steps {', '.join(map(str, steps))} (cubic ramp)"
    distill = (
        f"distillation from the unpruned model (alpha={args.effective_distill_alpha}, T={args.distill_temperature})"
        if args.effective_distill_alpha > 0
        else "no distillation"
    )
    return (
        f"`{args.importance}` importance over {args.scoring_steps} batches per round, {args.ranking} ranking; "
        f"target {targets}; {sched}; recovery with {distill}.{_weight_text(args, max_steps)}"
    )


def _weight_text(args, max_steps: int) -> str:
    """The gradual weight sparsity of the run, if any (the config's record says what the weights hold)."""
    updates = args.sparsity_schedule(max_steps)
    if not updates:
        return ""
    scope = "" if parse_pattern(args.sparsity_pattern).is_nm else f", {args.sparsity_scope} scope"
    return (
        f" Then weight sparsity {args.final_weight_sparsity:g} ({args.sparsity_pattern}{scope}) by "
        f"`{args.weight_method}` scores, {len(updates)} mask update(s) on a cubic ramp ending at step "
        f"{updates[-1][0]}; the pruned weights are exact zeros in the folder."
    )


def model_card_text(trainer) -> str:
    """Markdown (with YAML metadata) describing the pruned model the trainer holds."""
    args, model = trainer.args, trainer.model
    before, after = trainer.dense_plan, current_plan(model)
    seq = args.flops_seq_len
    params = sum(p.numel() for p in model.parameters())
    rows = [
        ("attention heads", f"{before.num_heads:,}", f"{after.num_heads:,}"),
        ("FFN neurons", f"{before.num_neurons:,}", f"{after.num_neurons:,}"),
        ("parameters (whole model)", f"{trainer.dense_params:,}", f"{params:,}"),
        (
            f"block GFLOPs per {seq}-token sequence",
            f"{before.block_flops(seq) / 1e9:.3f}",
            f"{after.block_flops(seq) / 1e9:.3f}",
        ),
    ]
    table = "| | before | after |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    per_layer = "\n".join(
        f"| {i} | {len(h)} / {after.geometry.num_heads} | {len(n)} / {after.geometry.intermediate_size} |"
        for i, (h, n) in enumerate(zip(after.heads, after.neurons))
    )
    metrics = {}  # the latest value of each metric, in stage order; "eval" is a plain trainer.evaluate()
    for stage in (*STAGES, "eval"):
        for entry in trainer.state.log_history:
            metrics.update(stage_metrics(entry, stage, timings=False))
    metric_text = (
        "\n".join(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items())
        or "No evaluation was run."
    )
    arch = type(model).__name__.removeprefix("GradPrune")
    auto = next((a for a, c in auto_classes(model.config.model_type).items() if c == arch), "AutoModel")
    # A stock model (never pruned, or a uniform plan its config describes) has no auto_map: no remote code.
    stock = not getattr(model.config, "auto_map", None)
    base = trainer.base_model_name or "a model passed in code"
    task = args.model_card_task or arch
    dataset = args.model_card_dataset or "not recorded"
    data = ModelCardData(
        library_name="transformers",
        tags=["hf_gradprune", "pruned", "structured-pruning", model.config.model_type],
        base_model=trainer.base_model_name if trainer.base_model_name and "/" in trainer.base_model_name else None,
        datasets=[args.model_card_dataset] if args.model_card_dataset else None,
    )
    body = f"""
# {args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))}

{_intro(args, arch)}

- Base model: {base}
- Task: {task}
- Dataset: {dataset}
- Pruning: {_schedule_text(args, trainer.state.max_steps)}

## Size

{table}

| layer | heads kept | FFN neurons kept |
|---|---|---|
{per_layer}

## Evaluation

{metric_text}

## How to load

{_how_to_load(auto, stock)}
"""
    return f"---\n{data.to_yaml()}\n---\n{body}"


def _intro(args, arch: str) -> str:
    """What was done: units removed, weights zeroed, or both (hybrid)."""
    units = "attention heads and FFN neurons scored by gradient x activation and physically removed"
    weights = "individual weights of the remaining matrices zeroed by their scores (the shapes stay)"
    if args.prunes_units and args.sparsifies_weights:
        return f"A pruned `{arch}` made with hf_gradprune:\n{units}, then {weights}; recovered by fine-tuning."
    if args.sparsifies_weights:
        return f"A weight-sparse `{arch}` made with hf_gradprune:\n{weights}; recovered by fine-tuning."
    return f"A structurally pruned `{arch}` made with hf_gradprune:\n{units}, then recovered by\nfine-tuning."


def _how_to_load(auto: str, stock: bool) -> str:
    if stock:
        return f"""Every layer keeps the same numbers of heads and neurons, and `config.json` says them: this is a stock
checkpoint. Any runtime that reads a stock config loads it; no remote code, no hf_gradprune:

```python
from transformers import {auto}
model = {auto}.from_pretrained("path/or/repo")
```"""
    return f"""Layers keep different numbers of heads and neurons, which stock transformers classes cannot build from a
config. The folder carries `modeling_gradprune.py` (torch + transformers only), so:

```python
from transformers import {auto}
model = {auto}.from_pretrained("path/or/repo", trust_remote_code=True)
```

Without remote code, with hf_gradprune installed:

```python
from hf_gradprune import load_pruned
model = load_pruned("path/or/repo")
```"""


def write_model_card(trainer, folder: str) -> str:
    """``README.md`` in ``folder``; returns its path."""
    path = os.path.join(folder, "README.md")
    os.makedirs(folder, exist_ok=True)
    ModelCard(model_card_text(trainer)).save(path)
    return path
