"""LLM speed: prefill latency and greedy-decode throughput, dense vs uniformly pruned Llama-shaped models.

Models (random weights; speed depends on the shapes only):
- the SmolLM2-135M shape: hidden 576, 30 layers, 9 query heads / 3 KV heads, head_dim 64, FFN 1536,
  vocab 49152, tied embeddings;
- a Llama-3.2-1B shape: hidden 2048, 16 layers, 32 query heads / 8 KV heads, head_dim 64, FFN 8192,
  vocab 128256, tied embeddings.

Plans: uniform (every layer keeps the same query heads per KV group, KV heads and FFN width: a stock
``LlamaConfig`` shape), removing f = 20% and 50% of the blocks' parameters: FFN only (the shape Fisher's
budget picks on SmolLM2, see llm_quality.py), and at 50% also one query head of every KV group plus FFN.
The counts are set (``head_sparsity`` / ``ffn_sparsity``); which units go is chosen by *random* scores,
which does not matter for speed. (A random-score ``params_budget`` plan would remove every head: see the
README.)

- **Prefill:** one forward of ``batch x 512`` tokens that returns the logits of the last position only
  (``logits_to_keep=1``, as generation's prefill does), timed by ``hf_gradprune.deploy.latency.measure_latency``.
- **Decode:** greedy ``generate`` of 32 new tokens after a 128-token prompt (batch 1, dynamic cache), also
  timed by ``measure_latency`` (a module whose forward is the ``generate`` call). Tokens/s is
  ``batch * (32 - 1) / (t(32 new) - t(1 new))``: the prompt's prefill cancels out.

CPU fp32 with ``--threads`` threads (default 2). Repeats per model are in ``MODELS`` (fewer for the 1B shape
on 2 cores). ``--quick``: a tiny random Llama with GQA, in seconds.
"""

from __future__ import annotations

import copy
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import TINY_LLAMA, UNROUNDED, bench_args, dense_drift, drift_record, ffn_sparsity_for, machine, write_json
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from hf_gradprune import ImportanceScorer, PruningPlan, current_plan, prune_model
from hf_gradprune.deploy.latency import measure_latency, random_inputs

FRACTIONS = (0.2, 0.5)
NEW_TOKENS = 32
PROMPT_LEN = 128

SMOLLM2 = dict(
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    intermediate_size=1536,
    vocab_size=49152,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
    rope_theta=100000.0,
)
LLAMA_1B = dict(
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    intermediate_size=8192,
    vocab_size=128256,
    tie_word_embeddings=True,
    max_position_embeddings=131072,
    rope_theta=500000.0,
)
TINY = dict(TINY_LLAMA, vocab_size=256)
# name -> (config, prefill shapes {(batch, seq): (repeats, warmup)}, decode (repeats, warmup))
MODELS = {
    "SmolLM2-135M shape (random)": (SMOLLM2, {(1, 512): (5, 1), (8, 512): (3, 1)}, (3, 1)),
    "Llama-3.2-1B shape (random)": (LLAMA_1B, {(1, 512): (3, 1), (8, 512): (2, 1)}, (2, 1)),
}
QUICK_MODELS = {"tiny-llama (random, GQA)": (TINY, {(1, 64): (1, 0), (4, 64): (1, 0)}, (1, 0))}
QUICK_NEW_TOKENS, QUICK_PROMPT_LEN = 8, 16


class Generate(nn.Module):
    """``model.generate`` (greedy, exactly ``new_tokens`` new tokens) as a forward, so ``measure_latency``
    times it."""

    def __init__(self, model, new_tokens: int):
        super().__init__()
        self.model = model
        self.config = model.config
        self.new_tokens = new_tokens

    def forward(self, input_ids, attention_mask):
        return self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=self.new_tokens,
            min_new_tokens=self.new_tokens,
            do_sample=False,
            pad_token_id=self.config.eos_token_id,
        )


def build(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    model.generation_config.pad_token_id = model.config.eos_token_id
    return model


def uniform_plans(model, fractions=FRACTIONS) -> dict[str, tuple[float, PruningPlan]]:
    """``{name: (target, plan)}``: dense; for every fraction the FFN-only uniform plan (every head kept, the
    shape Fisher's budget picks on SmolLM2); at the largest fraction also one query head of every KV group
    removed plus the FFN width for the rest. Counts are set explicitly, the units chosen by random scores."""
    scores = ImportanceScorer(model, "random", seed=0).scores
    g = scores.geometry
    plans = {"dense": (0.0, current_plan(model))}
    for f in fractions:
        plans[f"FFN only, {f:.0%}"] = (
            f,
            PruningPlan.from_scores(
                scores, ffn_sparsity=ffn_sparsity_for(g, f), uniform=True, ffn_multiple_of=UNROUNDED
            ),
        )
    f, h = max(fractions), 1 / g.group_size
    heads_only = PruningPlan.from_scores(
        scores, head_sparsity=h, uniform=True, ffn_multiple_of=UNROUNDED
    ).params_removed()
    plans[f"{g.group_size - 1} of {g.group_size} q heads per group + FFN, {f:.0%}"] = (
        f,
        PruningPlan.from_scores(
            scores,
            head_sparsity=h,
            ffn_sparsity=ffn_sparsity_for(g, f - heads_only),
            uniform=True,
            ffn_multiple_of=UNROUNDED,
        ),
    )
    return plans


def time_model(model, prefill: dict, decode: tuple, new_tokens: int, prompt_len: int) -> dict:
    """Prefill milliseconds per (batch, seq) and decode timings of one model (all through ``measure_latency``)."""
    out = {"prefill": {}, "decode": {}}
    for (batch, seq), (repeats, warmup) in prefill.items():
        inputs = {**random_inputs(model, batch, seq, seed=0), "logits_to_keep": 1}
        out["prefill"][(batch, seq)] = measure_latency(model, batch, seq, repeats, warmup, inputs=inputs)
    repeats, warmup = decode
    prompt = random_inputs(model, 1, prompt_len, seed=1)
    full = measure_latency(Generate(model, new_tokens), 1, prompt_len, repeats, warmup, inputs=prompt)
    first = measure_latency(Generate(model, 1), 1, prompt_len, repeats, warmup, inputs=prompt)
    out["decode"] = {"generate_ms": full, "first_token_ms": first}
    return out


def skipped(model: str, shape: tuple[int, int], skip: set[str]) -> bool:
    """``skip`` items are ``BxS`` (every model) or ``NAME:BxS`` (models whose name contains NAME)."""
    key = f"{shape[0]}x{shape[1]}"
    return any(
        item == key or (":" in item and item.endswith(f":{key}") and item.split(":")[0] in model) for item in skip
    )


def run(quick: bool, out, threads: int, skip: set[str]) -> dict:
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    models = QUICK_MODELS if quick else MODELS
    new_tokens = QUICK_NEW_TOKENS if quick else NEW_TOKENS
    prompt_len = QUICK_PROMPT_LEN if quick else PROMPT_LEN
    rows, geometries, drifts = [], {}, []
    for name, (config, prefill, decode) in models.items():
        prefill = {k: v for k, v in prefill.items() if not skipped(name, k, skip)}
        dense = build(config)
        geometries[name] = current_plan(dense).geometry.to_dict()
        plans = uniform_plans(dense)
        base = None
        for plan_name, (target, plan) in plans.items():
            t0 = time.perf_counter()
            if plan_name == "dense":
                model = dense
            else:
                model = copy.deepcopy(dense)
                prune_model(model, plan)
            assert plan.is_uniform()
            t = time_model(model, prefill, decode, new_tokens, prompt_len)
            base = base or t
            common = {
                "model": name,
                "precision": "fp32",
                "plan": plan_name,
                "target": target,
                "params_removed": round(plan.params_removed(), 4),
                "flops_removed_512": round(plan.flops_removed(512), 4),
                "model_params": sum(p.numel() for p in model.parameters()),
                "heads_per_layer": len(plan.heads[0]),
                "kv_heads_per_layer": len(plan.kv_heads(0)),
                "ffn_per_layer": len(plan.neurons[0]),
            }
            for (batch, seq), ms in t["prefill"].items():
                repeats, warmup = prefill[(batch, seq)]
                rows.append(
                    {
                        **common,
                        "kind": "prefill",
                        "batch": batch,
                        "seq": seq,
                        "repeats": repeats,
                        "warmup": warmup,
                        "ms": round(ms, 2),
                        "tokens_per_s": round(1000 * batch * seq / ms, 1),
                        "speedup": round(base["prefill"][(batch, seq)] / ms, 3),
                    }
                )
            d, d0 = t["decode"], base["decode"]
            per_token = (d["generate_ms"] - d["first_token_ms"]) / (new_tokens - 1)
            per_token0 = (d0["generate_ms"] - d0["first_token_ms"]) / (new_tokens - 1)
            rows.append(
                {
                    **common,
                    "kind": "decode",
                    "batch": 1,
                    "seq": prompt_len,
                    "new_tokens": new_tokens,
                    "repeats": decode[0],
                    "warmup": decode[1],
                    "generate_ms": round(d["generate_ms"], 2),
                    "first_token_ms": round(d["first_token_ms"], 2),
                    "ms_per_token": round(per_token, 3),
                    "tokens_per_s": round(1000 / per_token, 2),
                    "speedup": round(per_token0 / per_token, 3),
                }
            )
            print(
                f"{name} {plan_name}: "
                + ", ".join(f"prefill {b}x{s} {ms:.0f} ms" for (b, s), ms in t["prefill"].items())
                + f", decode {1000 / per_token:.1f} tokens/s ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            if model is not dense:
                del model
                gc.collect()
        if prefill:  # the dense model's first prefill shape once more, after every plan: did the machine drift?
            (batch, seq), (repeats, warmup) = next(iter(prefill.items()))
            inputs = {**random_inputs(dense, batch, seq, seed=0), "logits_to_keep": 1}
            last = measure_latency(dense, batch, seq, repeats, warmup, inputs=inputs)
            drifts.append(dense_drift(f"{name} prefill {batch}x{seq}", base["prefill"][(batch, seq)], last))
        del dense
        gc.collect()
    result = {
        "machine": machine(),
        "note": "random weights; uniform plans from random scores (which units go does not matter for speed)",
        "prefill_logits_to_keep": 1,
        "geometries": geometries,
        "skipped": sorted(skip),
        "rows": rows,
        "dense_drift": drift_record(drifts),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    write_json(out / "llm_speed.json", result)
    from tables import llm_speed_tables

    print(llm_speed_tables(result), flush=True)
    return result


def main(argv=None):
    def extra(parser):
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument(
            "--skip",
            default="",
            help="prefill shapes to skip, comma-separated: 8x512 (every model) or 1B:8x512 (models named *1B*)",
        )

    args = bench_args(argv, __doc__, extra)
    return run(args.quick, args.out, args.threads, {s for s in args.skip.split(",") if s})


if __name__ == "__main__":
    main()
