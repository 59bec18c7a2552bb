"""Run by test_trainer.py: under `accelerate launch --cpu --num_processes 2` or as one plain process."""

import json
import os
import sys

import conftest  # noqa: F401  (thread and denormal settings)
import torch
from trainer_helpers import make_trainer

from hf_gradprune import current_plan

out, per_device = sys.argv[1], int(sys.argv[2])
trainer = make_trainer(
    out,
    max_steps=8,
    per_device_train_batch_size=per_device,
    pruning_schedule="iterative",
    prune_start_step=0,
    prune_end_step=0.5,  # half of the run's steps (4 of 8), resolved on every process alike
    num_rounds=2,
    learning_rate=1e-3,
)
trainer.train()
plan = current_plan(trainer.model)
optim_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
live = {id(p) for p in trainer.model.parameters() if p.requires_grad}
wrapped = trainer.model_wrapped
ddp_params = {id(p) for p in wrapped.parameters()} if wrapped is not trainer.model else live
rank = trainer.args.process_index
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(
        {
            "heads": plan.heads,
            "neurons": plan.neurons,
            "world": trainer.args.world_size,
            "optimizer_is_live": optim_params == live,
            "wrapper_is_live": ddp_params == live,
            "wrapper": type(wrapped).__name__,
            "checksum": float(sum(p.double().sum() for p in trainer.model.parameters())),
        },
        f,
    )
torch.distributed.barrier() if torch.distributed.is_initialized() else None
