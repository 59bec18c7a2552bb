"""Llama-family decoders (Llama, SmolLM, Mistral, Qwen2, Qwen3): ``layers[i].self_attn.{q,k,v,o}_proj`` and
``layers[i].mlp.{gate,up,down}_proj`` (all ``nn.Linear``, weight ``(out, in)``), with grouped-query attention.

What transformers v5 does, and what surgery must therefore keep right:
- ``LlamaAttention`` reshapes with ``view(..., -1, head_dim)`` and keeps ``head_dim`` and
  ``num_key_value_groups`` (query heads per key/value head, for ``repeat_kv``) as attributes; it has no
  head-count attribute. Slicing q/k/v rows and ``o_proj`` columns works, and ``num_key_value_groups`` must
  follow: eager attention crashes on a stale one, while SDPA without a mask silently gets it right.
- Every key/value head must keep the same number of query heads (``repeat_kv``); ``Geometry.kept_units`` checks that.
- The rotary embedding reads ``config.head_dim``, which a config derives from the head count unless it is
  explicit: a uniform plan writes it.
- An attention left with no head gets an empty-block forward (``EmptyBlock``): it returns zeros (or
  ``o_proj``'s bias) and gives the KV cache a one-value placeholder per token. The stock forward would cache
  zero-sized keys, and ``DynamicCache`` reads the sequence length from layer 0's keys, so a layer 0 without
  heads would restart positions during generation.
- An FFN of width 0 runs as is (an empty matmul gives zeros).
- Costs: a query head owns its ``q_proj`` rows and ``o_proj`` columns; a key/value head its ``k_proj`` and
  ``v_proj`` rows, gone only with its group's last query head; a neuron a row of ``gate_proj`` and
  ``up_proj`` and a column of ``down_proj`` (3h parameters, 6h FLOPs per token).
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling_gradprune import EmptyBlock, make_block_empty
from ..units import HEAD, UnitCosts
from .base import (
    FamilyAdapter,
    Geometry,
    freeze_unused,
    geometry_from_config,
    grouped_sq_norm,
    head_columns,
    slice_param_,
)

# Optional parts of a block that change what a unit costs (Geometry.features).
QKV_BIAS, O_BIAS, MLP_BIAS, QK_NORM = "qkv_bias", "o_bias", "mlp_bias", "qk_norm"


def _features(config) -> tuple[str, ...]:
    """Which biases and norms this family's block has, as its modeling code builds them."""
    model_type = config.model_type
    attention_bias = bool(getattr(config, "attention_bias", False))
    features = set()
    if model_type == "qwen2":  # q/k/v always biased, o_proj never
        features.add(QKV_BIAS)
    elif model_type in ("llama", "qwen3") and attention_bias:  # all four projections
        features |= {QKV_BIAS, O_BIAS}
    if model_type == "llama" and getattr(config, "mlp_bias", False):
        features.add(MLP_BIAS)
    if model_type == "qwen3":  # per-head RMSNorm of q and k over head_dim, shared by the heads
        features.add(QK_NORM)
    return tuple(sorted(features))


class LlamaFamilyAdapter(FamilyAdapter):
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    ffn_config_attr = "intermediate_size"

    def geometry(self, config) -> Geometry:
        heads = config.num_attention_heads
        return geometry_from_config(
            config,
            config.intermediate_size,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
            features=_features(config),
        )

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.base_model.layers)

    def unit_costs(self, geometry: Geometry, seq_len: int) -> UnitCosts:
        h, d, f = geometry.hidden_size, geometry.head_dim, set(geometry.features)
        qkv_bias, mlp_bias = QKV_BIAS in f, MLP_BIAS in f
        return UnitCosts(
            # a query head: d rows of q_proj (and their bias), d columns of o_proj
            head_params=2 * h * d + (d if qkv_bias else 0),
            # a neuron: a row of gate_proj and up_proj (and their biases), a column of down_proj
            neuron_params=3 * h + (2 if mlp_bias else 0),
            # two RMSNorms; o_proj's and down_proj's biases; Qwen3's q/k norms
            fixed_params=2 * h + (h if O_BIAS in f else 0) + (h if mlp_bias else 0) + (2 * d if QK_NORM in f else 0),
            # its projections, plus QK^T and AV over seq_len keys (per query head: repeat_kv shares the keys)
            head_flops=2 * 2 * h * d + 2 * 2 * seq_len * d,
            neuron_flops=2 * 3 * h,
            kv_head_params=2 * h * d + (2 * d if qkv_bias else 0),
            kv_head_flops=2 * 2 * h * d,
        )

    def attention_output(self, layer):
        return layer.self_attn.o_proj

    def ffn_output(self, layer):
        return layer.mlp.down_proj

    def residual_output(self, layer, kind: str):
        # pre-norm: post_attention_layernorm reads residual + attention; the layer returns residual + MLP
        return (layer.post_attention_layernorm, "input") if kind == HEAD else (layer, "output")

    def num_heads(self, layer) -> int:
        attn = layer.self_attn
        return attn.q_proj.out_features // attn.head_dim

    def num_kv_heads(self, layer) -> int:
        attn = layer.self_attn
        return attn.k_proj.out_features // attn.head_dim

    def ffn_width(self, layer) -> int:
        return layer.mlp.gate_proj.out_features

    def head_sq_norms(self, layer, head_dim: int) -> torch.Tensor:
        attn, n = layer.self_attn, self.num_heads(layer)
        total = grouped_sq_norm(attn.q_proj.weight, 0, n) + grouped_sq_norm(attn.o_proj.weight, 1, n)
        if attn.q_proj.bias is not None:
            total = total + grouped_sq_norm(attn.q_proj.bias, 0, n)
        return total

    def kv_head_sq_norms(self, layer, head_dim: int) -> torch.Tensor:
        attn, n = layer.self_attn, self.num_kv_heads(layer)
        total = grouped_sq_norm(attn.k_proj.weight, 0, n) + grouped_sq_norm(attn.v_proj.weight, 0, n)
        for proj in (attn.k_proj, attn.v_proj):
            if proj.bias is not None:
                total = total + grouped_sq_norm(proj.bias, 0, n)
        return total

    def neuron_sq_norms(self, layer) -> torch.Tensor:
        mlp, n = layer.mlp, self.ffn_width(layer)
        total = grouped_sq_norm(mlp.down_proj.weight, 1, n)
        for proj in (mlp.gate_proj, mlp.up_proj):
            total = total + grouped_sq_norm(proj.weight, 0, n)
            if proj.bias is not None:
                total = total + grouped_sq_norm(proj.bias, 0, n)
        return total

    def keep_heads(self, layer, keep: torch.Tensor, head_dim: int) -> None:
        # ``keep``: positions of the query heads to keep. The plan kept the same number in every group it
        # keeps (Geometry.kept_units checks it), so the key/value heads to keep are the groups those positions are in.
        attn = layer.self_attn
        per_group = self.num_heads(layer) // self.num_kv_heads(layer)
        kv_keep = torch.unique(torch.div(keep, per_group, rounding_mode="floor"))
        cols, kv_cols = head_columns(keep, head_dim), head_columns(kv_keep, head_dim)
        for proj, index in ((attn.q_proj, cols), (attn.k_proj, kv_cols), (attn.v_proj, kv_cols)):
            slice_param_(proj, "weight", 0, index)
            slice_param_(proj, "bias", 0, index)
            proj.out_features = len(index)
        slice_param_(attn.o_proj, "weight", 1, cols)
        attn.o_proj.in_features = len(cols)
        if len(keep):
            attn.num_key_value_groups = len(keep) // len(kv_keep)
            return
        # LlamaAttention returns (output, attention weights); o_proj's bias (if any) is what is left of it.
        output = "o_proj.bias" if attn.o_proj.bias is not None else None
        make_block_empty(attn, EmptyBlock(output, None, extra_outputs=1, cache_head_dim=head_dim))
        freeze_unused(layer.input_layernorm)

    def keep_neurons(self, layer, keep: torch.Tensor) -> None:
        mlp = layer.mlp
        for proj in (mlp.gate_proj, mlp.up_proj):
            slice_param_(proj, "weight", 0, keep)
            slice_param_(proj, "bias", 0, keep)
            proj.out_features = len(keep)
        slice_param_(mlp.down_proj, "weight", 1, keep)
        mlp.down_proj.in_features = len(keep)
        mlp.intermediate_size = len(keep)

    def uniform_head_config(self, geometry: Geometry, heads: int, kv_heads: int) -> dict | None:
        if heads == 0:  # a config cannot say "no attention"; such a model keeps its recorded structure
            return None
        # head_dim explicit: left out, the config would derive hidden_size // num_attention_heads
        return {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": geometry.head_dim}
