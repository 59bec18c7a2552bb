"""Retraining-free pruning (issue 12): one-shot accuracy with the budget search, + rearrangement,
+ reconstruction, + both, before and after the same short recovery as ``quality/quality.py``; and the time of the
whole path (``prune_oneshot``) on MiniLM and on a BERT-base shape.

Setup: the quickstart's model and data (all-MiniLM-L6-v2 fine-tuned once on Rotten Tomatoes; ``--quick``:
a tiny BERT). Scores (Fisher and Taylor, one shared pass) on 2,048 training sentences in batches of 32,
with per-batch gate gradients for the rearrangement; the budget search uses the first 4 batches of 32
of a separate 512-sentence calibration set, and the reconstruction all 512 (no labels read). Targets are
fractions of block FLOPs at 64 tokens. Public API only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import (
    accuracy,
    bench_args,
    bench_task,
    copy_model,
    loader,
    machine,
    plan_fields,
    recover,
    scorers,
    write_json,
)

from hf_gradprune import (
    current_plan,
    prune_model,
    prune_oneshot,
    rearrange_plan,
    reconstruct,
    search_budget_split,
)

TARGETS = (0.4, 0.5, 0.6, 0.7)
QUICK_TARGETS = (0.5,)
METHODS = ("fisher", "taylor")


def run(
    quick: bool, out: Path, recovery_steps: int, n_score: int, n_calib: int, time_bert_base: bool, part: str = "all"
) -> dict:
    """``part``: "all", "rows" (accuracy only) or "timing" (the whole path only, merged into an existing
    ``retrain_free.json``): time it on an otherwise idle machine."""
    torch.manual_seed(0)
    work, task, dense = bench_task(quick)
    dense.eval()
    dense_acc = accuracy(dense, task)
    print(f"dense accuracy {dense_acc:.4f}", flush=True)
    seq = task.max_len
    score_batches = list(loader(task.train, 0, n_score, 32, task.collator))
    calib = list(loader(task.train, n_score, n_calib, 32, task.collator))
    if part == "timing":
        result = json.loads((out / "retrain_free.json").read_text())
        result["whole_path"] = whole_paths(dense, score_batches, seq, task, quick, time_bert_base)
        result["machine_whole_path"] = machine()
        write_json(out / "retrain_free.json", result)
        return result
    t0 = time.perf_counter()
    by_method = scorers(dense, task, METHODS, n_examples=n_score, record_batches=True)  # = score_batches' data
    score_seconds = time.perf_counter() - t0
    rows = []
    for method in METHODS:
        scorer = by_method[method]
        scores = scorer.scores
        for target in QUICK_TARGETS if quick else TARGETS:
            t = time.perf_counter()
            plan, search = search_budget_split(dense, scores, calib[:4], flops_budget=target, seq_len=seq)
            search_s = time.perf_counter() - t
            t = time.perf_counter()
            rearranged, _ = rearrange_plan(plan, scorer.batch_gradients, scores.head_ids, scores.neuron_ids)
            rearrange_s = time.perf_counter() - t
            row = {
                "method": method,
                "target": target,
                **plan_fields(plan, seq),
                "search_seconds": round(search_s, 2),
                "rearrange_seconds": round(rearrange_s, 2),
            }
            for name, p in (("one_shot", plan), ("rearranged", rearranged)):
                model = copy_model(dense)
                prune_model(model, p)
                row[name] = accuracy(model, task)
                t = time.perf_counter()
                report = reconstruct(model, dense, calib)
                row[f"{name}_reconstruct_seconds"] = round(time.perf_counter() - t, 2)
                row[f"{name}_reconstructed"] = accuracy(model, task)
                row[f"{name}_reconstruct_skipped"] = len(report.skipped)
                if name == "one_shot":  # the default path (no rearrangement), then the short recovery
                    recovered = recover(model, dense, task, recovery_steps, work / "recovery")
                    row["reconstructed_recovered"] = accuracy(recovered, task)
            model = copy_model(dense)
            prune_model(model, plan)
            row["one_shot_recovered"] = accuracy(recover(model, dense, task, recovery_steps, work / "recovery"), task)
            rows.append(row)
            print(row, flush=True)

    timing = whole_paths(dense, score_batches, seq, task, quick, time_bert_base) if part == "all" else {}
    result = {
        "task": task.name,
        "machine": machine(),
        "dense_accuracy": dense_acc,
        "recovery_steps": recovery_steps,
        "scoring_examples": sum(len(b["labels"]) for b in score_batches),
        "calibration_examples": sum(len(b["labels"]) for b in calib),
        "calibration_tokens": int(sum(b["attention_mask"].sum() for b in calib)),
        "scoring_seconds_fisher_and_taylor": round(score_seconds, 2),
        "flops_seq_len": seq,
        "rows": rows,
        "whole_path": timing,
    }
    write_json(out / "retrain_free.json", result)
    return result


def whole_paths(dense, score_batches, seq, task, quick, time_bert_base) -> dict:
    timing = {"minilm": whole_path(copy_model(dense), score_batches, seq, task)}
    if time_bert_base and not quick:
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        base = BertForSequenceClassification(BertConfig(num_labels=2)).eval()  # BERT-base shape, random weights
        timing["bert_base_shape"] = whole_path(base, score_batches, seq, None)
    print(timing, flush=True)
    return timing


def whole_path(model, batches, seq, task) -> dict:
    """``prune_oneshot`` at 50% of block FLOPs with issue 12's defaults, on ``batches`` (2,048 sentences): scoring
    and reconstruction on all of them, the budget search on the first 4."""
    t = time.perf_counter()
    # issue 12's steps, fixed (reconstruction on, no rearrangement), as this section measured them; the default's
    # held-out choice among the steps (issue 24) is timed by oneshot/default_path.py
    _, report = prune_oneshot(model, batches, flops_budget=0.5, seq_len=seq, reconstruct=True, rearrange=False)
    total = time.perf_counter() - t
    row = {
        "seconds": round(total, 1),
        "steps": {k: round(v, 1) for k, v in report.seconds.items()},
        "flops_removed": round(current_plan(model).flops_removed(seq), 4),
    }
    if task is not None:
        row["accuracy"] = accuracy(model, task)
    return row


def main(argv=None):
    def extra(parser):
        parser.add_argument("--recovery_steps", type=int, default=None)
        parser.add_argument("--scoring_examples", type=int, default=None)
        parser.add_argument("--calibration_examples", type=int, default=None)
        parser.add_argument("--no_bert_base", action="store_true", help="skip the BERT-base-shape timing")
        parser.add_argument("--part", choices=("all", "rows", "timing"), default="all")

    args = bench_args(argv, __doc__, extra)
    steps = args.recovery_steps or (6 if args.quick else 60)
    n = args.scoring_examples or (64 if args.quick else 2048)
    c = args.calibration_examples or (64 if args.quick else 512)
    return run(args.quick, args.out, steps, n, c, not args.no_bert_base, args.part)


if __name__ == "__main__":
    main()
