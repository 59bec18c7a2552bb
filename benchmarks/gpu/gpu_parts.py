"""The parts of ``benchmarks/gpu/gpu_check.py`` that are more than a test run: a real ``GradPruneTrainer`` pass (bf16,
and fp16 with the GradScaler), the timing of ``prune_oneshot`` and ``oneshot/llm_scale.py``'s GPU rows (the speed
rows: ``gpu_speed.py``). Each returns a JSON-able dict with ``ok`` (bool) and ``problems`` (what failed).
``dry=True`` runs the same code on the CPU on tiny models.

Imports only torch, transformers, hf_gradprune's public API and the benchmarks' own modules (no ``datasets``: the
GPU machine may lack it).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_gradprune import GradPruneConfig, GradPruneTrainer, Scores, current_plan


def device_of(dry: bool) -> torch.device:
    return torch.device("cpu" if dry else "cuda")


# ---------------------------------------------------------------------------------------------- trainer pass
class SyntheticTask(torch.utils.data.Dataset):
    """The label is a fixed random function of the first token, one of ``keys`` ids; the rest is noise. Even a deep
    random model learns it from scratch, one key at a time, so the loss keeps falling through the whole run unless
    training breaks (a prune that leaves stale optimizer state, frozen or NaN weights)."""

    def __init__(self, n: int, seq: int, vocab: int, keys: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        table = torch.randint(0, 2, (keys,), generator=gen)
        key = torch.randint(0, keys, (n,), generator=gen)
        self.ids = torch.randint(5 + keys, vocab, (n, seq), generator=gen)
        self.ids[:, 0] = 5 + key
        self.labels = table[key]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i]}


def trainer_sizes(dry: bool) -> dict:
    """Steps and shapes: a few hundred steps of BERT-base at 32 x 128 on the GPU; tiny on the CPU. Both log every step
    and leave at least ``LOSS_WINDOW`` logged steps before and after each round."""
    if dry:
        config = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        sizes = dict(vocab=64, keys=8, seq=8, batch=16, dense_steps=40, steps=80, round2=40, scoring=2, lr=3e-3)
        return dict(config=config, n=512, **sizes)
    sizes = dict(vocab=30522, keys=512, seq=128, batch=32, dense_steps=120, steps=300, round2=150, scoring=16, lr=2e-4)
    return dict(config={}, n=8192, **sizes)


class StepProbe(TrainerCallback):
    """Per optimizer step: wall time, peak device memory (CUDA), whether the GradScaler skipped the step."""

    def __init__(self, trainer_ref: list, cuda: bool):
        self.trainer_ref, self.cuda = trainer_ref, cuda
        self.steps: list[dict] = []
        self.peak_before_training_mb = None
        self._t = None

    def on_train_begin(self, args, state, control, **kw):
        if self.cuda:  # the peak so far: scoring before training (eval mode, dense model) and the first prune
            self.peak_before_training_mb = torch.cuda.max_memory_allocated() / 2**20

    def on_step_begin(self, args, state, control, **kw):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self.cuda:
            torch.cuda.synchronize()
        accelerator = self.trainer_ref[0].accelerator
        scaler = getattr(accelerator, "scaler", None)
        self.steps.append(
            {
                "step": state.global_step,
                "seconds": time.perf_counter() - self._t,
                "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None,
                "skipped": bool(accelerator.optimizer_step_was_skipped) if scaler is not None else None,
                "scale": float(scaler.get_scale()) if scaler is not None else None,
            }
        )


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


LOSS_WINDOW = 20  # logged steps per mean: single steps of the synthetic task jump between 0.01 and 0.4


def task_losses(log_history: list[dict], alpha: float) -> dict[int, float]:
    """``{step: the task's own loss}`` from a Trainer's logs (one per step with ``logging_steps=1``). Under
    distillation the logged loss is ``(1 - alpha) * task + alpha * distill`` and ``distill_loss`` is logged next to
    it: solved for the task loss, so that it compares with the dense run's."""
    out = {}
    for e in log_history:
        if "loss" in e and "step" in e:
            kd = e.get("distill_loss")
            out[e["step"]] = e["loss"] if kd is None or alpha >= 1 else (e["loss"] - alpha * kd) / (1 - alpha)
    return out


def loss_windows(before: list[float], after: list[float], window: int = LOSS_WINDOW) -> dict:
    """The task loss around one prune, as means of ``window`` logged steps: ``before`` (the last ``window`` steps
    before the prune), ``right_after`` (the first after it) and ``after`` (the last of its recovery: before the next
    prune, or the end). ``ok``: the recovery ends no higher than the loss on either side of the prune (within
    10% + 0.01); a loss that climbs while recovering means training broke (stale optimizer state, frozen or NaN
    weights), while a prune that set the model back and was partly recovered is fine. ``recovered``: back within
    10% + 0.01 of ``before``."""
    if len(before) < window or len(after) < window:
        return {"window": window, "steps_before": len(before), "steps_after": len(after), "ok": False, "short": True}
    b, r, a = (round(sum(x) / window, 4) for x in (before[-window:], after[:window], after[-window:]))
    return {
        "window": window,
        "before": b,
        "right_after": r,
        "after": a,
        "steps_after": len(after),
        "ok": a <= 1.1 * max(b, r) + 0.01,
        "recovered": a <= 1.1 * b + 0.01,
    }


def trainer_pass(precision: str, dry: bool, work: Path) -> dict:
    """Dense fine-tune (plain ``Trainer``), then one ``GradPruneTrainer.train()``: prune at step 0 (scored before
    training), recovery with distillation from the dense model, a second (iterative) round, recovery again."""
    sizes = trainer_sizes(dry)
    device = device_of(dry)
    cuda = device.type == "cuda"
    precision_flags = {"bf16": {"bf16": True}, "fp16": {"fp16": True}}[precision]
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=sizes["vocab"], num_labels=2, **sizes["config"]))
    data = SyntheticTask(sizes["n"], sizes["seq"], sizes["vocab"], sizes["keys"])
    common = dict(
        per_device_train_batch_size=sizes["batch"],
        learning_rate=sizes["lr"],
        warmup_steps=0.1,  # a fraction of each run's steps (a deep random model at this rate wants a warm-up)
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=not cuda,
        seed=0,
        dataloader_num_workers=0,
        **precision_flags,
    )
    start = time.perf_counter()
    dense_args = TrainingArguments(output_dir=str(work / "dense"), max_steps=sizes["dense_steps"], **common)
    dense_trainer = Trainer(model=model, args=dense_args, train_dataset=data)
    dense_out = dense_trainer.train()
    dense_seconds = time.perf_counter() - start
    geometry = current_plan(model).geometry

    args = GradPruneConfig(
        output_dir=str(work / "prune"),
        max_steps=sizes["steps"],
        importance="taylor",
        flops_budget=0.5,
        pruning_schedule="iterative",
        num_rounds=2,
        prune_start_step=0,
        prune_end_step=sizes["round2"],
        scoring_steps=sizes["scoring"],
        distill_alpha=0.5,
        **common,
    )
    ref: list = []
    probe = StepProbe(ref, cuda)
    trainer = GradPruneTrainer(model=model, args=args, train_dataset=data, callbacks=[probe])
    ref.append(trainer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out = trainer.train()
    peak_total = torch.cuda.max_memory_allocated() / 2**20 if cuda else None

    logs = trainer.state.log_history
    losses = task_losses(logs, args.distill_alpha)
    dense_losses = task_losses(dense_trainer.state.log_history, 0.0)
    rounds = [e for e in logs if "prune/round" in e]
    r2 = sizes["round2"]
    # Round 2 prunes inside step r2 + 1 (training_step at global_step r2); its scoring is the steps just before.
    dense_window = [dense_losses[s] for s in sorted(dense_losses)]
    window1 = [losses[s] for s in sorted(losses) if s <= r2]
    window2 = [losses[s] for s in sorted(losses) if s > r2]
    scoring_steps = set(range(r2 - sizes["scoring"] + 1, r2 + 1))
    plain = [s for s in probe.steps if 3 <= s["step"] <= r2 - sizes["scoring"]]  # same model size, no hooks
    scoring = [s for s in probe.steps if s["step"] in scoring_steps]
    score_files = sorted((work / "prune" / "pruning").glob("*/scores.safetensors"))
    round_scores = []
    for path in score_files:
        s = Scores.load(path)
        values = torch.cat([t.flatten() for t in s.heads + s.neurons])
        round_scores.append(
            {
                "round": path.parent.name,
                "examples_scored": s.num_examples,
                "skipped_batches": s.skipped_batches,
                "finite": bool(torch.isfinite(values).all()),
                "mean": float(values.float().mean()),
            }
        )
    final = current_plan(trainer.model)
    result = {
        "precision": precision,
        "device": str(device),
        "model": "bert-base shape, random weights" if not dry else "tiny bert, random weights",
        "geometry": geometry.to_dict(),
        "batch": sizes["batch"],
        "seq": sizes["seq"],
        "dense_steps": sizes["dense_steps"],
        "dense_seconds": round(dense_seconds, 2),
        "dense_mean_train_loss": round(dense_out.training_loss, 4),
        "steps": sizes["steps"],
        "rounds_at_steps": [e["step"] for e in rounds],
        "rounds": [
            {k.split("/", 1)[1]: v for k, v in e.items() if k.startswith("prune/")} | {"step": e["step"]}
            for e in rounds
        ],
        "round_scores": round_scores,
        "flops_removed": round(final.flops_removed(args.flops_seq_len), 4),
        "steps_per_second": out.metrics.get("train_steps_per_second"),
        "median_step_s_plain": _median([s["seconds"] for s in plain]),
        "median_step_s_scoring": _median([s["seconds"] for s in scoring]),
        "peak_memory_mb": round(peak_total, 1) if peak_total is not None else None,
        "peak_memory_mb_before_training": _median([probe.peak_before_training_mb]),
        "median_step_peak_mb_plain": _median([s["peak_mb"] for s in plain]),
        "median_step_peak_mb_scoring": _median([s["peak_mb"] for s in scoring]),
        "loss_round_1": loss_windows(dense_window, window1),
        "loss_round_2": loss_windows(window1, window2),
        "optimizer_steps_skipped_by_gradscaler": (
            sum(bool(s["skipped"]) for s in probe.steps)
            if probe.steps and probe.steps[0]["skipped"] is not None
            else None
        ),
        "final_loss_scale": probe.steps[-1]["scale"] if probe.steps else None,
        "notes": [],
    }
    if not cuda:
        result["notes"].append("CPU dry run: no device memory is recorded")
        if precision == "fp16":
            result["notes"].append(
                "CPU dry run: fp16 autocast on the CPU has no GradScaler, so no overflow steps can be counted "
                "(tests/test_gpu.py covers the CPU GradScaler)"
            )
    if result["median_step_peak_mb_plain"] and result["median_step_peak_mb_scoring"]:
        result["scoring_memory_overhead"] = round(
            result["median_step_peak_mb_scoring"] / result["median_step_peak_mb_plain"] - 1, 4
        )
    if result["median_step_s_plain"] and result["median_step_s_scoring"]:
        result["scoring_time_overhead"] = round(result["median_step_s_scoring"] / result["median_step_s_plain"] - 1, 4)

    problems = []
    if len(rounds) != 2 or result["rounds_at_steps"][0] != 0:
        problems.append(f"expected 2 rounds, the first at step 0; got rounds at {result['rounds_at_steps']}")
    for key in ("loss_round_1", "loss_round_2"):
        w = result[key]
        if w.get("short"):
            problems.append(
                f"{key}: fewer than {w['window']} logged steps around the prune "
                f"({w['steps_before']} before, {w['steps_after']} after)"
            )
        elif not w["ok"]:
            problems.append(
                f"{key}: the task loss rose while recovering (means of {w['window']} logged steps: {w['before']} "
                f"before the prune, {w['right_after']} right after, {w['after']} at the end)"
            )
    if len(round_scores) != 2:
        problems.append(f"expected the scores of 2 rounds under pruning/, found {len(round_scores)}")
    for r in round_scores:
        if not r["finite"] or r["examples_scored"] <= 0:
            problems.append(f"{r['round']}: {r['examples_scored']} examples scored, finite={r['finite']}")
    means = [r["mean"] for r in round_scores if r["finite"] and r["mean"] > 0]
    if len(means) == 2 and not 1e-4 < means[0] / means[1] < 1e4:
        # The rounds score the same kind of batches: a factor of ~the GradScaler's scale (65536) between them says
        # that one round's gradients were not unscaled (e.g. the scoring before training under fp16).
        problems.append(
            f"round 1's mean score is {means[0] / means[1]:.3g}x round 2's: a loss scale left in? (see "
            "tests/test_gpu.py::test_trainer_fp16_scores_before_training_are_unscaled)"
        )
    if abs(result["flops_removed"] - 0.5) > (0.1 if dry else 0.03):  # a tiny model's heads are coarse units
        problems.append(f"flops_removed {result['flops_removed']} is not the 0.5 asked for")
    result.update(ok=not problems, problems=problems)
    return result


# ---------------------------------------------------------------------------------------------- speed rows
# ---------------------------------------------------------------------------------------------- one-shot
def oneshot_settings(dry: bool) -> list[dict]:
    """The ``prune_oneshot`` runs, in order: a BERT-base shape (fp32, Kwon et al.'s setting: 2,048 sequences of 128,
    50% of block FLOPs; their anchor is under 3 minutes on one GPU), then a Llama-3.2-1B shape (bf16, SDPA) with the
    2026-12-04 probe's setting (16 batches of 4 x 512, 20% of block parameters: 90 s on an H200). Tiny shapes on the
    CPU in the dry run."""
    from speed.llm_speed import LLAMA_1B, TINY

    if dry:
        bert = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=100)
        return [
            dict(name="tiny-bert", family="bert", config=bert, dtype="float32", batches=4, batch=4, seq=16,
                 target={"flops_budget": 0.5}),
            dict(name="tiny-llama", family="llama", config=TINY, dtype="bfloat16", batches=4, batch=2, seq=32,
                 target={"params_budget": 0.2}),
        ]  # fmt: skip
    return [
        dict(name="bert-base (random)", family="bert", config={}, dtype="float32", batches=64, batch=32, seq=128,
             target={"flops_budget": 0.5}),
        dict(name="llama-3.2-1b (random)", family="llama", config=LLAMA_1B, dtype="bfloat16", batches=16, batch=4,
             seq=512, target={"params_budget": 0.2}),
    ]  # fmt: skip


def build_on(device: torch.device, dtype: torch.dtype, make):
    """``make()`` built directly on ``device`` (random init there: fast for a 1B model on a GPU), cast to ``dtype``."""
    with torch.device(device):
        model = make()
    return model.to(dtype=dtype).eval()


def oneshot_model(setting: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    if setting["family"] == "bert":
        return BertForSequenceClassification(BertConfig(num_labels=2, **setting["config"]))
    return LlamaForCausalLM(LlamaConfig(**setting["config"], attn_implementation="sdpa"))


def oneshot_run(setting: dict, device: torch.device) -> dict:
    """One ``prune_oneshot`` call with its defaults (Fisher, budget search, reconstruction) on random-token batches:
    its step seconds (as its report gives them), peak device memory during the call, what it removed."""
    from oneshot.llm_scale import timed_oneshot

    from hf_gradprune.deploy.latency import random_inputs

    cuda = device.type == "cuda"
    dtype = getattr(torch, setting["dtype"])
    torch.manual_seed(0)
    t = time.perf_counter()
    model = build_on(device, dtype, lambda: oneshot_model(setting))
    build_s = time.perf_counter() - t
    params = sum(p.numel() for p in model.parameters())
    batches = [random_inputs(model, setting["batch"], setting["seq"], seed=i) for i in range(setting["batches"])]
    dense = current_plan(model)
    model, report, measured = timed_oneshot(model, batches, device, seq_len=setting["seq"], **setting["target"])
    plan = current_plan(model)
    with torch.inference_mode():
        logits = model(**batches[0]).logits
    rec = report.reconstruction
    return {
        "model": setting["name"],
        "dtype": setting["dtype"],
        "geometry": dense.geometry.to_dict(),
        "params": params,
        "params_after": sum(p.numel() for p in model.parameters()),
        "build_s": round(build_s, 2),
        "calibration": {k: setting[k] for k in ("batches", "batch", "seq")}
        | {"tokens": setting["batches"] * setting["batch"] * setting["seq"]},
        "target": setting["target"],
        "seconds": {k: round(v, 2) for k, v in report.seconds.items()},
        "wall_s": measured["wall_s"],
        "peak_memory_gib": round(measured["peak_bytes"] / 2**30, 2) if cuda else None,
        "model_memory_gib": round(measured["before_bytes"] / 2**30, 2) if cuda else None,
        "flops_removed": round(plan.flops_removed(setting["seq"]), 4),
        "params_removed": round(plan.params_removed(), 4),
        "heads_kept": plan.num_heads,
        "neurons_kept": plan.num_neurons,
        "split": None if report.split is None else {k: v for k, v in report.split.items() if k != "candidates"},
        "reconstruction": None
        if rec is None
        else {
            "tokens": rec.tokens,
            "sublayers": len(rec.sublayers),
            "skipped": len(rec.skipped),
            "error_before": rec.error_before,
            "error_after": rec.error_after,
        },
        "finite_after": bool(torch.isfinite(logits.float()).all()),
    }


def oneshot_part(dry: bool, on_runs=None) -> dict:
    """Every ``oneshot_settings`` run, each written (``on_runs``) as soon as it is made: a kill at the time box keeps
    the runs before it. A run that fails is reported and the next still runs."""
    device = device_of(dry)
    runs, problems = [], []
    for setting in oneshot_settings(dry):
        try:
            run = oneshot_run(setting, device)
        except Exception as err:  # noqa: BLE001 - reported; the next model still runs
            problems.append(f"{setting['name']}: {type(err).__name__}: {err}"[:2000])
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if not run["finite_after"]:
            problems.append(f"{setting['name']}: the pruned model's logits are not finite")
        print({k: run[k] for k in ("model", "seconds", "peak_memory_gib", "params_removed")}, flush=True)
        runs.append(run)
        if on_runs is not None:
            on_runs(runs)
    notes = ["CPU dry run: tiny shapes, no device memory"] if dry else []
    return {"device": str(device), "runs": runs, "notes": notes, "ok": not problems, "problems": problems}


# ---------------------------------------------------------------------------------------------- LLM scale
# The llm-scale part's rows, in order: (shape, the most seconds it may take, or None: whatever time is left). The
# 1B row is capped so that a slow one leaves the 8B row its time; the 8B row gets the rest of the check's time.
LLM_SCALE_ROWS = {"gpu": (("Llama-3.2-1B", 150), ("Llama-3-8B", None)), "dry": (("tiny", 60), ("tiny-untied", None))}
# a row is not started with less time left (GPU: building and calibrating an 8B model)
LLM_SCALE_MIN_START_S = {"gpu": 45, "dry": 5}


def llm_scale_part(dry: bool, deadline: float, on_runs=None) -> dict:
    """``oneshot/llm_scale.py``'s GPU rows: each shape in its own process (its memory freed after it, a row over
    its time killed without taking the next row's), bf16, 128 x 2,048 calibration tokens (dry run: tiny shapes on
    the CPU, 4 x 2 x 32). A row not started for want of time, or killed at its time, is recorded as such."""
    from oneshot import llm_scale

    device = device_of(dry)
    dtype = torch.float32 if dry else torch.bfloat16
    calibration = llm_scale.QUICK_CALIBRATION if dry else llm_scale.GPU_CALIBRATION
    min_start = LLM_SCALE_MIN_START_S["dry" if dry else "gpu"]
    runs, problems, notes = [], [], []
    for shape, cap in LLM_SCALE_ROWS["dry" if dry else "gpu"]:
        left = deadline - time.monotonic()
        box = int(left if cap is None else min(cap, left))
        if box < min_start:
            row = llm_scale.failed_row(
                shape, device, dtype, calibration, f"not run: out of time ({max(left, 0):.0f} s left of the check)"
            )
        else:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, str(Path(llm_scale.__file__)), "--shapes", shape, "--device", device.type]
                cmd += ["--dtype", str(dtype).removeprefix("torch."), "--out", tmp, "--name", "row"]
                cmd += ["--batches", str(calibration["batches"]), "--batch-size", str(calibration["batch_size"])]
                cmd += ["--seq", str(calibration["seq"])]
                for key, value in ({} if dry else llm_scale.GPU_OPTIONS).items():
                    cmd += ["--option", f"{key}={json.dumps(value)}"]
                start = time.monotonic()
                proc = subprocess.Popen(cmd)  # in the part's process group: a kill of the part ends it too
                try:
                    proc.wait(timeout=box)
                    killed = False
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    killed = True
                seconds = round(time.monotonic() - start, 1)
                path = Path(tmp) / "row.json"
                if killed:
                    row = llm_scale.failed_row(
                        shape, device, dtype, calibration, f"not done in {seconds:.0f} s (stopped at its time box)",
                        stopped_after_s=seconds,
                    )  # fmt: skip
                elif path.exists() and json.loads(path.read_text())["rows"]:
                    row = json.loads(path.read_text())["rows"][0]
                else:
                    row = llm_scale.failed_row(shape, device, dtype, calibration, f"error: exit {proc.returncode}")
                row["process_s"] = seconds
        if row["status"].startswith("error"):
            problems.append(f"{shape}: {row['status']}"[:2000])
        elif row["status"] != "done":
            notes.append(f"{shape}: {row['status']}")
        elif not row["finite_after"]:
            problems.append(f"{shape}: the pruned model's logits are not finite")
        notes += [f"{shape}: goal {g['goal']}: {g['status']} ({g['value']} vs {g['limit']})" for g in row["goals"]]
        print(llm_scale.summary(row), flush=True)
        runs.append(row)
        if on_runs is not None:
            on_runs(runs)
    if dry:
        notes.insert(0, "CPU dry run: tiny shapes in fp32, 4 x 2 x 32 tokens; the goals are judged on real shapes only")
    return {"device": str(device), "runs": runs, "notes": notes, "ok": not problems, "problems": problems}
