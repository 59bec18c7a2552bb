"""BERT-family encoders: ``layer.attention.self.{query,key,value}``, ``layer.attention.output.dense``,
``layer.intermediate.dense`` and ``layer.output.dense`` (all ``nn.Linear``, weight ``(out, in)``).

transformers v5 reshapes with ``view(..., -1, head_dim)``, so updating ``num_attention_heads`` and
``all_head_size`` is enough. A layer left with no heads must not reach the attention kernel: CUDA's fused
``scaled_dot_product_attention`` returns None for zero heads (the CPU's returns an empty tensor). So its
``attention.self`` gets the empty-block forward with a context of no features (``EmptyBlock.zero_width``),
and the output dense, outside that block, turns it into its bias, broadcast. An FFN of width 0 runs as is:
an empty matmul gives the output dense's bias, on CUDA too (addmm with an empty inner dimension returns the
bias times beta).
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling_gradprune import EmptyBlock, make_block_empty
from ..units import HEAD, UnitCosts
from .base import (
    FamilyAdapter,
    Geometry,
    geometry_from_config,
    grouped_sq_norm,
    head_columns,
    mha_ffn_costs,
    slice_param_,
)


class BertFamilyAdapter(FamilyAdapter):
    model_types = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
    ffn_config_attr = "intermediate_size"
    onnx_optimizer_model_type = "bert"  # RoBERTa-style encoders have BERT's graph (optimum maps them so too)

    def geometry(self, config) -> Geometry:
        return geometry_from_config(config, config.intermediate_size)

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.base_model.encoder.layer)

    def unit_costs(self, geometry: Geometry, seq_len: int) -> UnitCosts:
        # biases everywhere; the attention and FFN LayerNorms (weight and bias each) stay
        return mha_ffn_costs(geometry, seq_len, bias=True, norm_params=2 * 2 * geometry.hidden_size)

    def attention_output(self, layer):
        return layer.attention.output.dense

    def ffn_output(self, layer):
        return layer.output.dense

    def residual_output(self, layer, kind: str):
        # post-norm: BertSelfOutput / BertOutput compute LayerNorm(dense(x) + residual)
        return (layer.attention.output.LayerNorm if kind == HEAD else layer.output.LayerNorm), "input"

    def head_read_tokens(self, model, batch: dict):
        # BertForSequenceClassification's pooler reads the first token ([CLS]) of the last layer's output only
        if not type(model).__name__.endswith("ForSequenceClassification"):
            return None
        ref = batch.get("input_ids", batch.get("attention_mask"))
        if ref is None:
            ref = batch["inputs_embeds"][..., 0]
        read = torch.zeros(ref.shape[:2], dtype=torch.bool, device=ref.device)
        read[:, 0] = True
        return read

    def num_heads(self, layer) -> int:
        return layer.attention.self.num_attention_heads

    def ffn_width(self, layer) -> int:
        return layer.intermediate.dense.out_features

    def head_sq_norms(self, layer, head_dim: int) -> torch.Tensor:
        attn, h = layer.attention.self, self.num_heads(layer)
        total = grouped_sq_norm(layer.attention.output.dense.weight, 1, h)
        for proj in (attn.query, attn.key, attn.value):
            total = total + grouped_sq_norm(proj.weight, 0, h) + grouped_sq_norm(proj.bias, 0, h)
        return total

    def neuron_sq_norms(self, layer) -> torch.Tensor:
        fc, out, n = layer.intermediate.dense, layer.output.dense, self.ffn_width(layer)
        return grouped_sq_norm(fc.weight, 0, n) + grouped_sq_norm(fc.bias, 0, n) + grouped_sq_norm(out.weight, 1, n)

    def keep_heads(self, layer, keep: torch.Tensor, head_dim: int) -> None:
        attn, cols = layer.attention.self, head_columns(keep, head_dim)
        for proj in (attn.query, attn.key, attn.value):
            slice_param_(proj, "weight", 0, cols)
            slice_param_(proj, "bias", 0, cols)
            proj.out_features = len(cols)
        dense = layer.attention.output.dense
        slice_param_(dense, "weight", 1, cols)
        dense.in_features = len(cols)
        attn.num_attention_heads = len(keep)
        attn.all_head_size = len(cols)
        if len(keep) == 0:
            # BertSelfAttention returns (context, attention weights) and, in a decoder, updates the KV cache
            make_block_empty(attn, EmptyBlock(None, extra_outputs=1, cache_head_dim=head_dim, zero_width=True))

    def keep_neurons(self, layer, keep: torch.Tensor) -> None:
        fc, out = layer.intermediate.dense, layer.output.dense
        slice_param_(fc, "weight", 0, keep)
        slice_param_(fc, "bias", 0, keep)
        fc.out_features = len(keep)
        slice_param_(out, "weight", 1, keep)
        out.in_features = len(keep)
