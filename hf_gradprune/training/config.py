"""``GradPruneConfig``: ``TrainingArguments`` plus what to prune, when, and how to recover.

One module of about 600 lines because it is one dataclass: its fields, their checks and the schedules they give
are read together, and the checks of one field refer to the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..planning.plan import (
    BUDGET_NAMES,
    DEFAULT_FFN_MULTIPLE_OF,
    TARGET_NAMES,
    PlanError,
    validate_options,
    validate_targets,
)
from ..scoring.scores import GRADIENT_METHODS, METHODS
from ..sparsity import check_scope, check_sparsity, check_weight_method, parse_pattern
from ..sparsity.weight_scores import HOOKED_METHODS


@dataclass
class GradPruneConfig(TrainingArguments):
    """Training arguments for [`GradPruneTrainer`].

    Give one target: ``head_sparsity`` and/or ``ffn_sparsity``, or one of ``flops_budget`` /
    ``params_budget`` / ``latency_budget``; all are fractions of the original model. The schedule is one-shot (a single
    prune at ``prune_step``) or iterative (``num_rounds`` prunes between ``prune_start_step`` and
    ``prune_end_step`` on a cubic sparsity ramp, Zhu & Gupta 2017), each preceded by ``scoring_steps``
    training batches during which importance is accumulated (at step 0, before training, the training set
    is read as many times as that takes). A schedule that cannot run in full (a round after the last step,
    too few batches between rounds to score) is an error, here when ``max_steps`` is given, else at
    the start of ``GradPruneTrainer.train``. With ``reconstruct``, every prune is followed, before
    recovery, by layer-wise least-squares reconstruction against the model just before that prune, on
    ``reconstruct_batches`` training batches.

    Weight sparsity (``weight_sparsity``, or an N:M ``sparsity_pattern``) zeroes single weights of the blocks'
    linear layers on Zhu & Gupta's cubic ramp from ``sparsity_start_step`` to ``sparsity_end_step``, the masks
    re-taken every ``sparsity_update_steps`` steps from ``weight_method`` scores (accumulated over up to
    ``scoring_steps`` batches before each update). It can follow a unit prune in the same run (hybrid): the unit
    rounds must end at or before the sparsity schedule starts.
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
    latency_budget: float | None = field(
        default=None,
        metadata={
            "help": "Fraction of the dense model's forward latency to remove, as a latency table predicts it (at "
            "its batch x sequence, on its machine): give latency_table, or latency_table_batch_size and "
            "latency_table_seq_len to measure one (cached) on the model when the trainer is built."
        },
    )
    latency_table: str | None = field(
        default=None,
        metadata={
            "help": "latency_budget: path of a latency table JSON (hf_gradprune.deploy.latency.LatencyTable.save)."
        },
    )
    latency_table_batch_size: int | None = field(
        default=None,
        metadata={"help": "latency_budget: batch size the latency table is (or was) measured at."},
    )
    latency_table_seq_len: int | None = field(
        default=None,
        metadata={"help": "latency_budget: sequence length the latency table is (or was) measured at."},
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
    min_ffn_per_layer: float = field(
        default=0.0,
        metadata={
            "help": "Fraction in [0, 1) of each layer's original FFN width that every layer keeps at least (rounded "
            "up to a multiple of ffn_multiple_of; a layer already narrower keeps all it has), so that global "
            "ranking under a budget cannot empty the last FFNs; 0 turns the floor off."
        },
    )
    ffn_multiple_of: int = field(
        default=DEFAULT_FFN_MULTIPLE_OF,
        metadata={
            "help": f"Keep each layer's FFN width a multiple of this (default {DEFAULT_FFN_MULTIPLE_OF}: odd widths "
            "can run slower than dense on a GPU) or the layer's live width: rounded to the nearest, then fixed up so "
            "the target is still met (never less removed than asked). 1: no rounding."
        },
    )
    attention_unit: str = field(
        default="head",
        metadata={
            "help": "Grouped-query attention (Llama family): head (query heads within their key/value groups; "
            "every group of a layer keeps as many) | kv_group (a key/value head with all its query heads)."
        },
    )
    budget_split: str | None = field(
        default=None,
        metadata={
            "help": "How flops_budget / params_budget is split between heads and neurons: normalized (the default: "
            "each kind's scores divided by its mean score per unit cost, so scores of any scale split sensibly) | "
            "ratio (raw score per unit cost; Taylor then removes nearly every head). prune_oneshot can also search "
            "the split on calibration data."
        },
    )
    uniform: bool = field(
        default=False,
        metadata={
            "help": "Keep the same number of heads per key/value group, key/value heads and FFN neurons in every "
            "layer (which ones follow the scores): a Llama-family model then saves as a stock checkpoint."
        },
    )
    balanced: bool = field(
        default=False,
        metadata={
            "help": "Keep the same number of heads in every layer (chosen by the target) but FFN widths by score, "
            "each rounded to the nearest multiple of ffn_multiple_of and then fixed up so the target is still met."
        },
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
    # The three steps below take a float below 1 as a fraction of the run's optimizer steps (rounded up), as
    # transformers' warmup_steps does: a schedule so written scales with the number of processes, the batch
    # size and the epochs, so one recipe fits any launch.
    prune_step: float = field(
        default=0,
        metadata={
            "help": "one_shot: optimizer step at which to prune (a float below 1: that fraction of the run's steps). "
            "0 scores the model as given on scoring_steps batches before training starts (no updates; a shorter "
            "training set is read again), then prunes and trains to recover."
        },
    )
    num_rounds: int = field(default=3, metadata={"help": "iterative: number of pruning rounds."})
    prune_start_step: float = field(
        default=0,
        metadata={"help": "iterative: optimizer step of the first round (a float below 1: fraction of the run)."},
    )
    prune_end_step: float | None = field(
        default=None,
        metadata={
            "help": "iterative: optimizer step of the last round, reaching the full target (a float below 1: "
            "fraction of the run). Default: half of max steps."
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
    reconstruct: bool = field(
        default=False,
        metadata={
            "help": "After each prune, before recovery, rescale the kept units of every pruned layer by least "
            "squares so the pruned model reproduces the model before the prune on calibration batches from the "
            "training data (Kwon et al. 2022); no labels needed."
        },
    )
    reconstruct_batches: int = field(
        default=16,
        metadata={"help": "reconstruct: training batches used as calibration data (labels are ignored)."},
    )
    selection_batches: int = field(
        default=4,
        metadata={
            "help": "reconstruct: the training batches after the reconstruct_batches, held out: the reconstruction is "
            "kept only when it lowers their loss (as prune_oneshot's default chooses); 0 keeps it whatever it does."
        },
    )
    bias_compensation: bool = field(
        default=False,
        metadata={
            "help": "reconstruct: also move the removed units' mean contribution into the output projection's "
            "bias (FLAP, An et al. 2024). Measured to hurt more often than help; off by default."
        },
    )
    weight_sparsity: float | None = field(
        default=None,
        metadata={
            "help": "Fraction of the blocks' linear weights to zero, in [0, 1), reached gradually (cubic ramp). "
            "None: off, unless sparsity_pattern is N:M, which fixes it at (M-N)/M."
        },
    )
    sparsity_pattern: str = field(
        default="unstructured",
        metadata={"help": "unstructured | N:M (e.g. 2:4, 4:8: at most N nonzeros in every M consecutive inputs)."},
    )
    weight_method: str = field(
        default="taylor",
        metadata={
            "help": "Weight score: magnitude | wanda | taylor | fisher (sparsegpt is one-shot only: "
            "prune_weights_oneshot)."
        },
    )
    sparsity_scope: str = field(
        default="global",
        metadata={
            "help": "Unstructured masks compare scores across all matrices (global), within each (layer) or within "
            "each output row (row). Ignored for N:M."
        },
    )
    sparsity_start_step: float = field(
        default=0,
        metadata={"help": "Optimizer step where the sparsity ramp starts (a float below 1: fraction of the run)."},
    )
    sparsity_end_step: float | None = field(
        default=None,
        metadata={
            "help": "Optimizer step where the ramp reaches weight_sparsity (a float below 1: fraction of the run). "
            "Default: two thirds of the run, leaving a third to recover at the final sparsity."
        },
    )
    sparsity_update_steps: int = field(
        default=10,
        metadata={
            "help": "Optimizer steps between mask updates on the ramp (Zhu & Gupta's delta t); the last update "
            "is always at sparsity_end_step."
        },
    )
    sparsity_extra_modules: list[str] = field(
        default_factory=list,
        metadata={"help": "Modules outside the blocks whose weights are sparsified too (e.g. classifier)."},
    )
    model_card_dataset: str | None = field(default=None, metadata={"help": "Dataset name written in the model card."})
    model_card_task: str | None = field(default=None, metadata={"help": "Task name written in the model card."})

    def __post_init__(self):
        super().__post_init__()
        self._validate_pruning()
        if self.max_steps > 0:  # the run's length is known already: a schedule that cannot finish fails now
            self.check_schedule(self.max_steps)

    def _validate_pruning(self) -> None:
        if self.importance not in METHODS:
            _fail(f"importance must be one of {', '.join(METHODS)}, not {self.importance!r}")
        if self.pruning_schedule not in SCHEDULES:
            _fail(f"pruning_schedule must be one of {', '.join(map(repr, SCHEDULES))}, not {self.pruning_schedule!r}")
        targets = self._targets()
        if self.pruning_schedule == "none" and targets:
            _fail(f"pruning_schedule='none' prunes nothing; drop {', '.join(targets)} or choose a schedule")
        if not targets and self.pruning_schedule != "none" and not self.sparsifies_weights:
            _fail(
                "give a target: head_sparsity and/or ffn_sparsity, or flops_budget, params_budget or latency_budget "
                "(units), and/or weight_sparsity or an N:M sparsity_pattern (weights)"
            )
        try:  # the plan's own checks, so a config and a plan reject the same values in the same words
            # weight sparsity alone is a run of its own: no unit target needed then
            validate_targets(**targets, required=self.pruning_schedule != "none" and not self.sparsifies_weights)
            validate_options(
                ranking=self.ranking,
                min_heads_per_layer=self.min_heads_per_layer,
                min_ffn_per_layer=self.min_ffn_per_layer,
                ffn_multiple_of=self.ffn_multiple_of,
                seq_len=self.flops_seq_len,
                attention_unit=self.attention_unit,
                uniform=self.uniform,
                budget_split=self.budget_split,
                has_budget=any(getattr(self, name) is not None for name in BUDGET_NAMES),
                balanced=self.balanced,
            )
        except PlanError as e:
            _fail(str(e))
        self._validate_latency()
        if self.importance in GRADIENT_METHODS and not (
            isinstance(self.scoring_steps, int) and self.scoring_steps >= 1
        ):
            _fail(f"scoring_steps must be an integer >= 1 for {self.importance} importance, got {self.scoring_steps!r}")
        if isinstance(self.num_rounds, bool) or not (isinstance(self.num_rounds, int) and self.num_rounds >= 1):
            _fail(f"num_rounds must be an integer >= 1, got {self.num_rounds!r}")
        for name in STEP_NAMES:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < math.inf):
                _fail(f"{name} must be an optimizer step (>= 0) or a fraction of the run (below 1), got {value!r}")
            if value >= 1 and value != int(value):
                _fail(f"{name}={value!r}: a step is a whole number; a fraction of the run is below 1")
            setattr(self, name, int(value) if value >= 1 or value == 0 else float(value))
        start, end = self.prune_start_step, self.prune_end_step
        if self.pruning_schedule == "iterative" and end is not None and (start < 1) == (end < 1) and end < start:
            _fail(f"need prune_start_step <= prune_end_step, got {start} and {end}")
        self._validate_sparsity()
        if self.distill_alpha is not None and not 0.0 <= self.distill_alpha <= 1.0:
            _fail(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.distill_temperature <= 0:
            _fail("distill_temperature must be > 0")
        for name in ("reconstruct", "bias_compensation"):
            if not isinstance(getattr(self, name), bool):
                _fail(f"{name} must be True or False, got {getattr(self, name)!r}")
        batches = self.reconstruct_batches
        if isinstance(batches, bool) or not (isinstance(batches, int) and batches >= 1):
            _fail(f"reconstruct_batches must be an integer >= 1, got {batches!r}")
        held = self.selection_batches
        if isinstance(held, bool) or not (isinstance(held, int) and held >= 0):
            _fail(f"selection_batches must be an integer >= 0 (0: keep every reconstruction), got {held!r}")
        if self.bias_compensation and not self.reconstruct:
            _fail("bias_compensation is part of the reconstruction after each prune: set reconstruct=True too")
        if self.reconstruct and self.pruning_schedule == "none":
            _fail("reconstruct=True rebuilds layers after a prune, but pruning_schedule='none' prunes nothing")
        if self.reconstruct and not self.prunes_units:
            _fail(
                "reconstruct=True rebuilds layers after a prune of heads and neurons, but this config removes none "
                "(weight sparsity alone keeps every unit): drop reconstruct, or give a unit target"
            )

    def _validate_sparsity(self) -> None:
        try:
            pattern = parse_pattern(self.sparsity_pattern)
            if self.weight_sparsity is not None or pattern.is_nm:
                check_sparsity(self.weight_sparsity, pattern)
            check_scope(self.sparsity_scope)
            check_weight_method(self.weight_method)
        except ValueError as e:
            _fail(str(e))
        self.sparsity_pattern = pattern.name
        # sparsegpt and gblm are refused when a trainer is built (check_gradual_method), not here: the one-shot
        # command line (hf-gradprune prune --oneshot) parses the same config and runs them.
        extra = self.sparsity_extra_modules
        if isinstance(extra, str):  # one name from a recipe or a keyword
            extra = [extra]
        if extra is None or not all(isinstance(n, str) and n.strip() for n in extra):
            _fail(f"sparsity_extra_modules must be a list of module names (e.g. ['classifier']), got {extra!r}")
        self.sparsity_extra_modules = [n.strip() for n in extra]
        steps = self.sparsity_update_steps
        if isinstance(steps, bool) or not (isinstance(steps, int) and steps >= 1):
            _fail(
                f"sparsity_update_steps must be an integer >= 1 (optimizer steps between mask updates), got {steps!r}"
            )
        if not self.sparsifies_weights:
            given = [
                name
                for name, default in SPARSITY_DEFAULTS.items()
                if getattr(self, name) != (default() if callable(default) else default)
            ]
            if given:
                _fail(
                    f"{', '.join(given)}: these shape the gradual weight sparsity, which is off; set weight_sparsity "
                    "(or an N:M sparsity_pattern) too, or drop them"
                )
            return
        if self.weight_method != "magnitude" and not (
            isinstance(self.scoring_steps, int) and not isinstance(self.scoring_steps, bool) and self.scoring_steps >= 1
        ):
            _fail(
                f"scoring_steps must be an integer >= 1 for {self.weight_method} weight scores, "
                f"got {self.scoring_steps!r}"
            )
        start, end = self.sparsity_start_step, self.sparsity_end_step
        if end is not None and (start < 1) == (end < 1) and end < start:
            _fail(f"need sparsity_start_step <= sparsity_end_step, got {start} and {end}")
        if pattern.is_nm and self.prunes_units and self.ffn_multiple_of % pattern.m:
            _fail(
                f"sparsity_pattern {pattern.name} groups {pattern.m} consecutive inputs, but ffn_multiple_of="
                f"{self.ffn_multiple_of} lets pruned FFN widths that are not multiples of {pattern.m}: set "
                f"ffn_multiple_of to a multiple of {pattern.m}"
            )
        if self.prunes_units:
            last = self.prune_step if self.pruning_schedule == "one_shot" else self.prune_end_step
            if last is not None and (last < 1) == (start < 1) and start < last:
                _fail(self._hybrid_order_text(last, start))

    def _validate_latency(self) -> None:
        shape = {
            "latency_table_batch_size": self.latency_table_batch_size,
            "latency_table_seq_len": self.latency_table_seq_len,
        }
        for name, value in shape.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                _fail(f"{name} must be an integer >= 1, got {value!r}")
        given = [name for name, value in {"latency_table": self.latency_table, **shape}.items() if value is not None]
        if self.latency_budget is None:
            if given:
                _fail(
                    f"{', '.join(given)}: these describe the table a latency_budget is planned with; set "
                    "latency_budget too, or drop them"
                )
            return
        if self.latency_table is None:
            if None in shape.values():
                _fail(
                    "latency_budget needs a latency table: give latency_table (a saved table's path), or "
                    "latency_table_batch_size and latency_table_seq_len to measure one on the model"
                )
            return
        from ..deploy.latency import LatencyTable

        try:  # read now, so a missing or malformed file fails before training; the model is checked by the trainer
            LatencyTable.load(
                self.latency_table, batch_size=self.latency_table_batch_size, seq_len=self.latency_table_seq_len
            )
        except ValueError as e:
            _fail(str(e))

    def _hybrid_order_text(self, last, start) -> str:
        name = "prune_step" if self.pruning_schedule == "one_shot" else "prune_end_step"
        return (
            f"heads and neurons are removed first, then the weights of what remains are sparsified, so the unit "
            f"rounds must end at or before the sparsity schedule starts: {name}={last} comes after "
            f"sparsity_start_step={start}; move sparsity_start_step to {name} or later"
        )

    @property
    def prunes_units(self) -> bool:
        """Whether this run removes heads and neurons (a schedule and a unit target)."""
        return self.pruning_schedule != "none" and bool(self._targets())

    @property
    def sparsifies_weights(self) -> bool:
        """Whether this run zeroes weights (weight_sparsity above 0, or an N:M pattern)."""
        try:
            nm = parse_pattern(self.sparsity_pattern).is_nm
        except ValueError:
            return True  # a pattern was asked for: _validate_sparsity says what is wrong with it
        return nm or bool(self.weight_sparsity)

    @property
    def final_weight_sparsity(self) -> float:
        """The fraction of the targets' weights zeroed at the end of the ramp (0 when off)."""
        if not self.sparsifies_weights:
            return 0.0
        return check_sparsity(self.weight_sparsity, self.sparsity_pattern)[0]

    def sparsity_range(self, max_steps: int) -> tuple[int, int]:
        """``(start, end)`` optimizer steps of the sparsity ramp in a run of ``max_steps`` (end default: two thirds
        of the run, never before the start)."""
        start = self.step_at(self.sparsity_start_step, max_steps)
        end = self.sparsity_end_step
        return start, (self.step_at(end, max_steps) if end is not None else max(start, -(-2 * max_steps // 3)))

    def sparsity_schedule(self, max_steps: int) -> list[tuple[int, float]]:
        """``[(optimizer step, weight sparsity)]`` of every mask update: every ``sparsity_update_steps`` after the
        start, and the end, on the cubic ramp (an update at the start would zero nothing, so there is none unless
        the ramp starts and ends there). Empty when weight sparsity is off."""
        if not self.sparsifies_weights:
            return []
        from ..sparsity import cubic_sparsity

        start, end = self.sparsity_range(max_steps)
        final = self.final_weight_sparsity
        steps = list(range(start + self.sparsity_update_steps, end, self.sparsity_update_steps)) + [end]
        return [(step, cubic_sparsity(step, start, end, final)) for step in steps]

    def _targets(self) -> dict:
        return {name: getattr(self, name) for name in (*TARGET_NAMES, *BUDGET_NAMES) if getattr(self, name) is not None}

    def step_at(self, value: float, max_steps: int) -> int:
        """The optimizer step a step field means in a run of ``max_steps``: a value below 1 is that fraction of
        the run, rounded up (transformers' rule for ``warmup_steps``)."""
        return int(value) if value >= 1 else math.ceil(max_steps * value)

    def _steps_text(self, max_steps: int) -> str:
        """The schedule's step fields, with what each fraction of the run comes to (for error messages)."""
        names = ("prune_step",) if self.pruning_schedule == "one_shot" else ("prune_start_step", "prune_end_step")
        parts = []
        for name in names:
            value = getattr(self, name)
            if value is not None and 0 < value < 1:
                parts.append(f"{name}={value} (step {self.step_at(value, max_steps)} of {max_steps})")
            else:
                parts.append(f"{name}={value}")
        return ", ".join(parts)

    def check_gradual_method(self) -> None:
        """Refuse a one-shot-only weight method (sparsegpt, gblm: layer by layer on calibration data) for training."""
        if self.sparsifies_weights and self.weight_method not in HOOKED_METHODS:
            _fail(
                f"weight_method={self.weight_method!r} is one-shot only (layer by layer on calibration data): use "
                f"hf_gradprune.prune_weights_oneshot (hf-gradprune prune --oneshot), or choose "
                f"{', '.join(HOOKED_METHODS)} for gradual sparsity"
            )

    def check_schedule(self, max_steps: int, batches_per_epoch: int | None = None) -> None:
        """Raise ``PlanError`` unless every round runs, with all its scoring batches, in ``max_steps`` steps.

        ``max_steps`` is the run's number of optimizer steps (``GradPruneTrainer.train`` computes it as
        ``Trainer`` does, also from epochs). ``batches_per_epoch`` is the length of this process's training
        loader, when known. A round at step 0 always fits: scoring before training cycles the loader.
        """
        if self.pruning_schedule == "iterative":
            start, end = self.step_at(self.prune_start_step, max_steps), self._end_step(max_steps)
            if end < start:
                _fail(f"the last round comes before the first: {self._steps_text(max_steps)}")
        self.check_gradual_method()
        self._check_sparsity_schedule(max_steps)
        rounds = self.round_schedule(max_steps)
        if not rounds:
            return
        last = rounds[-1][0]
        if last > 0 and last >= max_steps:  # a round runs at the start of its step, so step max_steps never comes
            if self.pruning_schedule == "one_shot":
                change = f"set prune_step below {max_steps} (0 prunes before training; 0.5 at half of the run)"
            else:
                change = f"make the rounds end before step {max_steps} ({self._steps_text(max_steps)})"
            _fail(
                f"the {self.pruning_schedule} schedule prunes at step {last}, but training stops after {max_steps} "
                f"optimizer steps, so the model would never be pruned: {change}, or train longer "
                "(max_steps, num_train_epochs)"
            )
        if self.pruning_schedule == "iterative" and len(rounds) < self.num_rounds:
            start, end = self.step_at(self.prune_start_step, max_steps), self._end_step(max_steps)
            _fail(
                f"num_rounds={self.num_rounds} rounds between steps {start} and {end} fall on only {len(rounds)} "
                f"distinct steps: lower num_rounds, or widen the range (prune_start_step, prune_end_step"
                f"{'' if self.prune_end_step is not None else ', which defaults to half of the run'})"
            )
        if self.importance not in GRADIENT_METHODS:
            return
        if batches_per_epoch == 0:
            _fail("the training set gives no batches (an empty train_dataset?): there is nothing to score or train on")
        previous = 0
        for step, _ in rounds:
            if step == 0:  # scored before training, cycling the training set as often as it takes: always fits
                continue
            # the scorer starts afresh after each prune; it reads the batches training reads
            available = self.micro_batches_before(step, batches_per_epoch)
            available -= self.micro_batches_before(previous, batches_per_epoch)
            if available < self.scoring_steps:
                since = f"the round at step {previous}" if previous else "the start"
                world = self.world_size
                processes = (
                    f" Each of the {world} processes scores scoring_steps batches of its own, so the run has "
                    f"{world}x fewer steps than on one process (a recipe states the launches it fits)."
                    if world > 1
                    else ""
                )
                _fail(
                    f"the round at step {step} of {max_steps} can score only {available} batches (those since "
                    f"{since}), but scoring_steps={self.scoring_steps}: lower scoring_steps, or space the rounds "
                    f"further apart ({self._steps_text(max_steps)}, num_rounds={self.num_rounds}).{processes}"
                )
            previous = step

    def _check_sparsity_schedule(self, max_steps: int) -> None:
        if not self.sparsifies_weights:
            return
        start, end = self.sparsity_range(max_steps)
        text = f"sparsity_start_step={self.sparsity_start_step}, sparsity_end_step={self.sparsity_end_step}"
        if end < start:
            _fail(f"the sparsity ramp ends (step {end}) before it starts (step {start}): {text}")
        if end > 0 and end >= max_steps:  # an update runs at the start of its step: step max_steps never comes
            _fail(
                f"the sparsity ramp ends at step {end}, but training stops after {max_steps} optimizer steps, so the "
                f"target would never be reached: end it earlier ({text}; default: two thirds of the run), or train "
                "longer (max_steps, num_train_epochs)"
            )
        rounds = self.round_schedule(max_steps)
        if rounds and rounds[-1][0] > start:
            _fail(self._hybrid_order_text(rounds[-1][0], start) + f" (steps of a {max_steps}-step run)")

    def _end_step(self, max_steps: int) -> int:
        """Step of the iterative schedule's last round (default: half of the run)."""
        start = self.step_at(self.prune_start_step, max_steps)
        end = self.prune_end_step
        return self.step_at(end, max_steps) if end is not None else max(start, max_steps // 2)

    def micro_batches_before(self, step: int, batches_per_epoch: int | None = None) -> int:
        """Micro-batches (forward and backward passes) the training loop runs before optimizer step ``step``.

        ``gradient_accumulation_steps`` per step, except that ``Trainer`` gives the last step of an epoch
        only the batches left in it (``batches_per_epoch``, when the training loader has a length).
        """
        ga = self.gradient_accumulation_steps
        if not batches_per_epoch:
            return step * ga
        epochs, within = divmod(step, -(-batches_per_epoch // ga))
        return epochs * batches_per_epoch + within * ga

    @property
    def effective_distill_alpha(self) -> float:
        return 0.5 if self.distill_alpha is None else self.distill_alpha

    def plan_targets(self, fraction: float = 1.0) -> dict:
        """The plan keyword arguments at ``fraction`` of the final target (for iterative rounds)."""
        return {name: value * fraction for name, value in self._targets().items()}

    def round_schedule(self, max_steps: int) -> list[tuple[int, float]]:
        """``[(optimizer step, fraction of the final target)]`` for every round, by step; rounds that fall on
        the same step are one round (the larger fraction)."""
        if not self.prunes_units:
            return []
        if self.pruning_schedule == "one_shot":
            return [(self.step_at(self.prune_step, max_steps), 1.0)]
        start, end, n = self.step_at(self.prune_start_step, max_steps), self._end_step(max_steps), self.num_rounds
        steps = [start] if n == 1 else [start + round(r * (end - start) / (n - 1)) for r in range(n)]
        # Zhu & Gupta's cubic ramp from 0 to the target, sampled at rounds 1..n.
        rounds: dict[int, float] = {}
        for r, step in enumerate(steps):
            rounds[step] = max(1.0 - (1.0 - (r + 1) / n) ** 3, rounds.get(step, 0.0))
        return sorted(rounds.items())


SCHEDULES = ("one_shot", "iterative", "none")
# a step, or below 1 a fraction of the run
STEP_NAMES = ("prune_step", "prune_start_step", "prune_end_step", "sparsity_start_step", "sparsity_end_step")
# the gradual weight sparsity's options and their defaults: any other value needs weight_sparsity on
SPARSITY_DEFAULTS = {
    "weight_method": "taylor",
    "sparsity_scope": "global",
    "sparsity_start_step": 0,
    "sparsity_end_step": None,
    "sparsity_update_steps": 10,
    "sparsity_extra_modules": list,
}


def _fail(message: str):
    raise PlanError(f"GradPruneConfig: {message}") from None
