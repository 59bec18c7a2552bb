"""How many calibration tokens reconstruction needs on a decoder (issue 24): SmolLM2-135M (``--quick``: a tiny random
Llama), Fisher scores on 64 x 128 training tokens, plans at 20% of block parameters (non-uniform and uniform, default
FFN rounding), then ``reconstruct`` on 2,048 to 32,768 further training tokens (blocks of 128, batches of 4). Per
row: the sub-layers skipped for lack of data (a scale beyond ``max_scale`` even at the raised ridge), the tokens the
report said would be enough, and held-out perplexity (§5's 16 x 256 tokens). It sets ``TOKENS_PER_UNIT`` (the rule
the report's ``tokens_needed`` follows) and checks that the CLM script's defaults give enough tokens.

Writes ``reconstruct_tokens.json``. Public API only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import ROOT, bench_args, copy_model, machine, model_and_text, perplexity, token_blocks, write_json
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_gradprune import ImportanceScorer, PruningPlan, prune_model, reconstruct

TOKENS = (2048, 4096, 8192, 16384, 32768)
QUICK_TOKENS = (128, 512)


def run(quick: bool, out) -> dict:
    torch.manual_seed(0)
    work = ROOT / ".cache" / ("bench-llm-quick" if quick else "bench-llm")
    model_dir, train_file, eval_file, name = model_and_text(quick, work)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    length = 32 if quick else 128
    n_score = 8 if quick else 64
    sizes = QUICK_TOKENS if quick else TOKENS
    most = max(sizes) // length
    blocks = token_blocks(tokenizer, train_file, n_score + most, length)
    eval_blocks = token_blocks(tokenizer, eval_file, 4 if quick else 16, 32 if quick else 256)
    dense_ppl = perplexity(dense, eval_blocks)
    scorer = ImportanceScorer(dense, "fisher")
    with scorer:
        for i in range(0, n_score, 4):
            b = blocks[i : i + 4]
            dense(input_ids=b, labels=b).loss.backward()
            dense.zero_grad(set_to_none=True)
    rows = []
    for uniform in (False, True):
        plan = PruningPlan.from_scores(scorer.scores, params_budget=0.2, uniform=uniform)
        model = copy_model(dense)
        prune_model(model, plan)
        one_shot = perplexity(model, eval_blocks)
        for tokens in sizes:
            n = tokens // length
            calib = [{"input_ids": blocks[i : i + 4]} for i in range(n_score, n_score + n, 4)]
            fitted = copy_model(model)
            t = time.perf_counter()
            report = reconstruct(fitted, dense, calib)
            seconds = time.perf_counter() - t
            needed = [r.tokens_needed for r in report.sublayers if r.tokens_needed]
            row = {
                "plan": "uniform" if uniform else "non-uniform",
                "params_removed": round(plan.params_removed(), 4),
                "ffn_kept_per_layer": [len(x) for x in plan.neurons],
                "tokens": report.tokens,
                "one_shot": one_shot,
                "reconstructed": perplexity(fitted, eval_blocks),
                "skipped": len(report.skipped),
                "skipped_for_data": len(needed),
                "tokens_needed_max": max(needed) if needed else None,
                "units_skipped": [r.units for r in report.sublayers if r.tokens_needed],
                "seconds": round(seconds, 1),
            }
            rows.append(row)
            print(row, flush=True)
            del fitted
    result = {
        "model": name,
        "machine": machine(),
        "dense_perplexity": dense_ppl,
        "score_tokens": n_score * length,
        "eval_tokens": int(eval_blocks.numel()),
        "rows": rows,
    }
    write_json(out / "reconstruct_tokens.json", result)
    return result


def main(argv=None):
    args = bench_args(argv, __doc__)
    return run(args.quick, args.out)


if __name__ == "__main__":
    main()
