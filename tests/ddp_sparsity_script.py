"""Run by test_trainer_sparsity.py: under `accelerate launch --cpu --num_processes 2` or as one plain process."""

import os
import sys

import conftest  # noqa: F401  (thread and denormal settings)
import torch
from trainer_helpers import make_trainer

from hf_gradprune.sparsity import weight_targets

out, per_device = sys.argv[1], int(sys.argv[2])
trainer = make_trainer(
    out,
    max_steps=8,
    per_device_train_batch_size=per_device,
    head_sparsity=None,
    ffn_sparsity=None,
    weight_sparsity=0.6,
    weight_method="wanda",
    scoring_steps=2,
    sparsity_update_steps=2,
    sparsity_end_step=0.75,  # step 6 of 8, resolved on every process alike
    learning_rate=1e-3,
)
trainer.train()
sparsity = trainer._sparsity
targets = weight_targets(trainer.model)
torch.save(
    {
        "world": trainer.args.world_size,
        "updates": sparsity.updates_done,
        "masks": {n: m.cpu() for n, m in sparsity.masks.masks.items()},
        "weights": {t.param_name: t.module.weight.detach().cpu() for t in targets},
    },
    os.path.join(out, f"rank{trainer.args.process_index}.pt"),
)
torch.distributed.barrier() if torch.distributed.is_initialized() else None
