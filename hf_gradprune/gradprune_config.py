"""``GradPruneConfig``: ``TrainingArguments`` plus what to prune, when, and how to recover."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .scores import METHODS


@dataclass
class GradPruneConfig(TrainingArguments):
    """Training arguments for [`GradPruneTrainer`].

    Give one target: ``head_sparsity`` and/or ``ffn_sparsity``, or one of ``flops_budget`` /
    ``params_budget``; all are fractions of the original model. The schedule is one-shot (a single
    prune at ``prune_step``) or iterative (``num_rounds`` prunes between ``prune_start_step`` and
    ``prune_end_step`` on a cubic sparsity ramp, Zhu & Gupta 2017), each preceded by ``scoring_steps``
    training batches during which importance is accumulated.
    """

    importance: str = field(default="taylor", metadata={"help": f"Importance method: {' | '.join(METHODS)}."})
    head_sparsity: float | None = field(
        default=None, metadata={"help": "Fraction of the original attention heads to remove, in [0, 1)."}
    )
    ffn_sparsity: float | None = field(
        default=None, metadata={"help": "Fraction of the original FFN neurons to remove, in [0, 1)."}
    )
    flops_budget: float | None = field(
        default=None,
        metadata={"help": "Fraction of the transformer blocks' FLOPs to remove; heads and neurons compete per FLOP."},
    )
    params_budget: float | None = field(
        default=None,
        metadata={"help": "Fraction of the transformer blocks' parameters to remove; units compete per parameter."},
    )
    ranking: str = field(
        default="global", metadata={"help": "global (compare units across layers) | per_layer (same cut per layer)."}
    )
    normalize_head_scores: bool = field(
        default=False, metadata={"help": "Divide each layer's head scores by their L2 norm (Michel et al. 2019)."}
    )
    min_heads_per_layer: int = field(
        default=0, metadata={"help": "Heads every layer keeps; 0 lets a layer lose all of its heads."}
    )
    ffn_multiple_of: int = field(
        default=1, metadata={"help": "Round each layer's kept FFN width to a multiple of this (e.g. 8 or 64)."}
    )
    flops_seq_len: int = field(
        default=128, metadata={"help": "Sequence length at which FLOPs are counted for flops_budget and reports."}
    )
    scoring_steps: int = field(
        default=32,
        metadata={"help": "Training batches (forward+backward passes) over which importance is accumulated per round."},
    )
    pruning_schedule: str = field(
        default="one_shot",
        metadata={
            "help": "one_shot (prune once at prune_step) | iterative (num_rounds prunes) | none (no pruning: "
            "recover an already pruned model, distilling from teacher_model when given)."
        },
    )
    prune_step: int = field(
        default=0,
        metadata={
            "help": "one_shot: optimizer step at which to prune. 0 scores the model as given on scoring_steps "
            "batches before training starts (no updates), then prunes and trains to recover."
        },
    )
    num_rounds: int = field(default=3, metadata={"help": "iterative: number of pruning rounds."})
    prune_start_step: int = field(default=0, metadata={"help": "iterative: optimizer step of the first round."})
    prune_end_step: int | None = field(
        default=None,
        metadata={
            "help": "iterative: optimizer step of the last round (reaching the full target). "
            "Default: half of max steps."
        },
    )
    distill_alpha: float | None = field(
        default=None,
        metadata={
            "help": "Weight of distillation from the unpruned model: loss = (1-a)*task + a*T^2*KL. Default 0.5 "
            "(on) when pruning during fine-tuning; 0 turns it off."
        },
    )
    distill_temperature: float = field(default=2.0, metadata={"help": "Distillation temperature T."})
    evaluate_after_prune: bool = field(
        default=False,
        metadata={"help": "Evaluate right after each prune, before recovery (metrics prefixed 'pruned')."},
    )
    model_card_dataset: str | None = field(default=None, metadata={"help": "Dataset name written in the model card."})
    model_card_task: str | None = field(default=None, metadata={"help": "Task name written in the model card."})

    def __post_init__(self):
        super().__post_init__()
        self._validate_pruning()

    def _validate_pruning(self) -> None:
        def fail(msg):
            raise ValueError(f"GradPruneConfig: {msg}")

        if self.importance not in METHODS:
            fail(f"importance must be one of {', '.join(METHODS)}, not {self.importance!r}")
        targets = {k: getattr(self, k) for k in ("head_sparsity", "ffn_sparsity", "flops_budget", "params_budget")}
        for name, value in targets.items():
            if value is not None and not 0.0 <= value < 1.0:
                fail(f"{name} must be a fraction in [0, 1), got {value}")
        given = [k for k, v in targets.items() if v is not None]
        if self.pruning_schedule == "none":
            if given:
                fail(f"pruning_schedule='none' prunes nothing; drop {', '.join(given)} or choose a schedule")
        elif not given:
            fail("give a target: head_sparsity and/or ffn_sparsity, or flops_budget, or params_budget")
        budgets = [k for k in given if k.endswith("budget")]
        if budgets and len(given) > 1:
            fail(f"{budgets[0]} cannot be combined with {', '.join(k for k in given if k != budgets[0])}")
        if self.ranking not in ("global", "per_layer"):
            fail(f"ranking must be 'global' or 'per_layer', not {self.ranking!r}")
        if self.min_heads_per_layer < 0 or self.ffn_multiple_of < 1:
            fail("min_heads_per_layer must be >= 0 and ffn_multiple_of >= 1")
        if self.scoring_steps < 1 and self.importance in ("taylor", "fisher"):
            fail("scoring_steps must be >= 1 for gradient-based importance")
        if self.pruning_schedule not in ("one_shot", "iterative", "none"):
            fail(f"pruning_schedule must be 'one_shot', 'iterative' or 'none', not {self.pruning_schedule!r}")
        if self.pruning_schedule == "one_shot" and self.prune_step < 0:
            fail("prune_step must be >= 0")
        if self.pruning_schedule == "iterative":
            if self.num_rounds < 1:
                fail("num_rounds must be >= 1")
            end = self.prune_end_step
            if self.prune_start_step < 0 or (end is not None and end < self.prune_start_step):
                fail("need 0 <= prune_start_step <= prune_end_step")
            if end is not None and self.max_steps > 0 and end > self.max_steps:
                fail(f"prune_end_step ({end}) is after max_steps ({self.max_steps})")
        if self.pruning_schedule == "one_shot" and self.max_steps > 0 and self.prune_step > self.max_steps:
            fail(f"prune_step ({self.prune_step}) is after max_steps ({self.max_steps})")
        if self.distill_alpha is not None and not 0.0 <= self.distill_alpha <= 1.0:
            fail(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.distill_temperature <= 0:
            fail("distill_temperature must be > 0")

    @property
    def effective_distill_alpha(self) -> float:
        return 0.5 if self.distill_alpha is None else self.distill_alpha

    def plan_targets(self, fraction: float = 1.0) -> dict:
        """The plan keyword arguments at ``fraction`` of the final target (for iterative rounds)."""
        out = {}
        for name in ("head_sparsity", "ffn_sparsity", "flops_budget", "params_budget"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value * fraction
        return out

    def round_schedule(self, max_steps: int) -> list[tuple[int, float]]:
        """``[(optimizer step, fraction of the final target)]`` for every round."""
        if self.pruning_schedule == "none":
            return []
        if self.pruning_schedule == "one_shot":
            return [(self.prune_step, 1.0)]
        start = self.prune_start_step
        end = self.prune_end_step if self.prune_end_step is not None else max(start, max_steps // 2)
        n = self.num_rounds
        steps = [start] if n == 1 else [start + round(r * (end - start) / (n - 1)) for r in range(n)]
        # Zhu & Gupta's cubic ramp from 0 to the target, sampled at rounds 1..n.
        return [(step, 1.0 - (1.0 - (r + 1) / n) ** 3) for r, step in enumerate(steps)]
