"""Prune a small randomly initialised BERT end to end and print the before/after summary.

Runs offline in well under a minute on a laptop CPU: score heads and FFN neurons with the Taylor
criterion on synthetic batches, plan, cut, measure CPU latency, save a Hub folder, reload it and check
the logits bit for bit. It shows the API; accuracy needs real data (see the GLUE example).

    python examples/prune_random_bert.py --head_sparsity 0.5 --ffn_sparsity 0.5
    python examples/prune_random_bert.py --config recipes/random_bert.yaml
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import BertConfig, BertForSequenceClassification

from hf_gradprune import ImportanceScorer, PruningPlan, load_pruned, prune_model
from hf_gradprune.cli.runs import parse_args
from hf_gradprune.deploy.latency import measure_latency


@dataclass
class ExampleArguments:
    output_dir: str = field(default="outputs/random_bert", metadata={"help": "Where the pruned folder goes."})
    method: str = field(default="taylor", metadata={"help": "taylor | fisher | magnitude | random"})
    head_sparsity: float = field(default=0.5, metadata={"help": "Fraction of heads removed."})
    ffn_sparsity: float = field(default=0.5, metadata={"help": "Fraction of FFN neurons removed."})
    scoring_batches: int = field(default=16, metadata={"help": "Batches of synthetic data to score on."})
    batch_size: int = field(default=8, metadata={"help": "Examples per batch."})
    seq_len: int = field(default=128, metadata={"help": "Tokens per example."})
    hidden_size: int = field(default=256, metadata={"help": "Model width."})
    num_layers: int = field(default=4, metadata={"help": "Transformer blocks."})
    num_heads: int = field(default=8, metadata={"help": "Heads per block."})
    intermediate_size: int = field(default=1024, metadata={"help": "FFN width."})
    seed: int = field(default=0, metadata={"help": "Seed for weights and data."})


def main(args: list[str] | None = None) -> dict:
    (ex,) = parse_args(ExampleArguments, args)
    torch.manual_seed(ex.seed)
    config = BertConfig(
        hidden_size=ex.hidden_size,
        num_hidden_layers=ex.num_layers,
        num_attention_heads=ex.num_heads,
        intermediate_size=ex.intermediate_size,
        vocab_size=1000,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)

    def synthetic_batch():
        ids = torch.randint(5, 1000, (ex.batch_size, ex.seq_len))
        mask = torch.ones_like(ids)
        labels = (ids[:, 1] % 2).long()  # a learnable-in-principle rule, so gradients are not pure noise
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    scorer = ImportanceScorer(model, ex.method, seed=ex.seed)
    with scorer:
        for _ in tqdm(range(ex.scoring_batches), desc=f"scoring ({ex.method})"):
            model.zero_grad()
            model(**synthetic_batch()).loss.backward()
    model.zero_grad()
    plan = PruningPlan.from_scores(scorer.scores, head_sparsity=ex.head_sparsity, ffn_sparsity=ex.ffn_sparsity)

    model.eval()
    probe = {k: v for k, v in synthetic_batch().items() if k != "labels"}
    dense_params = sum(p.numel() for p in model.parameters())
    dense_ms = measure_latency(model, ex.batch_size, ex.seq_len, inputs=probe)
    prune_model(model, plan)
    pruned_params = sum(p.numel() for p in model.parameters())
    pruned_ms = measure_latency(model, ex.batch_size, ex.seq_len, inputs=probe)

    model.save_pretrained(ex.output_dir)
    reloaded = load_pruned(ex.output_dir).eval()
    with torch.inference_mode():
        diff = (reloaded(**probe).logits - model(**probe).logits).abs().max().item()

    print(plan.summary(ex.seq_len))
    print(f"model parameters {dense_params:,} -> {pruned_params:,}")
    print(
        f"CPU latency, batch {ex.batch_size} x {ex.seq_len}, {torch.get_num_threads()} threads: "
        f"{dense_ms:.1f} ms -> {pruned_ms:.1f} ms ({dense_ms / pruned_ms:.2f}x)"
    )
    print(f"saved to {ex.output_dir}; reload max |diff| = {diff}")
    return {
        "dense_params": dense_params,
        "pruned_params": pruned_params,
        "dense_ms": dense_ms,
        "pruned_ms": pruned_ms,
        "reload_max_diff": diff,
    }


if __name__ == "__main__":
    main()
