"""``GradPruneTrainer``: score, prune and recover inside one ``trainer.train()``.

A ``Trainer`` with small overrides only: ``train`` (check that every round fits in the run, restore a
pruned checkpoint's shapes, and prune before training when a round is at step 0), ``training_step``
(turn the scorer on for the batches before a round; prune at the round's first micro-batch),
``compute_loss`` (distillation), ``log``, ``save_model`` and ``create_model_card``. The training loop
itself is transformers' own.

With ``reconstruct`` on, each prune is followed by layer-wise least-squares reconstruction
(``oneshot.reconstruct``) against the model just before the prune, on the first ``reconstruct_batches``
training batches; its report is logged and saved with the round.

After every prune the optimizer and LR scheduler are rebuilt for the new parameters. AdamW state is
carried over for every parameter that the prune did not touch (embeddings, norms, heads, untouched
layers); the sliced projections, and those reconstruction rescaled, start with fresh moments. The LR
schedule continues where it was.
Under DDP the model is re-wrapped by Accelerate, so the wrapper never holds stale parameters.

Gradual weight sparsity (``weight_sparsity`` / an N:M ``sparsity_pattern``) lives in ``gradual.py``:
``training_step`` updates the masks at the start of an update's step (after a unit round at that step) and zeroes
the pruned weights' gradients after each backward; a ``TrainerCallback`` re-applies the masks and zeroes their Adam
moments after every optimizer step; checkpoints carry the masks and partial scores.

One module of about 600 lines because it is one class: the overrides share the trainer's round state, and split
across modules they would be one object's methods in several files.
"""

from __future__ import annotations

import copy
import json
import os

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint, has_length
from transformers.utils import logging

from ..architectures import get_adapter
from ..deploy.latency import LatencyTable, latency_table_for
from ..modeling_gradprune import CONFIG_KEY
from ..oneshot.candidates import ProjectionSnapshot, held_out_loss, improves
from ..oneshot.reconstruct import ReconstructionReport, reconstruct
from ..planning.plan import PruningPlan, validate_options
from ..reports.model_card import write_model_card
from ..scoring.scorer import ImportanceScorer
from ..scoring.scores import GRADIENT_METHODS, Scores
from ..state import pruning_state, unwrap_model
from ..surgery import current_plan, prune_model
from ..units import HEAD
from .accelerate_compat import forget_prepared
from .config import GradPruneConfig
from .gradual import GradualSparsity, SparsityCallback, updates_in
from .gradual import cycle_batches as _cycle
from .transformers_compat import loss_scale_setting, restore_loss_scale_setting, trainer_divides_per_batch_loss

logger = logging.get_logger(__name__)

STATE_FILE = "gradprune_state.json"
SCORER_FILE = "gradprune_scorer_rank{rank}.pt"  # one per process: each rank's partial sums, reduced at the prune
TEACHER_DIR = "_gradprune_teacher"  # "_*" is never uploaded by push_to_hub


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float, mask=None) -> torch.Tensor:
    """T^2 * KL(teacher || student) on softened logits; MSE for single-output regression heads.

    Token-level logits ``[B, L, V]`` are averaged over the tokens where ``mask`` is 1.
    """
    teacher = teacher.detach().to(student.dtype)
    if student.shape[-1] == 1:
        return F.mse_loss(student, teacher)
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True, reduction="none")
    kl = kl.sum(-1) * t * t  # [B] or [B, L]
    if kl.dim() == 2 and mask is not None and tuple(mask.shape) == tuple(kl.shape):
        mask = mask.to(kl.dtype)
        return (kl * mask).sum() / mask.sum().clamp_min(1.0)
    return kl.mean()


class GradPruneTrainer(Trainer):
    """``Trainer`` that prunes attention heads and FFN neurons by gradient importance while it trains.

    Args: everything ``Trainer`` takes, with ``args`` a [`GradPruneConfig`], plus ``teacher_model``:
    the model to distil from (default: a frozen copy of the model just before its first prune).
    """

    def __init__(self, model=None, args: GradPruneConfig | None = None, *pos, teacher_model=None, **kwargs):
        if not isinstance(args, GradPruneConfig):
            raise TypeError("GradPruneTrainer needs args=GradPruneConfig(...) (a TrainingArguments subclass)")
        if kwargs.get("optimizers", (None, None)) != (None, None):
            raise ValueError(
                "GradPruneTrainer rebuilds the optimizer and scheduler after every prune, so it cannot take "
                "`optimizers=`; choose them through the config (optim, learning_rate, lr_scheduler_type, ...) "
                "or override create_optimizer / create_scheduler"
            )
        if kwargs.get("model_init") is not None:
            raise ValueError("GradPruneTrainer does not support model_init; pass the model")
        get_adapter(model)  # unsupported families fail here, before anything else
        # The config could not know the model's head count; check min_heads_per_layer against it now.
        validate_options(
            ranking=args.ranking,
            min_heads_per_layer=args.min_heads_per_layer,
            ffn_multiple_of=args.ffn_multiple_of,
            seq_len=args.flops_seq_len,
            num_heads=current_plan(model).geometry.num_heads,
            attention_unit=args.attention_unit,
            uniform=args.uniform,
            balanced=args.balanced,
        )
        super().__init__(model, args, *pos, **kwargs)
        if self.is_fsdp_enabled:
            raise ValueError(
                "GradPruneTrainer does not support FSDP: sharded parameters cannot be sliced per head. "
                "Use DDP (`accelerate launch --multi_gpu`) or a single device."
            )
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            raise ValueError(
                "GradPruneTrainer does not support DeepSpeed ZeRO-3 (partitioned parameters cannot be sliced). "
                "Use ZeRO stage 0-2, DDP, or a single device."
            )
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() != self.accelerator.num_processes:
            raise ValueError(
                f"launched with {dist.get_world_size()} processes, but the Trainer sees "
                f"{self.accelerator.num_processes}: each would train alone and prune differently. On a machine "
                "without GPUs pass --use_cpu true (use_cpu=True) so Accelerate runs DDP over gloo."
            )
        self.teacher = None
        if teacher_model is not None:
            self.teacher = self._freeze(teacher_model)
        self.dense_plan = current_plan(self.model)
        self.latency_table = self._load_latency_table() if args.latency_budget is not None else None
        self.dense_params = sum(p.numel() for p in self.model.parameters())
        self.base_model_name = getattr(self.model.config, "_name_or_path", "") or None
        self._scorer: ImportanceScorer | None = None
        self._scoring_bar = None
        self._rounds_done = 0
        self._step_seen = -1
        self._micro = 0
        self._batches_per_epoch: int | None = None  # of this process's training loader, measured by train()
        self._rewrapped = False
        self._divide_loss_here = False  # training_step: the Trainer of this release will not divide the loss
        self._distill_sum, self._distill_count = 0.0, 0
        # evaluate_after_prune results, one entry per round ("pruned_*", and "reconstructed_*" with reconstruct)
        self.pruned_metrics: list[dict] = []
        # reconstruct: one entry per round, {"round", "step", **ReconstructionReport.to_dict()}
        self.reconstruction_reports: list[dict] = []
        self._pending_logs: list[dict] = []  # a prune before training is logged once the Trainer's state exists
        # gradual weight sparsity (weight_sparsity / an N:M sparsity_pattern): masks, scorer, updates done
        self._sparsity = GradualSparsity(self) if args.sparsifies_weights else None
        if self._sparsity is not None:
            self.add_callback(SparsityCallback(self._sparsity))

    # ------------------------------------------------------------------ schedule
    def _next_round(self, max_steps: int | None = None):
        rounds = self.args.round_schedule(self.state.max_steps if max_steps is None else max_steps)
        return rounds[self._rounds_done] if self._rounds_done < len(rounds) else None

    def check_schedule(self) -> int:
        """Fail unless every round runs in this run's optimizer steps; return that number of steps.

        ``train()`` calls it first; a caller with work to do before ``train()`` (a dense fine-tune) can call it
        earlier, so that a schedule the data cannot give fails before that work."""
        loader = self.get_train_dataloader()
        max_steps = self.set_initial_training_values(self.args, loader)[-1]  # Trainer's own count, from epochs too
        self._batches_per_epoch = len(loader) if has_length(loader) else None
        forget_prepared(self.accelerator, loader)  # only measured: the training loop prepares its own loader
        self.args.check_schedule(max_steps, self._batches_per_epoch)
        return max_steps

    @property
    def distilling(self) -> bool:
        return self.teacher is not None and self.args.effective_distill_alpha > 0

    # ------------------------------------------------------------------ train
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint found in {self.args.output_dir} to resume from")
        max_steps = self.check_schedule()  # before anything is scored or cut
        if resume_from_checkpoint:
            self._restore(resume_from_checkpoint)
        elif self._rounds_done == 0 and self.state.global_step == 0:
            upcoming = self._next_round(max_steps)
            if upcoming is not None and upcoming[0] == 0:
                self._score_before_training()
                self._prune(upcoming[1])
            if self._sparsity is not None and not self._sparsity.updates_done:
                self._sparsity.before_training(max_steps)
        output = super().train(
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )
        if self._sparsity is not None:  # what the weights say at the end, in the metrics and the config
            achieved = self._sparsity.achieved()["sparsity"]
            output.metrics["train_weight_sparsity"] = round(achieved, 6)
            self._sparsity.record()
            self.log({"sparsity/achieved": round(achieved, 6)})
            logger.info(
                "hf_gradprune: weight sparsity %.4f of the %s-sparsified weights (target %.4f)",
                achieved,
                self.args.sparsity_pattern,
                self.args.final_weight_sparsity,
            )
        return output

    def _score_before_training(self) -> None:
        """Score the model as given on ``scoring_steps`` batches, without updating it (eval mode)."""
        model = self.model
        was_training = model.training
        model.eval()
        scorer = self._new_scorer()
        loader = self.get_train_dataloader()
        n = self.args.scoring_steps if scorer.method in GRADIENT_METHODS else 0
        if self._batches_per_epoch is not None and n > self._batches_per_epoch:
            # Scoring is not training: reading the training set more than once only averages more passes.
            logger.warning(
                "hf_gradprune: scoring_steps=%d is more than one pass over the training set (%d batches): scoring "
                "before training cycles it (%.1f passes)",
                n,
                self._batches_per_epoch,
                n / self._batches_per_epoch,
            )
        bar = tqdm(total=n, desc="scoring heads and neurons", disable=not self.is_local_process_zero())
        with scorer:
            for inputs in _cycle(loader, n):
                inputs = self._prepare_inputs(inputs)
                with self.compute_loss_context_manager():
                    loss = self.compute_loss(model, inputs)
                # accelerator.backward multiplies the loss by the fp16 GradScaler's scale (and nothing else here).
                scorer.loss_scale = self._grad_scaler_scale()
                self.accelerator.backward(loss)
                model.zero_grad(set_to_none=True)
                bar.update(1)
        bar.close()
        forget_prepared(self.accelerator, loader)  # a one-off pass: the training loop prepares its own loader
        model.train(was_training)
        self._scorer = scorer

    def _grad_scaler_scale(self) -> float:
        """The factor ``accelerator.backward`` multiplies a loss by: the fp16 GradScaler's scale, else 1."""
        scaler = getattr(self.accelerator, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    # ------------------------------------------------------------------ per step
    def training_step(self, model, inputs, num_items_in_batch=None):
        while self._pending_logs:
            self.log(self._pending_logs.pop(0))
        step = self.state.global_step
        if step != self._step_seen:
            self._step_seen, self._micro = step, 0
        if self._micro == 0:
            upcoming = self._next_round()
            if upcoming is not None and upcoming[0] == step and step > 0:
                self._prune(upcoming[1])
        if self._rewrapped:
            model = self.model_wrapped  # the loop's local reference still points at the old DDP wrapper
        self._update_scorer(step)
        if self._sparsity is not None:  # after a unit round at this step: the weights of what remains
            self._sparsity.before_micro_batch(step, self._micro)
        scoring = self._scorer is not None and self._scorer.is_attached
        user_loss_scale = loss_scale_setting(self)  # put back after the step
        if scoring or (self.distilling and model.training):
            # Score and distil on per-micro-batch means, so the scale is known exactly: the Trainer
            # then divides by the accumulation steps (transformers' num_items_in_batch path cannot say
            # how the model reduced its loss).
            num_items_in_batch = None
            self._divide_loss_here = not trainer_divides_per_batch_loss(self)
        if scoring:
            # Trainer divides the micro-batch mean by the accumulation steps before accelerator.backward.
            self._scorer.loss_scale = self._grad_scaler_scale() / self.current_gradient_accumulation_steps
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._divide_loss_here = False
            restore_loss_scale_setting(self, user_loss_scale)
        if self._sparsity is not None:  # pruned weights' gradients zeroed before clipping and the step; scores
            self._sparsity.after_micro_batch()
        self._micro += 1
        if scoring and self._scoring_bar is not None:
            self._scoring_bar.update(1)
        return loss

    def _update_scorer(self, step: int) -> None:
        """Attach the scorer for the ``scoring_steps`` micro-batches just before the next round."""
        upcoming = self._next_round()
        if upcoming is None or self.args.importance not in GRADIENT_METHODS:
            return
        micro = self.args.micro_batches_before(step, self._batches_per_epoch) + self._micro
        end = self.args.micro_batches_before(upcoming[0], self._batches_per_epoch)
        if not end - self.args.scoring_steps <= micro < end:
            return
        if self._scorer is None:
            self._scorer = self._new_scorer()
        if not self._scorer.is_attached:
            self._scorer.attach()
            left = end - micro
            self._scoring_bar = tqdm(
                total=left, desc="scoring heads and neurons", leave=False, disable=not self.is_local_process_zero()
            )

    def _load_latency_table(self) -> LatencyTable:
        """The table ``latency_budget`` is planned with (``latency.latency_table_for``: the saved one, checked
        against this model and machine, or measured now through the cache)."""
        args = self.args
        return latency_table_for(
            self.model, args.latency_table, args.latency_table_batch_size, args.latency_table_seq_len
        )

    def _new_scorer(self) -> ImportanceScorer:
        return ImportanceScorer(self.model, self.args.importance, seed=self.args.seed + self._rounds_done)

    # ------------------------------------------------------------------ prune
    def _prune(self, fraction: float) -> None:
        args = self.args
        scorer = self._scorer or self._new_scorer()
        scorer.detach()
        if self._scoring_bar is not None:
            self._scoring_bar.close()
            self._scoring_bar = None
        scores = scorer.scores.all_reduce()
        plan = PruningPlan.from_scores(
            scores,
            **args.plan_targets(fraction),
            ranking=args.ranking,
            normalize_heads=args.normalize_head_scores,
            min_heads_per_layer=args.min_heads_per_layer,
            min_ffn_per_layer=args.min_ffn_per_layer,
            ffn_multiple_of=args.ffn_multiple_of,
            seq_len=args.flops_seq_len,
            attention_unit=args.attention_unit,
            uniform=args.uniform,
            budget_split=args.budget_split,
            balanced=args.balanced,
            latency_table=self.latency_table,
        )
        plan = plan.intersect(current_plan(self.model))
        # Kept in config.gradprune["history"] and the round's plan.json: which round of the schedule this was.
        plan.meta.update(round=self._rounds_done + 1, step=self.state.global_step, schedule=args.pruning_schedule)
        # reconstruct: the model just before this prune; a teacher frozen just now is exactly that, no second copy
        reference = self._take_teacher()
        if args.reconstruct and reference is None:
            # A teacher from an earlier round (or given by the user) is not this round's starting point.
            reference = self._freeze(self.model)
        prune_model(self.model, plan)
        self._scorer = None
        self._rounds_done += 1
        evaluate = args.evaluate_after_prune and self.eval_dataset is not None
        entry = {"round": self._rounds_done, "step": self.state.global_step}
        rescaled: set[int] = set()
        report = None
        if args.reconstruct:
            if evaluate:  # the one-shot model, before reconstruction changes it
                entry.update(self.evaluate(metric_key_prefix="pruned"))
            report, rescaled = self._reconstruct(reference)
        del reference  # a copy made for this round is dropped here; the teacher stays
        if self.optimizer is not None:  # after reconstruction: the optimizer sees the final parameters
            self._rebuild_optimizer(fresh=rescaled)
        if self.accelerator.num_processes > 1 and self.model_wrapped is not self.model:
            self._rewrap()
        self._report_round(scores, plan, report)
        if evaluate:
            entry.update(self.evaluate(metric_key_prefix="reconstructed" if args.reconstruct else "pruned"))
            self.pruned_metrics.append(entry)

    def _take_teacher(self):
        """Freeze the model as the teacher before its first change (a prune, or weight masks) unless there is one or
        distillation is off; return it when frozen now."""
        if self.teacher is not None or self.args.effective_distill_alpha <= 0:
            return None
        self.teacher = self._freeze(self.model)
        if self.state.global_step > 0 and self.args.should_save:
            # Needed to resume: the checkpoints after this point hold only the pruned model.
            self.teacher.save_pretrained(os.path.join(self.args.output_dir, TEACHER_DIR))
        return self.teacher

    def _calibration_batches(self) -> list[dict]:
        """The first ``reconstruct_batches`` + ``selection_batches`` training batches, prepared as the training loop
        prepares them."""
        loader = self.get_train_dataloader()
        batches = []
        for inputs in loader:
            if len(batches) >= self.args.reconstruct_batches + self.args.selection_batches:
                break
            batches.append(self._prepare_inputs(inputs))
        forget_prepared(self.accelerator, loader)  # a one-off pass: the training loop prepares its own loader
        return batches

    def _reconstruct(self, reference) -> tuple[ReconstructionReport, set[int]]:
        """Reconstruct the just-pruned model against ``reference``; log and keep the report. Returns it and
        the ids of the parameters it changed in place."""
        args = self.args
        batches = self._calibration_batches()
        fit, held = batches[: args.reconstruct_batches], batches[args.reconstruct_batches :]
        if args.selection_batches and not held:
            logger.warning(
                "hf_gradprune: no training batch is left after the %d reconstruction batches to check the "
                "reconstruction on: it is kept unchecked (lower reconstruct_batches)",
                args.reconstruct_batches,
            )
        unwrapped = self.accelerator.unwrap_model(self.model)
        snapshot = ProjectionSnapshot(unwrapped) if held else None
        before = held_out_loss(unwrapped, held, None) if held else None
        report = reconstruct(self.model, reference, fit, bias_compensation=args.bias_compensation)
        distributed = self.accelerator.num_processes > 1
        if distributed:
            # Each process calibrated on its own shard of the data, so scales (and which sub-layers were
            # skipped) differ: every process takes the main process's report and, below, its weights, so all
            # keep one model (DDP would also sync the weights from rank 0 when it re-wraps the model).
            import torch.distributed as dist

            shared = [report]
            dist.broadcast_object_list(shared, src=0)
            report = shared[0]
        state = pruning_state(self.accelerator.unwrap_model(self.model))
        changed = []
        for r in report.sublayers:
            if r.skipped:
                continue
            layer = state.layers[r.layer]
            proj = state.adapter.attention_output(layer) if r.kind == HEAD else state.adapter.ffn_output(layer)
            changed.append(proj.weight)
            if r.bias_compensated:
                changed.append(proj.bias)
        if distributed:
            for p in changed:  # the same list on every process: it follows the main process's report
                dist.broadcast(p.data, src=0)
        selection = None
        if held:
            # the rule prune_oneshot's default chooses by: kept only when it lowers the held-out loss (averaged
            # over the processes, so that all of them decide alike)
            after = held_out_loss(unwrapped, held, None)
            losses = torch.tensor([before, after], dtype=torch.float64, device=self.args.device)
            if distributed:
                losses = self.accelerator.reduce(losses, reduction="mean")
            before, after = (float(v) for v in losses)
            kept = improves(before, after)
            if not kept:
                snapshot.restore()
                changed = []
            selection = {
                "held_out_batches": len(held),
                "loss_before": before,
                "loss_after": after,
                "kept": kept,
                "forwards": 2 * len(held),
            }
            logger.info(
                "hf_gradprune round %d: reconstruction %s (held-out loss %.4g -> %.4g on %d batches)",
                self._rounds_done,
                "kept" if kept else "undone",
                before,
                after,
                len(held),
            )
        logger.info(
            "hf_gradprune round %d: reconstruction on %d tokens in %.1f s, error summed over sub-layers %.4g -> "
            "%.4g, %d of %d sub-layers skipped",
            self._rounds_done,
            report.tokens,
            report.seconds,
            report.error_before,
            report.error_after,
            len(report.skipped),
            len(report.sublayers),
        )
        self.reconstruction_reports.append(
            {"round": self._rounds_done, "step": self.state.global_step, **report.to_dict(), "selection": selection}
        )
        return report, {id(p) for p in changed}

    def _rebuild_optimizer(self, fresh: set[int] = frozenset()) -> None:
        """New optimizer and scheduler for the pruned parameters; AdamW moments are kept for every parameter
        the prune left as it was, except those whose id is in ``fresh`` (changed in place)."""
        old_opt, old_sched = self.optimizer, self.lr_scheduler
        old_inner = getattr(old_opt, "optimizer", old_opt)
        self.optimizer = None
        self.create_optimizer()
        new_inner = self.optimizer
        for group in new_inner.param_groups:
            for p in group["params"]:
                # Untouched parameter: same tensor object, keep its moments. Projections that reconstruction
                # rescaled in place are the same objects, but start fresh like the sliced ones: their moments
                # were gathered for weights up to max_scale times different, and the first steps would
                # follow that stale direction (one-shot prunes slice every projection they rescale anyway).
                if p in old_inner.state and id(p) not in fresh:
                    new_inner.state[p] = old_inner.state[p]
        forget_prepared(self.accelerator, old_opt)
        self.optimizer = self.accelerator.prepare_optimizer(self.optimizer)
        self.lr_scheduler = None
        self.create_scheduler(num_training_steps=self.state.max_steps, optimizer=self.optimizer)
        if old_sched is not None:
            self.lr_scheduler.load_state_dict(old_sched.state_dict())
            for group, lr in zip(self.optimizer.param_groups, old_sched.get_last_lr()):
                group["lr"] = lr
        self.callback_handler.optimizer = self.optimizer
        self.callback_handler.lr_scheduler = self.lr_scheduler

    def _rewrap(self) -> None:
        old = self.model_wrapped
        forget_prepared(self.accelerator, old)
        self.model_wrapped = self.accelerator.prepare_model(self.model)
        self._rewrapped = True

    def _report_round(self, scores: Scores, plan: PruningPlan, report: ReconstructionReport | None = None) -> None:
        args, dense = self.args, self.dense_plan
        seq = args.flops_seq_len
        params = sum(p.numel() for p in self.model.parameters())
        logs = {
            "prune/round": self._rounds_done,
            "prune/heads_kept": plan.num_heads,
            "prune/heads_total": dense.num_heads,
            "prune/neurons_kept": plan.num_neurons,
            "prune/neurons_total": dense.num_neurons,
            "prune/params": params,
            "prune/params_dense": self.dense_params,
            "prune/block_flops": plan.block_flops(seq),
            "prune/block_flops_dense": dense.block_flops(seq),
            "prune/examples_scored": scores.num_examples,
        }
        if report is not None:
            logs.update(
                {
                    "prune/reconstruct_tokens": report.tokens,
                    "prune/reconstruct_seconds": round(report.seconds, 3),
                    "prune/reconstruct_error_before": report.error_before,
                    "prune/reconstruct_error_after": report.error_after,
                    "prune/reconstruct_skipped": len(report.skipped),
                }
            )
        if self.state.global_step == 0 and not self.is_in_train:
            self._pending_logs.append(logs)
        else:
            self.log(logs)
        if args.should_save:
            folder = os.path.join(
                args.output_dir, "pruning", f"round-{self._rounds_done}-step-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            scores.save(os.path.join(folder, "scores.safetensors"))
            plan.to_json(os.path.join(folder, "plan.json"))
            with open(os.path.join(folder, "summary.txt"), "w") as f:
                f.write(plan.summary(seq) + "\n")
                if report is not None:
                    f.write("\nLayer-wise reconstruction (error: mean squared, residual stream vs before the prune)\n")
                    f.write(report.summary() + "\n")
            if report is not None:
                with open(os.path.join(folder, "reconstruction.json"), "w") as f:
                    json.dump(self.reconstruction_reports[-1], f, indent=2)
        logger.info(
            "hf_gradprune round %d at step %d:\n%s", self._rounds_done, self.state.global_step, plan.summary(seq)
        )

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self._compute_loss(model, inputs, num_items_in_batch)
        if self._divide_loss_here:  # a per-micro-batch mean that this release's Trainer would not divide
            loss = loss / self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    def _compute_loss(self, model, inputs, num_items_in_batch):
        """The task loss, or with a teacher the distillation mix; and the outputs."""
        if not (self.distilling and model.training):
            return super().compute_loss(model, inputs, True, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad(), self.accelerator.autocast():
            teacher_logits = self.teacher(**teacher_inputs).logits
        student_logits = outputs["logits"] if isinstance(outputs, dict) else outputs[1]
        kd = distillation_loss(
            student_logits, teacher_logits, self.args.distill_temperature, inputs.get("attention_mask")
        )
        alpha = self.args.effective_distill_alpha
        self._distill_sum += kd.detach().float().item()
        self._distill_count += 1
        return (1 - alpha) * loss + alpha * kd, outputs

    def _freeze(self, model):
        teacher = copy.deepcopy(self.accelerator.unwrap_model(model) if hasattr(self, "accelerator") else model)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher.to(self.args.device)

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._distill_count and "loss" in logs:
            logs["distill_loss"] = round(self._distill_sum / self._distill_count, 6)
            self._distill_sum, self._distill_count = 0.0, 0
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------ save / resume
    @property
    def is_pruned(self) -> bool:
        """Whether the model carries a pruning record (pruned in this run, or given already pruned)."""
        return bool(getattr(self.model.config, CONFIG_KEY, None))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self._sparsity is not None:
            self._sparsity.record()  # config.gradprune["weight_sparsity"], once a mask was taken
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if _internal_call:
            self._save_state(output_dir)
        elif self.args.should_save and self.is_pruned:  # an unpruned model is a plain one: no pruning card
            write_model_card(self, output_dir)

    def create_model_card(self, *args, **kwargs) -> None:
        # push_to_hub() calls this before uploading output_dir: write our card instead of the generic one.
        if not self.is_pruned:
            super().create_model_card(*args, **kwargs)
        elif self.is_world_process_zero():
            write_model_card(self, self.args.output_dir)

    def _save_state(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        if self.args.should_save:
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump({"rounds_done": self._rounds_done}, f)
        state = self._scorer.state_dict() if self._scorer is not None else None
        if state and (state["num_examples"] or state["skipped_batches"]):
            torch.save(state, os.path.join(folder, SCORER_FILE.format(rank=self.args.process_index)))
        if self._sparsity is not None:
            self._sparsity.save(folder)

    def _restore(self, checkpoint: str) -> None:
        """Rebuild the checkpoint's pruned shapes (before Trainer loads its weights) and the schedule."""
        with open(os.path.join(checkpoint, "config.json")) as f:
            record = json.load(f).get(CONFIG_KEY)
        state_path = os.path.join(checkpoint, STATE_FILE)
        rounds_done = 0
        if os.path.exists(state_path):
            with open(state_path) as f:
                rounds_done = json.load(f)["rounds_done"]
        history = list(record.get("history", [])) if record else []
        if rounds_done:
            # The model given stands for the one the run started from: it is the teacher (a prune at step 0
            # saves none) and the model card's "before". Its record must be the checkpoint's, less this run's.
            started = history[: len(history) - rounds_done]
            given = (getattr(unwrap_model(self.model).config, CONFIG_KEY, None) or {}).get("history", [])
            if json.loads(json.dumps(given)) != started:
                raise ValueError(
                    f"resuming from {checkpoint}: its run pruned {rounds_done} time(s), starting from a model with "
                    f"{len(started)} prune(s) recorded, but the model given has {len(given)}. Pass the model the "
                    "run started from (the checkpoint's weights are loaded over it): its pruning record, its "
                    "teacher and its model card start there"
                )
        teacher = None
        changed = rounds_done or updates_in(checkpoint)
        if changed and self.teacher is None and self.args.effective_distill_alpha > 0:
            teacher_dir = os.path.join(self.args.output_dir, TEACHER_DIR)
            if os.path.isdir(teacher_dir):
                from ..folders.hub import load_pruned

                teacher = self._freeze(load_pruned(teacher_dir))
            else:  # the first change was before training: the model given is the one the run started from
                teacher = self._freeze(self.model)
        if record and "plan" in record:  # a record of weight sparsity alone has no shapes to restore
            target = PruningPlan.from_dict({"geometry": record["geometry"], **record["plan"]})
            prune_model(self.model, target)  # checks everything before it cuts
            # prune_model recorded this restore as a prune of its own (a plan without meta); the checkpoint's
            # history is the run's real record (method, targets, round, step...), and the model card's source.
            getattr(unwrap_model(self.model).config, CONFIG_KEY)["history"] = history
        if teacher is not None:
            self.teacher = teacher
        self._rounds_done = rounds_done
        partial = os.path.join(checkpoint, SCORER_FILE.format(rank=self.args.process_index))
        if os.path.exists(partial):
            scorer = self._new_scorer()
            scorer.load_state_dict(torch.load(partial, weights_only=True))
            self._scorer = scorer
        if self._sparsity is not None:  # after the shapes: the masks cover the pruned model's weights
            self._sparsity.restore(checkpoint)
