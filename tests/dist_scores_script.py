"""Run by test_scoring.py under ``torch.distributed.run --nproc_per_node 2`` (gloo, CPU)."""

import sys

import torch
import torch.distributed as dist
from conftest import batch, make

from hf_gradprune import ImportanceScorer

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
model = make("bert")
data = batch("bert", size=8)
shard = {k: v[rank * 4 : (rank + 1) * 4] for k, v in data.items()}
scorer = ImportanceScorer(model, "fisher")
with scorer:
    model(**shard).loss.backward()
summed = scorer.scores.all_reduce()
if rank == 0:
    single = ImportanceScorer(model, "fisher")
    with single:
        for part in (0, 1):
            model(**{k: v[part * 4 : (part + 1) * 4] for k, v in data.items()}).loss.backward()
    ref = single.scores
    assert summed.num_examples == ref.num_examples == 8, (summed.num_examples, ref.num_examples)
    for a, b in zip(summed.heads + summed.neurons, ref.heads + ref.neurons):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)
    print("DIST-OK", file=sys.stderr)
dist.destroy_process_group()
