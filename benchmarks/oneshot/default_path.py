"""Retraining-free, round 2 (issue 24): does ``prune_oneshot``'s default path (it tries plain one-shot,
+ reconstruction, + rearrangement and + both, and keeps the lowest loss on held-out calibration batches) lose
to any of its own candidates, how close does it come to dense, and which ``max_scale`` / ridge should
reconstruction use?

Parts (``--part``, default all but ``timing``'s own run order; each writes its rows into
``default_path.json`` as they come, so a stopped run keeps them):

- ``minilm``: the quickstart setup of ``retrain_free.py`` (the cached dense fine-tune; 2,048 training
  sentences in batches of 32 to score, search and reconstruct; FLOPs targets 40/50/60/70% at the task's
  64 tokens; Fisher and Taylor). Per point: the **default path**
  ``prune_oneshot(copy, score_batches + held_out, flops_budget=t, method=m, seq_len=64)`` (held_out: 4 further
  batches of 32 training sentences, the call's selection batches), its dev accuracy, selection and seconds;
  **each candidate's dev accuracy**, rebuilt with the lower-level API as ``prune_oneshot`` builds them (the
  search on the first 4 batches, rearrangement on per-batch gradients of the 64 scoring batches, reconstruction
  on the first 16), with a check that the default path's plan is the same plan; and the **floor**: the
  default path with ``min_ffn_per_layer=0.1``. Goals per row (``goals``).
- ``sweep``: ``max_scale`` in {2, 3, 10} x ``ridge`` in {1e-4, 1e-2}: ``reconstruct`` on every plan of the
  ``minilm`` rows (the default path's plan, read back from the JSON; first 16 batches) and of the ``smollm2``
  rows (their 16 calibration batches), against one-shot.
- ``smollm2``: §5's harness (``model_and_text``, ``token_blocks``, ``perplexity``; Wikipedia; 16 x 256 held-out
  tokens): ``prune_oneshot(copy, calib, params_budget=0.2, method=m, uniform=u)`` with 64 x 128 calibration
  tokens in batches of 4 plus 4 held-out batches; one more row with 16 x 128 tokens (Fisher, non-uniform).
- ``timing``: the whole default path at 50% of FLOPs on MiniLM (Fisher, the defaults), per step, and the
  forwards the selection cost. Run it alone on a quiet machine.

``--quick``: a tiny BERT and a tiny random Llama, the same code. Public API only.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common, tables and the groups

import torch
from common import (
    ROOT,
    accuracy,
    bench_args,
    bench_task,
    copy_model,
    loader,
    machine,
    model_and_text,
    perplexity,
    plan_fields,
    scorers,
    token_blocks,
    write_json,
)

from hf_gradprune import (
    PruningPlan,
    current_plan,
    prune_model,
    prune_oneshot,
    rearrange_plan,
    reconstruct,
    search_budget_split,
)

FILE = "default_path.json"
PARTS = ("minilm", "smollm2", "sweep", "timing")
TARGETS = (0.4, 0.5, 0.6, 0.7)
QUICK_TARGETS = (0.5,)
METHODS = ("fisher", "taylor")
HELD_OUT = 4  # prune_oneshot's selection_batches: the last batches of the calibration, held out
SEARCH_BATCHES = 4  # prune_oneshot's search_batches
RECONSTRUCT_BATCHES = 16  # prune_oneshot's reconstruct_batches
FLOOR = 0.1  # min_ffn_per_layer of the floor rows
SWEEP = tuple((m, r) for m in (2.0, 3.0, 10.0) for r in (1e-4, 1e-2))
QUICK_SWEEP = ((2.0, 1e-4), (10.0, 1e-2))
# goals of issue 24 per FLOPs target (MiniLM): ("gap", d) = within d of dense; ("at_least", a) = accuracy >= a
TARGET_GOALS = {0.5: ("gap", 0.01), 0.6: ("gap", 0.02), 0.7: ("at_least", 0.79)}
LLM_GOALS = {"uniform": 1.8, "non-uniform": 1.6}  # perplexity / dense at most
TAYLOR_WITHIN = 0.25  # Taylor's perplexity ratio at most 1.25x Fisher's, per shape
TIME_GOAL_S = 120.0


def commit(path: str | None = None) -> str:
    """The checkout's commit (``path``: the last commit that changed it), ``+dirty`` when the package has changes."""
    try:
        where = ["log", "-1", "--format=%h", "--", path] if path else ["rev-parse", "--short", "HEAD"]
        sha = subprocess.run(["git", *where], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "hf_gradprune"], cwd=ROOT, capture_output=True, text=True
        )
        return sha + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):  # pragma: no cover - not a git checkout
        return "unknown"


def jsonable(x):
    """``x`` as JSON values (tensors, tuples and other objects turned into numbers, lists or strings)."""
    return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def plan_key(plan: PruningPlan) -> tuple:
    return tuple(tuple(h) for h in plan.heads), tuple(tuple(n) for n in plan.neurons)


def selection_fields(report) -> dict:
    sel = jsonable(getattr(report, "selection", None) or {})
    return {
        "chosen": sel.get("chosen"),
        "forwards": sel.get("forwards"),
        "selection": sel,
        "steps": {k: round(v, 2) for k, v in report.seconds.items()},  # report.seconds
    }


def skip_fields(report) -> dict:
    rec = report.reconstruction
    skipped = [] if rec is None else rec.skipped
    return {
        "reconstruct_skipped": len(skipped),
        "reconstruct_skips": [f"layer {r.layer} {r.kind}: {r.skipped}" for r in skipped],
    }


def chosen_candidate(selection: dict) -> dict | None:
    for c in selection.get("candidates", []):
        if c.get("name") == selection.get("chosen"):
            return c
    return None


def load(out: Path) -> dict:
    path = out / FILE
    return json.loads(path.read_text()) if path.exists() else {}


def save(out: Path, result: dict) -> None:
    result["machine"] = machine()
    result["commit"] = commit()
    write_json(out / FILE, result)


# ----------------------------------------------------------------------------------------------------- minilm


def minilm_data(quick: bool):
    torch.manual_seed(0)
    work, task, dense = bench_task(quick)
    dense.eval()
    n_score = 64 if quick else 2048
    score_batches = list(loader(task.train, 0, n_score, 32, task.collator))
    held_out = list(loader(task.train, n_score, HELD_OUT * 32, 32, task.collator))
    assert len(held_out) == HELD_OUT, "too few training sentences for the held-out batches"
    return task, dense, score_batches, held_out


def goals_for(target: float, acc: float, best: float, dense_acc: float, se: float) -> dict:
    goals = {"within_1se_of_best_candidate": acc >= best - se}
    kind = TARGET_GOALS.get(target)
    if kind is not None and kind[0] == "gap":
        goals[f"within_{kind[1] * 100:.1f}_points_of_dense"] = acc >= dense_acc - kind[1]
    elif kind is not None:
        goals[f"at_least_{kind[1]}"] = acc >= kind[1]
    return goals


def run_minilm(quick: bool, out: Path, result: dict, resume: bool = False) -> dict:
    """``resume``: keep the rows an earlier (stopped) run wrote on the same dense model, and run the rest (each row
    records ``package_commit``: the last commit of ``hf_gradprune/`` it ran with)."""
    task, dense, score_batches, held_out = minilm_data(quick)
    seq = task.max_len
    dense_acc = accuracy(dense, task)
    n_dev = len(task.dev)
    se = math.sqrt(dense_acc * (1 - dense_acc) / n_dev)
    print(f"dense accuracy {dense_acc:.4f} (1 SE {se:.4f} on {n_dev})", flush=True)
    old = result.get("minilm") or {}
    kept = []
    if resume and old.get("dense_accuracy") == dense_acc:
        kept = old.get("rows", [])
    done = {(r["method"], r["target"]) for r in kept}
    part = result["minilm"] = {
        "task": task.name,
        "dense_accuracy": dense_acc,
        "dev_sentences": n_dev,
        "standard_error": se,
        "scoring_examples": sum(len(b["labels"]) for b in score_batches),
        "held_out_examples": sum(len(b["labels"]) for b in held_out),
        "flops_seq_len": seq,
        "candidates_by": "rebuilt: search_budget_split, rearrange_plan, prune_model, reconstruct",
        "rows": kept,
    }
    t = time.perf_counter()
    by_method = scorers(dense, task, METHODS, n_examples=len(score_batches) * 32, record_batches=True)
    part["scoring_seconds_fisher_and_taylor"] = round(time.perf_counter() - t, 1)
    save(out, result)
    for method in METHODS:
        scorer = by_method[method]
        for target in QUICK_TARGETS if quick else TARGETS:
            if (method, target) in done:
                continue
            row = {"method": method, "target": target, "package_commit": commit("hf_gradprune")}
            # the default path
            model = copy_model(dense)
            t = time.perf_counter()
            _, report = prune_oneshot(model, score_batches + held_out, flops_budget=target, method=method, seq_len=seq)
            row["default_seconds"] = round(time.perf_counter() - t, 1)
            row["default"] = accuracy(model, task)
            default_plan = current_plan(model)
            row.update(plan_fields(default_plan, seq))
            row["plan"] = default_plan.to_dict()
            row.update(selection_fields(report))
            row.update(skip_fields(report))
            del model
            # the candidates, rebuilt
            t = time.perf_counter()
            plan, _ = search_budget_split(
                dense, scorer.scores, score_batches[:SEARCH_BATCHES], flops_budget=target, seq_len=seq
            )
            rearranged, _ = rearrange_plan(
                plan, scorer.batch_gradients, scorer.scores.head_ids, scorer.scores.neuron_ids
            )
            candidates = {}
            for name, p, rearr in (("one_shot", plan, False), ("rearranged", rearranged, True)):
                model = copy_model(dense)
                prune_model(model, p)
                candidates[(rearr, False)] = {"name": name, "accuracy": accuracy(model, task), "plan": plan_key(p)}
                rec = reconstruct(model, dense, score_batches[:RECONSTRUCT_BATCHES])
                candidates[(rearr, True)] = {
                    "name": f"{name}_reconstructed",
                    "accuracy": accuracy(model, task),
                    "plan": plan_key(p),
                    "skipped": len(rec.skipped),
                }
                del model
            row["candidates_seconds"] = round(time.perf_counter() - t, 1)
            losses = {(c.get("rearrange"), c.get("reconstruct")): c for c in row["selection"].get("candidates", [])}
            row["candidates"] = []
            for (rearr, recon), c in candidates.items():
                sel = losses.get((rearr, recon), {})
                row["candidates"].append(
                    {
                        "name": c["name"],
                        "selection_name": sel.get("name"),
                        "rearrange": rearr,
                        "reconstruct": recon,
                        "held_out_loss": sel.get("loss"),
                        "accuracy": c["accuracy"],
                        **({"reconstruct_skipped": c["skipped"]} if "skipped" in c else {}),
                    }
                )
            chosen = chosen_candidate(row["selection"])
            if chosen is not None:
                mine = candidates[(bool(chosen.get("rearrange")), bool(chosen.get("reconstruct")))]
                row["same_plan_as_rebuilt"] = mine["plan"] == plan_key(default_plan)
                row["chosen_rebuilt_accuracy"] = mine["accuracy"]
            else:
                row["same_plan_as_rebuilt"] = plan_key(default_plan) in (plan_key(plan), plan_key(rearranged))
            if not row["same_plan_as_rebuilt"]:
                print(f"[plan] {method} {target}: the default path's plan differs from the rebuilt one", flush=True)
            accs = {c["name"]: c["accuracy"] for c in row["candidates"]}
            best = max(accs.values())
            row["best_candidate"] = max(accs, key=accs.get)
            row["best_candidate_accuracy"] = best
            # the floor
            model = copy_model(dense)
            t = time.perf_counter()
            _, floor_report = prune_oneshot(
                model,
                score_batches + held_out,
                flops_budget=target,
                method=method,
                seq_len=seq,
                min_ffn_per_layer=FLOOR,
            )
            floor_plan = current_plan(model)
            floor_sel = selection_fields(floor_report)
            row["floor"] = {
                "min_ffn_per_layer": FLOOR,
                "accuracy": accuracy(model, task),
                "seconds": round(time.perf_counter() - t, 1),
                "chosen": floor_sel["chosen"],
                "candidates": floor_sel["selection"].get("candidates"),
                **plan_fields(floor_plan, seq),
                **skip_fields(floor_report),
            }
            del model
            row["gap_to_dense"] = row["default"] - dense_acc
            row["goals"] = goals_for(target, row["default"], best, dense_acc, se)
            part["rows"].append(row)
            save(out, result)
            print(
                {k: v for k, v in row.items() if k not in ("plan", "selection", "candidates", "floor")},
                {c["name"]: round(c["accuracy"], 4) for c in row["candidates"]},
                "floor",
                round(row["floor"]["accuracy"], 4),
                flush=True,
            )
    return part


# ----------------------------------------------------------------------------------------------------- smollm2


def llm_data(quick: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    work = ROOT / ".cache" / ("bench-llm-quick" if quick else "bench-llm")
    model_dir, train_file, eval_file, name = model_and_text(quick, work)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    n_calib, length = (8, 32) if quick else (64, 128)
    blocks = token_blocks(tokenizer, train_file, n_calib + 4 * HELD_OUT, length)
    eval_blocks = token_blocks(tokenizer, eval_file, 4 if quick else 16, 32 if quick else 256)
    return name, dense, blocks, eval_blocks, n_calib, length


def llm_batches(blocks: torch.Tensor, n_calib: int) -> list[dict]:
    """``n_calib`` calibration blocks as batches of 4, then the held-out batches (the last blocks of ``blocks``)."""
    calib = [{"input_ids": blocks[i : i + 4]} for i in range(0, n_calib, 4)]
    start = len(blocks) - 4 * HELD_OUT
    return calib + [{"input_ids": blocks[i : i + 4]} for i in range(start, len(blocks), 4)]


def run_smollm2(quick: bool, out: Path, result: dict) -> dict:
    name, dense, blocks, eval_blocks, n_calib, length = llm_data(quick)
    dense_ppl = perplexity(dense, eval_blocks)
    print(f"dense perplexity {dense_ppl:.2f}", flush=True)
    part = result["smollm2"] = {
        "model": name,
        "dense_perplexity": dense_ppl,
        "params_budget": 0.2,
        "eval_tokens": int(eval_blocks.numel()),
        "block_len": length,
        "batch_size": 4,
        "held_out_batches": HELD_OUT,
        "rows": [],
    }
    save(out, result)
    small = max(n_calib // 4, 4)  # the 16 x 128 (quick: 4 blocks... at least one batch)
    runs = [(m, u, n_calib) for m in METHODS for u in (True, False)] + [("fisher", False, small)]
    for method, uniform, n in runs:
        model = copy_model(dense)
        batches = llm_batches(blocks, n)
        t = time.perf_counter()
        _, report = prune_oneshot(model, batches, params_budget=0.2, method=method, uniform=uniform)
        seconds = time.perf_counter() - t
        plan = current_plan(model)
        ppl = perplexity(model, eval_blocks)
        row = {
            "method": method,
            "shape": "uniform" if uniform else "non-uniform",
            "calibration_blocks": n,
            "calibration_tokens": n * length,
            "seconds": round(seconds, 1),
            "perplexity": ppl,
            "ratio": ppl / dense_ppl,
            "params_removed": round(plan.params_removed(), 4),
            "heads_kept": plan.num_heads,
            "kv_heads_kept": plan.num_kv_heads,
            "ffn_per_layer": [len(x) for x in plan.neurons],
            "plan": plan.to_dict(),
            **selection_fields(report),
            **skip_fields(report),
        }
        part["rows"].append(row)
        save(out, result)
        print({k: v for k, v in row.items() if k not in ("plan", "selection", "reconstruct_skips")}, flush=True)
        del model
    goals = {}
    main = {(r["method"], r["shape"]): r for r in part["rows"] if r["calibration_blocks"] == n_calib}
    for shape, limit in LLM_GOALS.items():
        goals[f"{shape}_fisher_within_{limit}x"] = main[("fisher", shape)]["ratio"] <= limit
        goals[f"{shape}_taylor_within_{limit}x"] = main[("taylor", shape)]["ratio"] <= limit
        goals[f"{shape}_taylor_within_25pct_of_fisher"] = (
            main[("taylor", shape)]["ratio"] <= (1 + TAYLOR_WITHIN) * main[("fisher", shape)]["ratio"]
        )
    part["goals"] = goals
    save(out, result)
    print(goals, flush=True)
    return part


# ------------------------------------------------------------------------------------------------------- sweep


def sweep_settings(quick: bool, classifier: bool) -> list[tuple[float, float, bool]]:
    """(max_scale, ridge, classifier_tokens): the grid with the default classifier fit, and for a classifier the
    last layer fitted on every token (``classifier_tokens=False``) at the default ridge."""
    grid = QUICK_SWEEP if quick else SWEEP
    out = [(m, r, True) for m, r in grid]
    if classifier:
        out += [(m, r, False) for m, r in grid if r == 1e-4]
    return out


def sweep_summary(part: dict) -> list[dict]:
    """Per setting: MiniLM's mean accuracy change against one-shot (and how many plans it improved), SmolLM2's mean
    perplexity ratio to one-shot, over the plans measured so far."""
    keys = []
    for row in part["minilm"] + part["smollm2"]:
        for s in row["settings"]:
            k = (s["max_scale"], s["ridge"], s["classifier_tokens"])
            if k not in keys:
                keys.append(k)
    summary = []
    for max_scale, ridge, ct in keys:
        s = {"max_scale": max_scale, "ridge": ridge, "classifier_tokens": ct}

        def pick(row, k=(max_scale, ridge, ct)):
            return next((x for x in row["settings"] if (x["max_scale"], x["ridge"], x["classifier_tokens"]) == k), None)

        gaps = [x["value"] - r["one_shot"] for r in part["minilm"] if (x := pick(r)) is not None]
        if gaps:
            s["minilm_plans"] = len(gaps)
            s["minilm_mean_accuracy_gap"] = sum(gaps) / len(gaps)
            s["minilm_better_than_one_shot"] = sum(g > 0 for g in gaps)
        ratios = [x["value"] / r["one_shot"] for r in part["smollm2"] if (x := pick(r)) is not None]
        if ratios:
            s["smollm2_plans"] = len(ratios)
            s["smollm2_mean_perplexity_ratio"] = sum(ratios) / len(ratios)
        summary.append(s)
    return summary


def run_sweep(quick: bool, out: Path, result: dict, only: str | None = None) -> dict:
    """The SmolLM2 plans first, then the MiniLM ones; the summary after every plan. ``only``: "minilm" or "smollm2"
    measures that model's plans again and keeps the other's rows from the results file."""
    old = result.get("sweep") or {}
    part = result["sweep"] = {
        "minilm": old.get("minilm", []) if only == "smollm2" else [],
        "smollm2": old.get("smollm2", []) if only == "minilm" else [],
        "summary": [],
    }
    if only != "minilm" and result.get("smollm2", {}).get("rows"):
        _, dense, blocks, eval_blocks, n_calib, _ = llm_data(quick)
        for r in result["smollm2"]["rows"]:
            calib = llm_batches(blocks, r["calibration_blocks"])[:-HELD_OUT][:RECONSTRUCT_BATCHES]
            plan = PruningPlan.from_dict(r["plan"])
            model = copy_model(dense)
            prune_model(model, plan)
            row = {
                "method": r["method"],
                "shape": r["shape"],
                "calibration_blocks": r["calibration_blocks"],
                "one_shot": perplexity(model, eval_blocks),
                "settings": [],
            }
            for max_scale, ridge, ct in sweep_settings(quick, False):
                m = copy_model(model)
                rec = reconstruct(m, dense, calib, ridge=ridge, max_scale=max_scale)
                row["settings"].append(
                    {
                        "max_scale": max_scale,
                        "ridge": ridge,
                        "classifier_tokens": ct,
                        "value": perplexity(m, eval_blocks),
                        "skipped": len(rec.skipped),
                        "skips": [f"layer {x.layer} {x.kind}: {x.skipped}" for x in rec.skipped],
                    }
                )
                del m
            part["smollm2"].append(row)
            part["summary"] = sweep_summary(part)
            save(out, result)
            print(row, flush=True)
            del model
    if only != "smollm2" and result.get("minilm", {}).get("rows"):
        task, dense, score_batches, _ = minilm_data(quick)
        calib = score_batches[:RECONSTRUCT_BATCHES]
        for r in result["minilm"]["rows"]:
            plan = PruningPlan.from_dict(r["plan"])
            model = copy_model(dense)
            prune_model(model, plan)
            row = {"method": r["method"], "target": r["target"], "one_shot": accuracy(model, task), "settings": []}
            for max_scale, ridge, ct in sweep_settings(quick, True):
                m = copy_model(model)
                rec = reconstruct(m, dense, calib, ridge=ridge, max_scale=max_scale, classifier_tokens=ct)
                row["settings"].append(
                    {
                        "max_scale": max_scale,
                        "ridge": ridge,
                        "classifier_tokens": ct,
                        "value": accuracy(m, task),
                        "skipped": len(rec.skipped),
                    }
                )
                del m
            part["minilm"].append(row)
            part["summary"] = sweep_summary(part)
            save(out, result)
            print(row, flush=True)
            del model
    part["summary"] = sweep_summary(part)
    save(out, result)
    return part


# ------------------------------------------------------------------------------------------------------ timing


def run_timing(quick: bool, out: Path, result: dict) -> dict:
    task, dense, score_batches, held_out = minilm_data(quick)
    model = copy_model(dense)
    t = time.perf_counter()
    _, report = prune_oneshot(model, score_batches + held_out, flops_budget=0.5, seq_len=task.max_len)
    total = time.perf_counter() - t
    sel = selection_fields(report)
    part = result["timing"] = {
        "seconds": round(total, 1),
        "steps": sel["steps"],
        "forwards": sel["forwards"],
        "chosen": sel["chosen"],
        "flops_removed": round(current_plan(model).flops_removed(task.max_len), 4),
        "accuracy": accuracy(model, task),
        "goal_under_120_s": total < TIME_GOAL_S,
        "machine": machine(),
    }
    save(out, result)
    print(part, flush=True)
    return part


# -------------------------------------------------------------------------------------------------- markdown


def markdown(result: dict) -> str:
    """The README's tables from a results dict (the parts it has)."""
    lines = []
    mini = result.get("minilm")
    if mini and mini.get("rows"):
        lines += [
            f"Dense accuracy **{mini['dense_accuracy']:.4f}**; 1 SE = {mini['standard_error']:.4f} "
            f"({mini['dev_sentences']} dev sentences).",
            "",
            "| method | FLOPs removed | default (chosen) | one-shot | + reconstruction | + rearrangement | + both "
            "| floor 0.1 (chosen) | default s | goals |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in mini["rows"]:
            acc = {(c["rearrange"], c["reconstruct"]): c for c in r["candidates"]}

            def cell(key, acc=acc, best=r["best_candidate_accuracy"]):
                c = acc[key]
                loss = c.get("held_out_loss")
                mark = "**" if c["accuracy"] == best else ""
                return f"{mark}{c['accuracy']:.4f}{mark}" + (f" ({loss:.3f})" if loss is not None else "")

            goals = ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in r["goals"].items())
            lines.append(
                f"| {r['method']} | {r['flops_removed']:.1%} | {r['default']:.4f} ({r['chosen']}) "
                f"| {cell((False, False))} | {cell((False, True))} | {cell((True, False))} | {cell((True, True))} "
                f"| {r['floor']['accuracy']:.4f} ({r['floor']['chosen']}) | {r['default_seconds']:.0f} | {goals} |"
            )
        lines.append("")
    llm = result.get("smollm2")
    if llm and llm.get("rows"):
        lines += [
            f"Dense perplexity **{llm['dense_perplexity']:.2f}**.",
            "",
            "| method | shape | calibration | perplexity | × dense | chosen | skipped sub-layers | seconds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in llm["rows"]:
            lines.append(
                f"| {r['method']} | {r['shape']} | {r['calibration_blocks']} × {llm['block_len']} "
                f"| {r['perplexity']:.2f} | {r['ratio']:.2f}× | {r['chosen']} | {r['reconstruct_skipped']} "
                f"| {r['seconds']:.0f} |"
            )
        lines.append("")
    sweep = result.get("sweep")
    if sweep and sweep.get("summary"):
        lines += [
            "| max_scale | ridge | classifier's last layer fitted on | MiniLM: mean accuracy change vs one-shot "
            "| MiniLM plans improved | SmolLM2: mean perplexity vs one-shot |",
            "|---|---|---|---|---|---|",
        ]
        for s in sweep["summary"]:
            mg = s.get("minilm_mean_accuracy_gap")
            sp = s.get("smollm2_mean_perplexity_ratio")
            improved = "" if mg is None else f"{s['minilm_better_than_one_shot']} of {s['minilm_plans']}"
            fit = "the tokens its head reads" if s["classifier_tokens"] else "every token"
            lines.append(
                f"| {s['max_scale']:g} | {s['ridge']:g} | {fit} "
                f"| {'' if mg is None else f'{mg * 100:+.2f} points'} | {improved} "
                f"| {'' if sp is None else f'{sp:.3f}×'} |"
            )
        lines.append("")
    timing = result.get("timing")
    if timing:
        steps = ", ".join(f"{k} {v:.1f}" for k, v in timing["steps"].items())
        lines.append(
            f"Whole default path (MiniLM, Fisher, 50%): {timing['seconds']:.1f} s ({steps}); "
            f"{timing['forwards']} selection forwards; accuracy {timing['accuracy']:.4f}."
        )
    return "\n".join(lines)


def run(quick: bool, out: Path, part: str = "all", resume: bool = False, sweep_only: str | None = None) -> dict:
    out = Path(out)
    result = load(out)
    result.setdefault("file", FILE)
    result["held_out_batches"] = HELD_OUT
    for name in PARTS if part == "all" else (part,):
        if name == "minilm":
            run_minilm(quick, out, result, resume)
        elif name == "sweep":
            run_sweep(quick, out, result, sweep_only)
        else:
            {"smollm2": run_smollm2, "sweep": run_sweep, "timing": run_timing}[name](quick, out, result)
    print(markdown(result), flush=True)
    return result


def main(argv=None):
    def extra(parser):
        parser.add_argument("--part", choices=("all", *PARTS), default="all")
        parser.add_argument(
            "--resume", action="store_true", help="minilm: keep a stopped run's rows (same dense model)"
        )
        parser.add_argument(
            "--sweep_only",
            choices=("minilm", "smollm2"),
            default=None,
            help="sweep one model's plans, keep the other's",
        )

    args = bench_args(argv, __doc__, extra)
    return run(args.quick, args.out, args.part, args.resume, args.sweep_only)


if __name__ == "__main__":
    main()
