"""Tiny offline assets for tests, quick benchmarks and docs: a word-level tokenizer and sentiment rows."""

from __future__ import annotations

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


class ZeroHeadsError(RuntimeError):
    """An attention kernel was given zero heads (raised only under ``emulate_cuda_attention``)."""


def emulate_cuda_attention():
    """Make attention on the CPU fail where CUDA's does; returns a function that undoes it.

    On CUDA in bf16/fp16, ``scaled_dot_product_attention`` with zero heads returns None (the fused kernels),
    where the CPU returns an empty tensor, and transformers then fails deep inside ``sdpa_attention_forward``.
    Under this emulation SDPA raises ``ZeroHeadsError`` when given zero heads, and so does each supported
    family's eager attention (``eager_attention_forward`` of its transformers module): no kernel may see zero
    heads, whatever the device. The test suite runs under it (tests/conftest.py), and so do its subprocesses
    that call it.
    """
    import importlib

    import torch

    from .architectures import supported_model_types

    def guard(fn, name):
        def guarded(*args, **kwargs):
            shapes = [a.shape for a in args if isinstance(a, torch.Tensor) and a.dim() == 4][:2]  # query, key
            if any(s[1] == 0 for s in shapes):
                raise ZeroHeadsError(
                    f"{name} was given zero heads ({[tuple(s) for s in shapes]}); CUDA's fused attention returns "
                    "None there: a layer without heads must take its family's empty-block forward"
                )
            return fn(*args, **kwargs)

        guarded._gradprune_real = fn
        return guarded

    patched = [(torch.nn.functional, "scaled_dot_product_attention")]
    for model_type in supported_model_types():
        name = model_type.replace("-", "_")
        module = importlib.import_module(f"transformers.models.{name}.modeling_{name}")
        if hasattr(module, "eager_attention_forward"):
            patched.append((module, "eager_attention_forward"))
    undo = []
    for owner, attr in patched:
        fn = getattr(owner, attr)
        if getattr(fn, "_gradprune_real", None) is None:  # not already emulated
            setattr(owner, attr, guard(fn, f"{owner.__name__}.{attr}"))
            undo.append((owner, attr, fn))

    def restore():
        for owner, attr, fn in undo:
            setattr(owner, attr, fn)

    return restore
