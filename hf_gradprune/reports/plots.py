"""Pictures of a pruning plan: which heads and how many FFN neurons each layer keeps (PNG, matplotlib)."""

from __future__ import annotations

import os


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
