"""Reconstruction on a decoder, where every token's output matters (issue 12): SmolLM2-135M (``--quick``: a
tiny random Llama), Fisher scores on 64 x 128 training tokens, plans at 20% of block parameters (uniform
and non-uniform), held-out perplexity one-shot and after ``reconstruct`` on 16 x 128 calibration tokens.

The same model, text and perplexity as ``llm_quality.py`` (from ``common``).
Writes ``llm_reconstruct.json``. Public API only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import (
    ROOT,
    UNROUNDED,
    bench_args,
    copy_model,
    machine,
    model_and_text,
    perplexity,
    token_blocks,
    write_json,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_gradprune import ImportanceScorer, PruningPlan, prune_model, reconstruct


def run(quick: bool, out) -> dict:
    torch.manual_seed(0)
    work = ROOT / ".cache" / ("bench-llm-quick" if quick else "bench-llm")
    model_dir, train_file, eval_file, name = model_and_text(quick, work)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    n_score, n_calib, length = (8, 4, 32) if quick else (64, 16, 128)
    blocks = token_blocks(tokenizer, train_file, n_score + n_calib, length)
    eval_blocks = token_blocks(tokenizer, eval_file, 4 if quick else 16, 32 if quick else 256)
    dense_ppl = perplexity(dense, eval_blocks)
    scorer = ImportanceScorer(dense, "fisher")
    t = time.perf_counter()
    with scorer:
        for i in range(0, n_score, 4):
            b = blocks[i : i + 4]
            dense(input_ids=b, labels=b).loss.backward()
            dense.zero_grad(set_to_none=True)
    score_s = time.perf_counter() - t
    calib = [{"input_ids": blocks[i : i + 4]} for i in range(n_score, n_score + n_calib, 4)]
    rows = []
    for uniform in (False, True):
        plan = PruningPlan.from_scores(scorer.scores, params_budget=0.2, uniform=uniform, ffn_multiple_of=UNROUNDED)
        model = copy_model(dense)
        prune_model(model, plan)
        one_shot = perplexity(model, eval_blocks)
        t = time.perf_counter()
        report = reconstruct(model, dense, calib)
        seconds = time.perf_counter() - t
        row = {
            "plan": "uniform" if uniform else "non-uniform",
            "params_removed": round(plan.params_removed(), 4),
            "one_shot": one_shot,
            "reconstructed": perplexity(model, eval_blocks),
            "reconstruct_seconds": round(seconds, 1),
            "skipped": len(report.skipped),
        }
        rows.append(row)
        print(row, flush=True)
    result = {
        "model": name,
        "machine": machine(),
        "dense_perplexity": dense_ppl,
        "score_tokens": n_score * length,
        "score_seconds": round(score_s, 1),
        "calibration_tokens": n_calib * length,
        "eval_tokens": int(eval_blocks.numel()),
        "rows": rows,
    }
    write_json(out / "llm_reconstruct.json", result)
    return result


def main(argv=None):
    args = bench_args(argv, __doc__)
    return run(args.quick, args.out)


if __name__ == "__main__":
    main()
