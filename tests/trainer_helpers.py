"""Synthetic data and a trainer factory shared by the trainer tests and the multi-process script."""

from __future__ import annotations

import torch
from conftest import VOCAB, make

from hf_gradprune import GradPruneConfig, GradPruneTrainer


class ParityData(torch.utils.data.Dataset):
    """BERT: label = whether the token at position 1 is in the lower half of the vocabulary: learnable, not trivial.
    GPT-2: counting sequences for causal LM."""

    def __init__(self, n: int = 256, length: int = 12, seed: int = 0, kind: str = "bert"):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, length), generator=gen)
        if kind == "gpt2":  # counting sequences (t, t+1, t+2, ...): a language a tiny GPT-2 learns fast
            self.ids = (self.ids[:, :1] + torch.arange(length)) % (VOCAB - 1) + 1
        self.mask = torch.ones_like(self.ids)
        for i in range(n):  # some padding, so masking is exercised
            cut = length - int(torch.randint(0, 4, (1,), generator=gen))
            self.mask[i, cut:] = 0
            self.ids[i, cut:] = 0
        self.kind = kind
        self.labels = (self.ids[:, 1] < VOCAB // 2).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        item = {"input_ids": self.ids[i], "attention_mask": self.mask[i]}
        if self.kind == "bert":
            item["labels"] = self.labels[i]
        else:
            item["labels"] = self.ids[i].masked_fill(self.mask[i] == 0, -100)
        return item


def make_trainer(
    output_dir, kind: str = "bert", model=None, data=None, callbacks=None, compute_loss_func=None, **overrides
):
    config = dict(
        output_dir=str(output_dir),
        max_steps=40,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        head_sparsity=0.5,
        ffn_sparsity=0.5,
        scoring_steps=4,
        logging_steps=5,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    config.update(overrides)
    args = GradPruneConfig(**config)
    return GradPruneTrainer(
        model=model if model is not None else make(kind),
        args=args,
        train_dataset=data if data is not None else ParityData(kind=kind),
        callbacks=callbacks,
        compute_loss_func=compute_loss_func,
    )
