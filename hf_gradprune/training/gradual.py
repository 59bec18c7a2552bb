"""Gradual weight sparsity inside ``GradPruneTrainer`` (``GradPruneConfig.weight_sparsity`` / ``sparsity_pattern``).

The config's ``sparsity_schedule`` gives the mask updates: every ``sparsity_update_steps`` optimizer steps on Zhu &
Gupta's cubic ramp, the last at ``sparsity_end_step`` with the final sparsity. Each update runs at the start of its
step (as a unit round does): the ``WeightScorer`` attached for up to ``scoring_steps`` micro-batches since the last
update (none for ``magnitude``) is summed over the processes, masks are taken from its scores, applied to the
weights, and the optimizer moments of the pruned weights are zeroed. A pruned weight stays pruned: its score is set
below every other (it is 0 already: every method multiplies by ``|W|``), so the masks only grow and the last one
holds exactly the target count. Between updates the pruned weights' gradients are zeroed after every backward
(before clipping, so the clipped norm is the live weights'), and after every optimizer step the masks are applied
and the moments zeroed again (a ``TrainerCallback``), so nothing revives them. Under DDP the main process's masks
are broadcast, so every process holds the same ones. A checkpoint keeps the masks, the updates done and each
process's partial scores (``sparsity_state.pt``, ``sparsity_scorer_rank{r}.pt``).
"""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from ..sparsity import (
    WeightMasks,
    WeightScorer,
    check_targets,
    matrix_sparsity,
    parse_pattern,
    record_weight_sparsity,
    weight_targets,
)
from ..surgery import current_plan
from .accelerate_compat import forget_prepared

logger = logging.get_logger(__name__)

SPARSITY_STATE_FILE = "gradprune_sparsity.pt"
SPARSITY_SCORER_FILE = "gradprune_sparsity_scorer_rank{rank}.pt"  # each process's partial sums
PRUNED_SCORE = -1.0  # below every score (all are >= 0): a pruned weight is pruned again first


def cycle_batches(loader, n: int):
    """The first ``n`` batches of ``loader``, read again from its start (a new shuffle) as often as needed."""
    given = 0
    while given < n:
        before = given
        for batch in loader:
            if given >= n:
                return
            yield batch
            given += 1
        if given == before:
            raise ValueError("the training data loader gives no batches to score the model on: check train_dataset")


class GradualSparsity:
    """The gradual weight sparsity state of one ``GradPruneTrainer``: the masks, the scorer, the updates done."""

    def __init__(self, trainer):
        self.trainer = trainer
        args = trainer.args
        self.pattern = parse_pattern(args.sparsity_pattern)
        self.method = args.weight_method
        self.masks: WeightMasks | None = None
        self.scorer: WeightScorer | None = None  # hooked: the current micro-batch's contribution
        self.totals: WeightScorer | None = None  # never hooked: the committed sums since the last update
        self.skipped = 0  # micro-batches whose scores overflowed (fp16), left out
        self.updates_done = 0
        self.sparsity = 0.0  # the target of the latest update
        self.check()

    # ------------------------------------------------------------------ checks
    def targets(self):
        return weight_targets(self.trainer.model, self.trainer.args.sparsity_extra_modules)

    def check(self) -> None:
        """Refuse, before training, targets the pattern cannot hold (now, and after the unit prune of a hybrid)."""
        args = self.trainer.args
        args.check_gradual_method()
        check_targets(self.targets(), self.pattern)  # extra module names, N:M widths
        if self.pattern.is_nm and args.prunes_units:
            head_dim = current_plan(self.trainer.model).geometry.head_dim
            if head_dim % self.pattern.m:
                raise ValueError(
                    f"sparsity_pattern {self.pattern.name} groups {self.pattern.m} consecutive inputs, but a head is "
                    f"{head_dim} wide, so the attention output's width after removing heads cannot be split so: use "
                    "'unstructured', or prune FFN neurons only (ffn_sparsity)"
                )

    # ------------------------------------------------------------------ schedule
    def next_update(self, max_steps: int):
        schedule = self.trainer.args.sparsity_schedule(max_steps)
        return schedule[self.updates_done] if self.updates_done < len(schedule) else None

    def _floor(self, max_steps: int) -> int:
        """The step from which the next update's scores may be read: the ramp's start or the previous update (the
        unit rounds all come at or before the start, so the scored weights keep their shapes)."""
        schedule = self.trainer.args.sparsity_schedule(max_steps)
        start = self.trainer.args.sparsity_range(max_steps)[0]
        return schedule[self.updates_done - 1][0] if self.updates_done else start

    def before_micro_batch(self, step: int, micro: int) -> None:
        """Update the masks at the first micro-batch of an update's step; attach the scorer for the micro-batches
        of the window before the next update."""
        trainer, args = self.trainer, self.trainer.args
        max_steps = trainer.state.max_steps
        upcoming = self.next_update(max_steps)
        if upcoming is not None and micro == 0 and upcoming[0] == step and step > 0:
            self.update(upcoming[1])
            upcoming = self.next_update(max_steps)
        if upcoming is None or self.method == "magnitude":
            return
        bpe = trainer._batches_per_epoch
        now = args.micro_batches_before(step, bpe) + micro
        end = args.micro_batches_before(upcoming[0], bpe)
        begin = max(end - args.scoring_steps, args.micro_batches_before(self._floor(max_steps), bpe))
        if begin <= now < end:
            if self.scorer is None:
                self.scorer = WeightScorer(trainer.model, self.method, self.targets())
            self.scorer.attach()  # detached again after this micro-batch: evaluation passes are not scored

    def after_micro_batch(self) -> None:
        """Zero the pruned weights' gradients (before clipping and the step); commit the micro-batch's scores."""
        if self.masks is not None:
            self.masks.zero_grads_(self.trainer.model)
        self.commit()

    @torch.no_grad()
    def commit(self) -> None:
        """Add the hooked scorer's micro-batch into the totals, unless it overflowed (an fp16 step the GradScaler
        skips), with the GradScaler's factor taken out (it changes during a run); then unhook it."""
        s = self.scorer
        if s is None:
            return
        s.detach()
        stats = [*s.sq_norms.values(), *s.grad_stats.values()]
        if not stats:
            return
        if not bool(torch.stack([torch.isfinite(v).all() for v in stats]).all()):
            self.skipped += 1
        else:
            if self.totals is None:
                self.totals = WeightScorer(self.trainer.model, self.method, s.targets)
            scale = self.trainer._grad_scaler_scale()
            factor = 1.0 / scale if self.method == "taylor" else 1.0 / scale**2  # fisher: squared gradients
            for name, v in s.sq_norms.items():
                held = self.totals.sq_norms
                held[name] = held[name] + v if name in held else v.clone()
            for name, v in s.grad_stats.items():
                held, v = self.totals.grad_stats, v * factor if scale != 1.0 else v
                held[name] = held[name] + v if name in held else v.clone()
            self.totals.batches += s.batches
        s.reset()

    def before_training(self, max_steps: int) -> None:
        """An update at step 0 (a ramp that starts and ends there) runs before training."""
        upcoming = self.next_update(max_steps)
        if upcoming is not None and upcoming[0] == 0:
            self.update(upcoming[1])

    # ------------------------------------------------------------------ masks
    def _has_scores(self) -> bool:
        s = self.totals
        return s is not None and bool(s.sq_norms if self.method == "wanda" else s.grad_stats)

    def _score_now(self) -> WeightScorer:
        """Score the model as it is on ``scoring_steps`` training batches without updating it (eval mode): for an
        update no training batch came before (at step 0, or right after the unit prune at the same step)."""
        self.totals = None
        trainer = self.trainer
        model = trainer.model
        was_training = model.training
        model.eval()
        self.scorer = WeightScorer(model, self.method, self.targets())
        loader = trainer.get_train_dataloader()
        for inputs in cycle_batches(loader, trainer.args.scoring_steps):
            inputs = trainer._prepare_inputs(inputs)
            self.scorer.attach()
            if self.method == "wanda":  # inputs only
                with torch.no_grad():
                    trainer.compute_loss(model, inputs)
            else:
                with trainer.compute_loss_context_manager():
                    loss = trainer.compute_loss(model, inputs)
                trainer.accelerator.backward(loss)
                model.zero_grad(set_to_none=True)
            self.commit()
        forget_prepared(trainer.accelerator, loader)  # a one-off pass: the training loop prepares its own loader
        model.train(was_training)
        if not self._has_scores():
            raise ValueError(
                f"every one of the {trainer.args.scoring_steps} batches scored for the weight masks overflowed "
                "(NaN or inf gradients): raise scoring_steps, or train in bf16 / fp32"
            )
        return self.totals

    def update(self, sparsity: float) -> None:
        trainer, args = self.trainer, self.trainer.args
        self.commit()  # unhooked before the teacher is copied: its modules must not carry the scorer's hooks
        trainer._take_teacher()  # the dense model, before its first weight goes
        if self.method == "magnitude":
            scorer = WeightScorer(trainer.model, "magnitude", self.targets())
        else:
            distributed = trainer.accelerator.num_processes > 1
            has = self._has_scores()
            if distributed:  # one process without scores (all its batches overflowed): every process scores anew
                flag = torch.tensor([float(has)], device=trainer.args.device)
                has = bool(
                    trainer.accelerator.reduce(flag, reduction="sum").item() == trainer.accelerator.num_processes
                )
            scorer = self.totals if has else self._score_now()
            if distributed:
                scorer.reduce_(lambda t: trainer.accelerator.reduce(t, reduction="sum"))
        with torch.no_grad():
            scores = scorer.scores()
            if self.masks is not None:  # a pruned weight stays pruned
                for t in scorer.targets:
                    keep = self.masks.masks[t.param_name].to(scores[t.name].device)
                    keep = keep if t.in_axis == 1 else keep.t()
                    low = torch.full_like(scores[t.name], PRUNED_SCORE)
                    scores[t.name] = torch.where(keep, scores[t.name], low)
        masks = WeightMasks.from_scores(scorer.targets, scores, sparsity, self.pattern, args.sparsity_scope)
        if trainer.accelerator.num_processes > 1:
            masks = _broadcast(masks)
        self.masks = masks
        self.scorer = self.totals = None
        self.updates_done += 1
        self.sparsity = sparsity
        self.enforce()
        logs = {
            "sparsity/update": self.updates_done,
            "sparsity/target": round(sparsity, 6),
            "sparsity/weights": round(masks.sparsity, 6),
        }
        if self.skipped:
            logs["sparsity/skipped_batches"] = self.skipped
            self.skipped = 0
        if trainer.state.global_step == 0 and not trainer.is_in_train:
            trainer._pending_logs.append(logs)
        else:
            trainer.log(logs)

    @torch.no_grad()
    def enforce(self) -> None:
        """Zero the pruned weights and their optimizer moments."""
        if self.masks is None:
            return
        model, optimizer = self.trainer.model, self.trainer.optimizer
        self.masks.apply_(model)
        if optimizer is not None:
            self.masks.zero_optimizer_state_(model, getattr(optimizer, "optimizer", optimizer))

    # ------------------------------------------------------------------ results
    def record(self) -> dict | None:
        """Write the weight sparsity into the model's config (``config.gradprune["weight_sparsity"]``)."""
        if not self.updates_done:
            return None
        args = self.trainer.args
        return record_weight_sparsity(
            self.trainer.model,
            self.targets(),
            pattern=self.pattern,
            sparsity=self.sparsity,
            method=self.method,
            scope=args.sparsity_scope,
        )

    def achieved(self) -> dict:
        """What the weights say: the fraction of exact zeros over the targets, and per matrix."""
        return matrix_sparsity(self.targets())

    # ------------------------------------------------------------------ checkpoints
    def save(self, folder: str) -> None:
        args = self.trainer.args
        if args.should_save:  # the masks are the same on every process
            state = {
                "updates_done": self.updates_done,
                "sparsity": self.sparsity,
                "masks": self.masks.state_dict() if self.masks is not None else {},
            }
            _save_atomic(state, os.path.join(folder, SPARSITY_STATE_FILE))
        if self._has_scores():
            path = os.path.join(folder, SPARSITY_SCORER_FILE.format(rank=args.process_index))
            _save_atomic(self.totals.state_dict(), path)

    def restore(self, folder: str) -> None:
        path = os.path.join(folder, SPARSITY_STATE_FILE)
        if not os.path.exists(path):
            return
        state = torch.load(path, weights_only=True)
        self.updates_done, self.sparsity = int(state["updates_done"]), float(state["sparsity"])
        if state["masks"]:
            device = {t.param_name: t.module.weight.device for t in self.targets()}
            missing = sorted(set(state["masks"]) - set(device))
            if missing:
                raise ValueError(
                    f"resuming from {folder}: its sparsity masks cover {missing[0]}, which this model lacks"
                )
            self.masks = WeightMasks({n: m.to(device[n]) for n, m in state["masks"].items()})
            self.enforce()
        partial = os.path.join(folder, SPARSITY_SCORER_FILE.format(rank=self.trainer.args.process_index))
        if os.path.exists(partial):
            totals = WeightScorer(self.trainer.model, self.method, self.targets())
            totals.load_state_dict(torch.load(partial, weights_only=True))
            self.totals = totals


def updates_in(checkpoint: str) -> int:
    """How many mask updates a checkpoint's run had done (0 without a sparsity state)."""
    path = os.path.join(checkpoint, SPARSITY_STATE_FILE)
    return int(torch.load(path, weights_only=True)["updates_done"]) if os.path.exists(path) else 0


class SparsityCallback(TrainerCallback):
    """After every optimizer step: the pruned weights back to zero, their moments too."""

    def __init__(self, sparsity: GradualSparsity):
        self.sparsity = sparsity

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.sparsity.enforce()


def _broadcast(masks: WeightMasks) -> WeightMasks:
    """The main process's masks on every process (bools travel as uint8: gloo has no bool)."""
    import torch.distributed as dist

    out = {}
    for name, mask in masks.masks.items():
        data = mask.to(torch.uint8).contiguous()
        dist.broadcast(data, src=0)
        out[name] = data.bool()
    return WeightMasks(out)


def _save_atomic(obj, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)
