"""Reconstruction on a decoder, where every token's output matters (issue 12): SmolLM2-135M (``--quick``: a
tiny random Llama), Fisher scores on 64 x 128 training tokens, plans at 20% of block parameters (uniform
and non-uniform), held-out perplexity one-shot and after ``reconstruct`` on 16 x 128 calibration tokens.

``--part tokens`` (issue 24): how many calibration tokens reconstruction needs. The same scores and plans (default FFN
rounding), ``reconstruct`` on 256 to 8,192 further training tokens (blocks of 128, batches of 2); per row the
sub-layers skipped for lack of data (a scale beyond ``max_scale`` even at the raised ridge), the tokens the report
said would be enough, and held-out perplexity. It sets ``TOKENS_PER_UNIT`` (the rule the report's ``tokens_needed``
follows) and checks that the CLM script's defaults give enough tokens. Writes ``reconstruct_tokens.json``.

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

TOKENS = (256, 512, 1024, 2048, 8192)
QUICK_TOKENS = (128, 512)


def setup(quick: bool, n_calib: int, length: int, per_batch: int = 4):
    """The dense model, its Fisher scorer (on the first ``n_score`` blocks), the blocks after them for calibration,
    the held-out blocks and their dense perplexity, and the run's fixed facts."""
    torch.manual_seed(0)
    work = ROOT / ".cache" / ("bench-llm-quick" if quick else "bench-llm")
    model_dir, train_file, eval_file, name = model_and_text(quick, work)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    n_score = 8 if quick else 64
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
    facts = {
        "model": name,
        "machine": machine(),
        "dense_perplexity": dense_ppl,
        "score_tokens": n_score * length,
        "score_seconds": round(time.perf_counter() - t, 1),
        "eval_tokens": int(eval_blocks.numel()),
    }
    calib = [{"input_ids": blocks[i : i + per_batch]} for i in range(n_score, n_score + n_calib, per_batch)]
    return dense, scorer, calib, eval_blocks, facts


def run(quick: bool, out) -> dict:
    n_calib, length = (4, 32) if quick else (16, 128)
    dense, scorer, calib, eval_blocks, facts = setup(quick, n_calib, length)
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
    result = {**facts, "calibration_tokens": n_calib * length, "rows": rows}
    write_json(out / "llm_reconstruct.json", result)
    return result


def run_tokens(quick: bool, out) -> dict:
    length = 32 if quick else 128
    sizes = QUICK_TOKENS if quick else TOKENS
    dense, scorer, calib, eval_blocks, facts = setup(quick, max(sizes) // length, length, per_batch=2)
    rows = []
    for uniform in (False, True):
        plan = PruningPlan.from_scores(scorer.scores, params_budget=0.2, uniform=uniform)
        model = copy_model(dense)
        prune_model(model, plan)
        one_shot = perplexity(model, eval_blocks)
        for tokens in sizes:
            fitted = copy_model(model)
            t = time.perf_counter()
            report = reconstruct(fitted, dense, calib[: tokens // (2 * length)])
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
    result = {**facts, "rows": rows}
    write_json(out / "reconstruct_tokens.json", result)
    return result


def main(argv=None):
    def extra(parser):
        parser.add_argument("--part", choices=("rows", "tokens"), default="rows")

    args = bench_args(argv, __doc__, extra)
    return (run_tokens if args.part == "tokens" else run)(args.quick, args.out)


if __name__ == "__main__":
    main()
