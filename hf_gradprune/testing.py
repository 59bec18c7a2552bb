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
