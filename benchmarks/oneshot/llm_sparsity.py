"""One-shot weight sparsity on a decoder (issue 23): SmolLM2-135M (``--quick``: a tiny random Llama) pruned to 50%
unstructured and to 2:4 by ``prune_weights_oneshot`` with magnitude, wanda, sparsegpt and the gradient-informed
methods (taylor, fisher, and gblm: GBLM-Pruner's Wanda plus gradient norms), on 8 x 256 calibration tokens of the
training text (one sequence per batch); perplexity on 16 x 256 held-out Wikipedia tokens (as ``llm_reconstruct.py``),
each ratio to dense beside the papers' ratios at 7B (LLaMA-2-7B, 128 x 2,048 calibration tokens, WikiText-2; Wanda's
README).

The same model, text and perplexity as ``llm_reconstruct.py`` (from ``common``). Writes ``llm_sparsity.json``
(each row as it is measured; ``--methods gblm --update`` measures some methods again and keeps the other rows).
Public API only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import ROOT, bench_args, copy_model, machine, model_and_text, perplexity, token_blocks, write_json
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_gradprune.oneshot import prune_weights_oneshot

METHODS = ("magnitude", "wanda", "sparsegpt", "gblm", "fisher", "taylor")  # the order they run in
GRADIENT_METHODS = ("taylor", "fisher", "gblm")
ALL_METHODS = METHODS
PATTERNS = ("unstructured", "2:4")
# LLaMA-2-7B perplexity on WikiText-2 (Wanda's README): dense 5.12
PAPER_DENSE = 5.12
PAPER = {
    "unstructured": {"magnitude": 14.89, "sparsegpt": 6.51, "wanda": 6.42},
    "2:4": {"magnitude": 54.59, "sparsegpt": 10.17, "wanda": 11.02},
}


def _add(parser) -> None:
    parser.add_argument("--calib_blocks", type=int, default=None, help="calibration sequences (default 8; quick 4)")
    parser.add_argument("--block_len", type=int, default=None, help="their length in tokens (default 256; quick 32)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated; default all")
    parser.add_argument(
        "--update", action="store_true", help="keep the other methods' rows of an existing results file (same setup)"
    )


def goals(rows: list[dict]) -> dict:
    """Per pattern: does the best gradient method beat wanda, and wanda magnitude (lower perplexity)?"""
    out = {}
    for pattern in PATTERNS:
        ppl = {r["method"]: r["perplexity"] for r in rows if r["pattern"] == pattern}
        grad = {m: ppl[m] for m in GRADIENT_METHODS if m in ppl}
        entry = {}
        if grad and "wanda" in ppl:
            best = min(grad, key=grad.get)
            entry["gradient_beats_wanda"] = {"method": best, "met": grad[best] < ppl["wanda"]}
        if "wanda" in ppl and "magnitude" in ppl:
            entry["wanda_beats_magnitude"] = ppl["wanda"] < ppl["magnitude"]
        out[pattern] = entry
    return out


def run(quick: bool, out, calib_blocks=None, block_len=None, methods=METHODS, update=False) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    work = ROOT / ".cache" / ("bench-llm-quick" if quick else "bench-llm")
    model_dir, train_file, eval_file, name = model_and_text(quick, work)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    n_calib = calib_blocks or (4 if quick else 8)
    length = block_len or (32 if quick else 256)
    blocks = token_blocks(tokenizer, train_file, n_calib, length)
    eval_blocks = token_blocks(tokenizer, eval_file, 4 if quick else 16, 32 if quick else 256)
    calibration = [{"input_ids": blocks[i : i + 1]} for i in range(n_calib)]  # one sequence per batch
    t = time.perf_counter()
    dense_ppl = perplexity(dense, eval_blocks)
    print(f"dense perplexity {dense_ppl:.3f} ({time.perf_counter() - t:.1f} s)", flush=True)
    setup = {"sequences": n_calib, "length": length, "tokens": n_calib * length}
    path = out / "llm_sparsity.json"
    rows = []
    if update and path.exists():
        previous = json.loads(path.read_text())
        if previous.get("calibration") != setup or previous.get("eval_tokens") != int(eval_blocks.numel()):
            raise SystemExit(f"--update: {path} was measured with another calibration or held-out set")
        rows = [r for r in previous["rows"] if r["method"] not in methods]
    result = {
        "model": name,
        "machine": machine(),
        "dense_perplexity": dense_ppl,
        "calibration": setup,
        "eval_tokens": int(eval_blocks.numel()),
        "paper": {"model": "LLaMA-2-7B", "dense": PAPER_DENSE, "perplexity": PAPER, "calibration_tokens": 128 * 2048},
        "rows": rows,
        "complete": False,
    }
    for method in methods:  # both patterns of a method before the next: a cut-short run has whole methods
        for pattern in PATTERNS:
            model = copy_model(dense)
            sparsity = 0.5 if pattern == "unstructured" else None
            report = prune_weights_oneshot(model, calibration, sparsity, pattern, method)
            ppl = perplexity(model, eval_blocks)
            paper = PAPER[pattern].get(method)
            row = {
                "pattern": pattern,
                "method": method,
                "scope": report.scope,
                "sparsity": round(report.measured, 6),
                "perplexity": ppl,
                "ratio_to_dense": round(ppl / dense_ppl, 4),
                "paper_7b_ratio": round(paper / PAPER_DENSE, 4) if paper else None,
                "seconds": round(report.seconds, 1),
            }
            rows.append(row)
            print(row, flush=True)
            del model
            write_json(path, result)  # each row as it comes: an interrupted run keeps what it measured
    order = {(p, m): i for i, (p, m) in enumerate((p, m) for p in PATTERNS for m in ALL_METHODS)}
    rows.sort(key=lambda r: order.get((r["pattern"], r["method"]), len(order)))
    result["goals"] = goals(rows)
    result["complete"] = True
    write_json(path, result)
    return result


def main(argv=None):
    args = bench_args(argv, __doc__, _add)
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}")
    return run(args.quick, args.out, args.calib_blocks, args.block_len, methods, args.update)


if __name__ == "__main__":
    main()
