"""Reports about a pruning run: the Hub model card (``huggingface_hub.ModelCard``)."""

from __future__ import annotations

import os

from huggingface_hub import ModelCard, ModelCardData

from .latency import latency_comparison
from .surgery import current_plan


def _schedule_text(args) -> str:
    targets = ", ".join(f"{k}={v}" for k, v in args.plan_targets().items())
    if args.pruning_schedule == "none":
        sched = "no pruning in this run (recovery of an already pruned model)"
        targets = "-"
    elif args.pruning_schedule == "one_shot":
        when = "before training" if args.prune_step == 0 else f"at step {args.prune_step}"
        sched = f"one-shot {when}"
    else:
        end = args.prune_end_step if args.prune_end_step is not None else "half of training"
        sched = f"iterative, {args.num_rounds} rounds from step {args.prune_start_step} to {end} (cubic ramp)"
    distill = (
        f"distillation from the unpruned model (alpha={args.effective_distill_alpha}, T={args.distill_temperature})"
        if args.effective_distill_alpha > 0
        else "no distillation"
    )
    return (
        f"`{args.importance}` importance over {args.scoring_steps} batches per round, {args.ranking} ranking; "
        f"target {targets}; {sched}; recovery with {distill}."
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
    metrics = {}
    for entry in trainer.state.log_history:
        metrics.update({k: v for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))})
    metric_text = (
        "\n".join(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in sorted(metrics.items()))
        or "No evaluation was run."
    )
    arch = type(model).__name__.removeprefix("GradPrune")
    auto = next((a for a, c in (model.config.auto_map or {}).items() if c.endswith("GradPrune" + arch)), "AutoModel")
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

A structurally pruned `{arch}` made with hf_gradprune:
attention heads and FFN neurons scored by gradient x activation and physically removed, then recovered by
fine-tuning.

- Base model: {base}
- Task: {task}
- Dataset: {dataset}
- Pruning: {_schedule_text(args)}

## Size

{table}

| layer | heads kept | FFN neurons kept |
|---|---|---|
{per_layer}

## Evaluation

{metric_text}

## How to load

Layers keep different numbers of heads and neurons, which stock transformers classes cannot build from a
config. The folder carries `modeling_gradprune.py` (torch + transformers only), so:

```python
from transformers import {auto}
model = {auto}.from_pretrained("path/or/repo", trust_remote_code=True)
```

Without remote code, with hf_gradprune installed:

```python
from hf_gradprune import load_pruned
model = load_pruned("path/or/repo")
```
"""
    return f"---\n{data.to_yaml()}\n---\n{body}"


def write_model_card(trainer, folder: str) -> str:
    path = os.path.join(folder, "README.md")
    os.makedirs(folder, exist_ok=True)
    ModelCard(model_card_text(trainer)).save(path)
    return path


# ---------------------------------------------------------------------- pruning report
def plot_plan(plan, folder: str) -> dict[str, str]:
    """Heat map of heads kept per layer and bar chart of FFN neurons kept per layer (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    g = plan.geometry
    grid = np.zeros((g.num_layers, g.num_heads))
    for layer, heads in enumerate(plan.heads):
        grid[layer, heads] = 1
    paths = {"heads": os.path.join(folder, "heads_kept.png"), "ffn": os.path.join(folder, "ffn_kept.png")}
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * g.num_heads + 2), max(3, 0.4 * g.num_layers + 1.5)))
    ax.imshow(grid, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(g.num_heads))
    ax.set_yticks(range(g.num_layers))
    ax.set_title(f"Attention heads kept: {plan.num_heads} of {g.num_layers * g.num_heads}")
    for layer in range(g.num_layers):
        ax.text(g.num_heads - 0.5, layer, f" {len(plan.heads[layer])}", va="center", ha="left", fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["heads"], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * g.num_layers + 2), 3))
    kept = [len(n) for n in plan.neurons]
    ax.bar(range(g.num_layers), [g.intermediate_size] * g.num_layers, color="#ddd", label="original")
    ax.bar(range(g.num_layers), kept, color="#2a7", label="kept")
    ax.set_xlabel("layer")
    ax.set_ylabel("FFN neurons")
    ax.set_xticks(range(g.num_layers))
    ax.set_title(f"FFN neurons kept: {plan.num_neurons} of {g.num_layers * g.intermediate_size}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["ffn"], dpi=110)
    plt.close(fig)
    return paths


def write_pruning_report(folder: str, dense_plan, plan, metrics: dict, latency: list[dict], extra=None) -> dict:
    """``pruning_report.json`` plus the two plots in ``folder``; returns the report."""
    import json

    os.makedirs(folder, exist_ok=True)
    seq = (plan.meta or {}).get("seq_len", 128)
    report = {
        "heads": {"dense": dense_plan.num_heads, "pruned": plan.num_heads, "per_layer": [len(h) for h in plan.heads]},
        "ffn_neurons": {
            "dense": dense_plan.num_neurons,
            "pruned": plan.num_neurons,
            "per_layer": [len(n) for n in plan.neurons],
        },
        "block_params": {"dense": dense_plan.block_params(), "pruned": plan.block_params()},
        "block_flops": {"seq_len": seq, "dense": dense_plan.block_flops(seq), "pruned": plan.block_flops(seq)},
        "metrics": metrics,
        "latency": latency,
        "plots": plot_plan(plan, folder),
        "plan": plan.to_dict(),
        **(extra or {}),
    }
    with open(os.path.join(folder, "pruning_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def summary_table(rows: list[tuple[str, str, str]], headers=("", "dense", "pruned")) -> str:
    """A small Markdown table (printed by the examples, pasted into READMEs)."""
    lines = [f"| {' | '.join(headers)} |", "|" + "---|" * len(headers)]
    lines += [f"| {' | '.join(map(str, r))} |" for r in rows]
    return "\n".join(lines)


def size_and_latency_rows(results: dict, dense_plan, plan, report: dict) -> list[tuple]:
    """The summary rows every example prints after its metrics: units, parameters, FLOPs, latency."""
    rows = [
        ("attention heads", dense_plan.num_heads, plan.num_heads),
        ("FFN neurons", dense_plan.num_neurons, plan.num_neurons),
        ("parameters", f"{results['params']['dense']:,}", f"{results['params']['pruned']:,}"),
    ]
    seq = report["block_flops"]["seq_len"]
    rows.append(
        (
            f"block GFLOPs / {seq}-token sequence",
            f"{report['block_flops']['dense'] / 1e9:.3f}",
            f"{report['block_flops']['pruned'] / 1e9:.3f}",
        )
    )
    for row in results.get("latency", []):
        rows.append(
            (
                f"latency, batch {row['batch_size']} x {row['seq_len']} "
                f"({row['device']}, {row['torch_threads']} threads)",
                f"{row['dense_ms']:.1f} ms",
                f"{row['pruned_ms']:.1f} ms ({row['speedup']:.2f}x)",
            )
        )
    return rows


STAGES = ("dense", "pruned_before_recovery", "pruned_after_recovery")


def write_run_report(
    trainer, dense_model, results: dict, batch_sizes: str, seq_len: int, repeats: int, flat_extra: dict | None = None
) -> dict:
    """The example scripts' ending on the main process: latency dense vs pruned, ``pruning_report.json`` with the
    plots, and ``all_results.json`` (the three stages' numeric metrics). Fills ``results``; returns the report."""
    from .surgery import current_plan

    plan = current_plan(trainer.model)
    sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    latency = latency_comparison(dense_model.to(trainer.model.device), trainer.model, sizes, seq_len, repeats)
    results["latency"] = latency
    results["params"] = {
        "dense": sum(p.numel() for p in dense_model.parameters()),
        "pruned": sum(p.numel() for p in trainer.model.parameters()),
    }
    folder = trainer.args.output_dir
    report = write_pruning_report(
        folder,
        trainer.dense_plan,
        plan,
        {k: v for k, v in results.items() if k != "latency"},
        latency,
        extra={"params": results["params"]},
    )
    results["report"] = os.path.join(folder, "pruning_report.json")
    flat = dict(flat_extra or {})
    for stage in STAGES:
        for k, v in (results.get(stage) or {}).items():
            if isinstance(v, (int, float)):
                flat[f"{stage}/{k}"] = v
    trainer.save_metrics("all", flat)
    return report
