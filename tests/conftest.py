"""Tiny models built in code; no hub access anywhere in the suite."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))
# Tiny GPT-2s under AdamW drift into denormal floats, which make CPU kernels ~20x slower; flushing them
# to zero changes no result these tests check.
torch.set_flush_denormal(True)

VOCAB = 97


@pytest.fixture(autouse=True, scope="session")
def cuda_like_attention():
    """Every test runs with attention that fails where CUDA's does: SDPA (and each family's eager attention)
    given zero heads raises, as CUDA's fused kernels return None there (the CPU's return an empty tensor).
    Without it a layer left with no heads passes on the CPU and crashes on a GPU."""
    from hf_gradprune.testing import emulate_cuda_attention

    restore = emulate_cuda_attention()
    yield
    restore()


# The same for a subprocess that cannot import hf_gradprune (torch only): paste it after `import torch`.
CUDA_LIKE_SDPA = """
_real_sdpa = torch.nn.functional.scaled_dot_product_attention
def _cuda_like_sdpa(query, key, *args, **kwargs):
    if query.shape[1] == 0 or key.shape[1] == 0:
        raise RuntimeError("scaled_dot_product_attention got zero heads (CUDA's fused kernels return None)")
    return _real_sdpa(query, key, *args, **kwargs)
torch.nn.functional.scaled_dot_product_attention = _cuda_like_sdpa
"""


def tiny_bert_config(**kw) -> BertConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    base.update(kw)
    return BertConfig(**base)


def tiny_gpt2_config(**kw) -> GPT2Config:
    base = dict(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=3,
        n_head=4,
        n_inner=96,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    base.update(kw)
    return GPT2Config(**base)


def make_bert(seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(**kw)).eval()
    _perturb(model)
    return model


def make_gpt2(seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(tiny_gpt2_config(**kw)).eval()
    _perturb(model)
    return model


@torch.no_grad()
def _perturb(model):
    # Fresh inits have zero biases and tiny weights; random biases make every unit matter differently,
    # so a wrong slice cannot hide behind a zero.
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.normal_(0, 0.1)


def batch(kind: str, seed: int = 1, size: int = 4, length: int = 12, pad: bool = True):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (size, length), generator=gen)
    mask = torch.ones_like(ids)
    if pad:
        for i in range(size):
            n = length - int(torch.randint(0, length // 2, (1,), generator=gen))
            mask[i, n:] = 0
            ids[i, n:] = 0
    if kind == "bert":
        labels = torch.randint(0, 3, (size,), generator=gen)
    else:
        labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.fixture(params=["bert", "gpt2"])
def family(request):
    return request.param


def make(kind: str, seed: int = 0, **kw):
    return make_bert(seed, **kw) if kind == "bert" else make_gpt2(seed, **kw)


def uneven_plan(model, zero_layer: int = 0):
    """Uneven plan: layer ``zero_layer`` loses every head, others keep different subsets; FFN uneven too."""
    from hf_gradprune import PruningPlan
    from hf_gradprune.state import pruning_state

    g = pruning_state(model).geometry
    heads = [[0, 2, 3], [1], [0, 1, 2, 3]][: g.num_layers]
    heads[zero_layer] = []
    neurons = [list(range(0, g.intermediate_size, 2)), list(range(5, 40)), list(range(g.intermediate_size - 7))]
    return PruningPlan(g, heads, neurons[: g.num_layers])


from hf_gradprune.testing import WORDS, save_tiny_tokenizer, sentiment_rows  # noqa: E402,F401
