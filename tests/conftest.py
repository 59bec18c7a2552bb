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


WORDS = [
    "good",
    "great",
    "fine",
    "fun",
    "bad",
    "awful",
    "poor",
    "dull",
    "movie",
    "film",
    "plot",
    "cast",
    "the",
    "a",
    "was",
    "is",
    "very",
    "not",
    "and",
    "story",
    "acting",
    "it",
    "this",
    "really",
]


def save_tiny_tokenizer(folder, words=WORDS):
    """A word-level fast tokenizer written by the test (no hub): BERT-style specials and pair template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate([*specials, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        eos_token="[SEP]",
        bos_token="[CLS]",
    )
    fast.save_pretrained(folder)
    return fast


def sentiment_rows(n, seed=0):
    """Tiny sentiment data: label 1 iff the sentence's adjective is positive."""
    import random

    rng = random.Random(seed)
    pos, neg = ["good", "great", "fine", "fun"], ["bad", "awful", "poor", "dull"]
    rows = []
    for _ in range(n):
        label = rng.random() < 0.5
        adj = rng.choice(pos if label else neg)
        noun = rng.choice(["movie", "film", "plot", "cast", "story", "acting"])
        filler = " ".join(rng.choice(["the", "a", "very", "really", "and", "it"]) for _ in range(rng.randint(0, 4)))
        rows.append({"sentence": f"{filler} the {noun} was {adj}".strip(), "label": int(label)})
    return rows
