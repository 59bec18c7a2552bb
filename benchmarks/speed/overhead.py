"""Cost of pruning: a training step with the scorer's hooks vs without (time and peak memory), and the wall
time of the whole pruning step (score 1,024 examples + plan + surgery).

Peak memory on CPU is the process's peak RSS: each configuration runs in a fresh subprocess, so the numbers
do not mix. Time is the median of the timed steps after a warm-up.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import ROOT, bench_args, machine, write_json
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from hf_gradprune import ImportanceScorer, PruningPlan, prune_model
from hf_gradprune.deploy.latency import random_inputs

HERE = Path(__file__).resolve().parent


def build(name: str):
    torch.manual_seed(0)
    if name == "tiny":
        return BertForSequenceClassification(
            BertConfig(
                hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=100
            )
        )
    if name == "minilm":
        return AutoModelForSequenceClassification.from_pretrained(
            ROOT / ".cache" / "quickstart" / "all-MiniLM-L6-v2", num_labels=2
        )
    return BertForSequenceClassification(BertConfig())


def fake_batch(model, batch: int, seq: int):
    """The latency timer's random inputs plus classification labels."""
    return {**random_inputs(model, batch, seq), "labels": torch.randint(0, 2, (batch,))}


def child(name: str, hooks: bool, batch: int, seq: int, steps: int) -> dict:
    """One configuration, in its own process: step times and peak RSS."""
    # AdamW on CPU drifts into denormal floats that slow kernels by up to ~8x at random moments; flushing them
    # makes the with/without comparison measure the hooks, not the denormals.
    torch.set_flush_denormal(True)
    model = build(name).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    data = fake_batch(model, batch, seq)
    scorer = ImportanceScorer(model, "taylor")
    if hooks:
        scorer.attach()
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        model(**data).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_ms": 1000 * sorted(times)[len(times) // 2], "peak_rss_mb": peak_mb}


def pruning_wall_time(name: str, examples: int, batch: int, seq: int) -> dict:
    model = build(name).eval()
    data = fake_batch(model, batch, seq)
    start = time.perf_counter()
    scorer = ImportanceScorer(model, "taylor")
    with scorer:
        for _ in range(examples // batch):
            model(**data).loss.backward()
            model.zero_grad(set_to_none=True)
    scored = time.perf_counter()
    plan = PruningPlan.from_scores(scorer.scores, flops_budget=0.5)
    planned = time.perf_counter()
    prune_model(model, plan)
    done = time.perf_counter()
    return {
        "examples": examples,
        "seq": seq,
        "score_s": round(scored - start, 2),
        "plan_s": round(planned - scored, 3),
        "surgery_s": round(done - planned, 3),
        "total_s": round(done - start, 2),
    }


def run(quick: bool, out: Path) -> dict:
    configs = [("tiny", 8, 16, 5)] if quick else [("minilm", 32, 64, 10), ("bert-base", 8, 128, 5)]
    step_rows = []
    for name, batch, seq, steps in configs:
        res = {}
        for hooks in (False, True):
            cmd = [
                sys.executable,
                str(HERE / "overhead.py"),
                "--child",
                name,
                str(int(hooks)),
                str(batch),
                str(seq),
                str(steps),
            ]
            out_text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res[hooks] = json.loads(out_text.strip().splitlines()[-1])
        row = {
            "model": name,
            "batch": batch,
            "seq": seq,
            "step_ms_without": round(res[False]["step_ms"], 1),
            "step_ms_with": round(res[True]["step_ms"], 1),
            "time_overhead": round(res[True]["step_ms"] / res[False]["step_ms"] - 1, 4),
            "peak_rss_mb_without": round(res[False]["peak_rss_mb"], 1),
            "peak_rss_mb_with": round(res[True]["peak_rss_mb"], 1),
            "memory_overhead": round(res[True]["peak_rss_mb"] / res[False]["peak_rss_mb"] - 1, 4),
        }
        step_rows.append(row)
        print(row, flush=True)
    walls = []
    if quick:
        walls.append({"model": "tiny", **pruning_wall_time("tiny", 64, 16, 16)})
    else:
        walls.append({"model": "minilm", **pruning_wall_time("minilm", 1024, 32, 64)})
        # BERT-base on 2 CPU cores: score 128 examples and scale the scoring time linearly to 1,024 (labelled).
        w = pruning_wall_time("bert-base", 128, 16, 128)
        w["score_s_extrapolated_to_1024"] = round(w["score_s"] * 8, 1)
        walls.append({"model": "bert-base", **w})
    for w in walls:
        print(w, flush=True)
    result = {"machine": machine(), "training_step": step_rows, "pruning_step": walls}
    write_json(out / "overhead.json", result)
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        name, hooks, batch, seq, steps = argv[1], bool(int(argv[2])), int(argv[3]), int(argv[4]), int(argv[5])
        print(json.dumps(child(name, hooks, batch, seq, steps)))
        return None
    args = bench_args(argv, __doc__)
    return run(args.quick, args.out)


if __name__ == "__main__":
    main()
