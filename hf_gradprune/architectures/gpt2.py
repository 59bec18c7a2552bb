"""GPT-2: ``h[i].attn.c_attn`` (fused q|k|v ``Conv1D``, weight ``(in, 3 * split_size)``),
``h[i].attn.c_proj``, ``h[i].mlp.c_fc`` and ``h[i].mlp.c_proj`` (``Conv1D`` weights are ``(in, out)``).

``GPT2Attention.forward`` splits ``c_attn``'s output by ``split_size`` and reshapes with
``view(..., -1, head_dim)``: surgery updates ``split_size`` and ``num_heads``. With zero heads the split
fails, and ``Conv1D`` cannot take an empty input, so such a block gets the shipped modeling file's
empty-block forward, with an ``EmptyBlock`` that says what GPT-2's block returns at width 0.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..modeling_gradprune import EmptyBlock, make_block_empty
from ..units import HEAD, UnitCosts
from .base import (
    FamilyAdapter,
    Geometry,
    freeze_unused,
    geometry_from_config,
    grouped_sq_norm,
    head_columns,
    mha_ffn_costs,
    slice_param_,
)


class GPT2Adapter(FamilyAdapter):
    model_types = ("gpt2",)
    ffn_config_attr = "n_inner"
    onnx_optimizer_model_type = "gpt2"

    def geometry(self, config) -> Geometry:
        # n_inner=None means GPT-2's default FFN width, four times the hidden size
        return geometry_from_config(config, config.n_inner if config.n_inner is not None else 4 * config.n_embd)

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.base_model.h)

    def unit_costs(self, geometry: Geometry, seq_len: int) -> UnitCosts:
        # biases everywhere; ln_1 and ln_2 (weight and bias each) stay
        return mha_ffn_costs(geometry, seq_len, bias=True, norm_params=2 * 2 * geometry.hidden_size)

    def attention_output(self, layer):
        return layer.attn.c_proj

    def ffn_output(self, layer):
        return layer.mlp.c_proj

    def residual_output(self, layer, kind: str):
        # pre-norm: ln_2 reads residual + attention; the block returns residual + MLP
        return (layer.ln_2, "input") if kind == HEAD else (layer, "output")

    def weight_modules(self, layer) -> dict[str, nn.Module]:
        # the four Conv1D projections; GPT-2's blocks hold no nn.Linear
        return {name: m for name, m in layer.named_modules() if isinstance(m, Conv1D)}

    def weight_in_axis(self, module) -> int:
        return 0 if isinstance(module, Conv1D) else 1  # Conv1D stores (in, out)

    def num_heads(self, layer) -> int:
        return layer.attn.num_heads

    def ffn_width(self, layer) -> int:
        return layer.mlp.c_fc.nf

    def _qkv_columns(self, attn, cols: torch.Tensor) -> torch.Tensor:
        return torch.cat([cols + i * attn.split_size for i in range(3)])

    def head_sq_norms(self, layer, head_dim: int) -> torch.Tensor:
        attn, h = layer.attn, self.num_heads(layer)
        # c_attn columns are [q | k | v], each [heads * head_dim]: group per (part, head), then sum parts.
        w = attn.c_attn.weight.detach().float().reshape(-1, 3, h, head_dim)
        b = attn.c_attn.bias.detach().float().reshape(3, h, head_dim)
        total = w.pow(2).sum((0, 1, 3)) + b.pow(2).sum((0, 2))
        return total + grouped_sq_norm(attn.c_proj.weight, 0, h)

    def neuron_sq_norms(self, layer) -> torch.Tensor:
        fc, proj, n = layer.mlp.c_fc, layer.mlp.c_proj, self.ffn_width(layer)
        return grouped_sq_norm(fc.weight, 1, n) + grouped_sq_norm(fc.bias, 0, n) + grouped_sq_norm(proj.weight, 0, n)

    def keep_heads(self, layer, keep: torch.Tensor, head_dim: int) -> None:
        attn, cols = layer.attn, head_columns(keep, head_dim)
        qkv = self._qkv_columns(attn, cols)
        slice_param_(attn.c_attn, "weight", 1, qkv)
        slice_param_(attn.c_attn, "bias", 0, qkv)
        attn.c_attn.nf = len(qkv)
        slice_param_(attn.c_proj, "weight", 0, cols)
        attn.c_proj.nx = len(cols)
        attn.split_size = len(cols)
        attn.num_heads = len(keep)
        if len(keep) == 0:
            # GPT2Attention returns (output, attention weights) and updates the KV cache
            make_block_empty(attn, _empty_output(attn, "resid_dropout", extra_outputs=1, cache_head_dim=head_dim))
            freeze_unused(layer.ln_1)

    def keep_neurons(self, layer, keep: torch.Tensor) -> None:
        fc, proj = layer.mlp.c_fc, layer.mlp.c_proj
        slice_param_(fc, "weight", 1, keep)
        slice_param_(fc, "bias", 0, keep)
        fc.nf = len(keep)
        slice_param_(proj, "weight", 0, keep)
        proj.nx = len(keep)
        if len(keep) == 0:
            make_block_empty(layer.mlp, _empty_output(layer.mlp, "dropout"))
            freeze_unused(layer.ln_2)


def _empty_output(block: nn.Module, dropout: str, **kw) -> EmptyBlock:
    # At width 0 the block's output is c_proj's bias (zeros if the Conv1D had none), then its dropout.
    return EmptyBlock("c_proj.bias" if block.c_proj.bias is not None else None, dropout, **kw)
