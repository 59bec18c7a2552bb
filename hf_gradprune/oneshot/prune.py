"""The retraining-free path in one call: score, split the budget, rearrange, prune, reconstruct.

It follows Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for Transformers"): Fisher scores
from unlabelled calibration data, a head-count search for the budget split, a greedy mask rearrangement
within layers, and a layer-wise least-squares reconstruction against the model before the prune. Each
step can be switched off; the report says what each did and how long it took.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from ..planning.plan import PlanError, PruningPlan, validate_targets
from ..scoring.scorer import ImportanceScorer
from ..scoring.scores import GRADIENT_METHODS, METHODS, Scores
from ..state import pruning_state, unwrap_model
from ..surgery import current_plan, prune_model
from ..units import HEAD
from .calibration import CalibrationError, LossFn, calibration_batches, check_count, check_loss_inputs, model_loss
from .reconstruct import ReconstructionReport, calibration_tokens
from .reconstruct import reconstruct as reconstruct_layers  # the keyword below is `reconstruct`

SPLITS = ("search", "ratio", "normalized")


@dataclass
class OneShotReport:
    """What ``prune_oneshot`` did: the plan, each step's own report, and the seconds each step took."""

    plan: PruningPlan
    scores: Scores | None = None
    split: dict | None = None  # the budget search's candidate table (split="search")
    rearrangement: list | None = None  # per layer and kind: objective before / after
    reconstruction: ReconstructionReport | None = None
    seconds: dict = field(default_factory=dict)
    batches: dict = field(default_factory=dict)  # calibration batches each step used ("score", "search", ...)

    def to_dict(self) -> dict:
        return {
            "plan": self.plan.to_dict(),
            "split": self.split,
            "batches": self.batches,
            "rearrangement": self.rearrangement,
            "reconstruction": None if self.reconstruction is None else self.reconstruction.to_dict(),
            "seconds": self.seconds,
        }


def prune_oneshot(
    model: nn.Module,
    calibration: Iterable,
    *,
    flops_budget: float | None = None,
    params_budget: float | None = None,
    head_sparsity: float | None = None,
    ffn_sparsity: float | None = None,
    latency_budget: float | None = None,
    latency_table=None,
    method: str = "fisher",
    plan: PruningPlan | None = None,
    split: str = "search",
    rearrange: bool = False,
    reconstruct: bool = True,
    bias_compensation: bool = False,
    scoring_batches: int | None = None,
    search_batches: int | None = 4,
    reconstruct_batches: int | None = 16,
    loss_fn: LossFn | None = None,
    seq_len: int = 128,
    **plan_options,
) -> tuple[nn.Module, OneShotReport]:
    """Prune ``model`` in place without retraining; returns it and a ``OneShotReport``.

    Args:
        calibration: batches of model inputs (dicts; labels optional, see ``calibration.model_loss``).
            Scoring uses the first ``scoring_batches`` (all by default), the budget search the first
            ``search_batches`` (4), reconstruction the first ``reconstruct_batches`` (16, as ``GradPruneConfig``):
            each an integer >= 1, or None for all; fewer batches than a count are all used, and
            ``report.batches`` says how many each step had. To skip reconstruction pass ``reconstruct=False``.
            Batches may give ``inputs_embeds`` instead of ``input_ids``; unlabelled ones then need a
            ``loss_fn`` for a causal LM (its default loss predicts the batch's own token ids).
        flops_budget / params_budget / head_sparsity / ffn_sparsity / latency_budget: the target, as in
            ``PruningPlan.from_scores`` (``latency_budget`` with its ``latency_table``). Or give a ready ``plan``
            (then no scoring unless rearranging).
        method: the importance score (``fisher`` by default, as Kwon et al.).
        split: how a budget is split between heads and neurons: ``"search"`` (measure the calibration
            loss of candidate head counts), ``"ratio"`` (greedy by score per cost) or ``"normalized"``. Shapes
            that sweep their own head count (``uniform`` / ``balanced`` in ``plan_options``) and a
            ``latency_budget`` (units priced by the table) are not searched: ``report.split`` says so, and
            ``"search"`` then plans with the default ``"normalized"`` split.
        rearrange: Kwon's greedy swap within each layer (gradient methods only). Off by default: on the
            quickstart model it lowered its objective yet cost 3-9 points of one-shot accuracy
            (benchmarks/README.md).
        reconstruct: least-squares rescaling of every pruned layer against a copy of the model
            taken before the prune (the copy costs one model's memory while it runs).
        loss_fn: ``loss_fn(model, batch) -> loss`` for scoring and the search, instead of the default.
        plan_options: further ``PruningPlan.from_scores`` options (``ranking``, ``uniform``, ...), with its
            defaults: FFN widths are multiples of ``DEFAULT_FFN_MULTIPLE_OF`` (64) unless ``ffn_multiple_of=1``.

    Everything is checked before the model changes: the targets, the method, the batch counts, a given plan's
    model, the calibration data (an empty loader, a batch no loss can be made for, reconstruction batches
    without tokens, a loss that is NaN on every batch).
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    scoring_batches = check_count("scoring_batches", scoring_batches)
    search_batches = check_count("search_batches", search_batches)
    reconstruct_batches = check_count(
        "reconstruct_batches", reconstruct_batches, hint="; to skip reconstruction pass reconstruct=False"
    )
    if "max_batches" in plan_options:
        raise CalibrationError("prune_oneshot counts the budget search's batches with search_batches, not max_batches")
    inner = unwrap_model(model, allow_distributed=False)
    state = pruning_state(inner)
    if method not in METHODS:
        raise ValueError(f"unknown importance method {method!r}; choose one of {', '.join(METHODS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, not {split!r}")
    targets = dict(
        flops_budget=flops_budget,
        params_budget=params_budget,
        latency_budget=latency_budget,
        head_sparsity=head_sparsity,
        ffn_sparsity=ffn_sparsity,
    )
    if plan is not None:
        if any(v is not None for v in targets.values()):
            raise PlanError("give either a plan or a target (flops_budget, ...), not both")
        if not isinstance(plan, PruningPlan):
            raise TypeError(f"plan must be a PruningPlan, got {type(plan).__name__}")
        if plan.geometry != state.geometry:
            raise PlanError(
                "this plan is for another model: its geometry differs from the model's "
                f"({plan.geometry} vs {state.geometry}); make the plan from this model's scores"
            )
    else:
        validate_targets(**targets)
        if latency_budget is not None and latency_table is None:
            raise PlanError(
                "latency_budget needs latency_table= (hf_gradprune.deploy.latency: cached_latency_table, "
                "measure_latency_table or LatencyTable.load)"
            )
    rearrange = rearrange and method in GRADIENT_METHODS
    budget = flops_budget is not None or params_budget is not None or latency_budget is not None
    sweeps = plan_options.get("uniform") or plan_options.get("balanced")
    searching = plan is None and budget and split == "search" and not sweeps and latency_budget is None
    _check_plan_options(plan_options, searching=searching, given_plan=plan is not None)
    needs_scores = plan is None or rearrange
    batches = list(calibration_batches(calibration, inner))
    used = {
        "score": batches[:scoring_batches] if needs_scores and method in GRADIENT_METHODS else [],
        "search": batches[:search_batches] if searching else [],
        "reconstruct": batches[:reconstruct_batches] if reconstruct else [],
    }
    for b in used["score"] + used["search"]:
        check_loss_inputs(inner, b, loss_fn)
    if reconstruct:
        calibration_tokens(used["reconstruct"])
        # fails here, before any change, if the family cannot say where its sub-layers end
        state.adapter.residual_output(state.layers[0], HEAD)

    scores, scorer = None, None
    if needs_scores:
        t = time.perf_counter()
        scorer, scores = _score(inner, used["score"], method, loss_fn, record=rearrange)
        seconds["score"] = time.perf_counter() - t
    split_report = None
    if plan is None:
        t = time.perf_counter()
        options = {"seq_len": seq_len, **plan_options}
        if searching:
            from .budget_search import search_budget_split

            plan, split_report = search_budget_split(
                inner,
                scores,
                used["search"],
                flops_budget=flops_budget,
                params_budget=params_budget,
                loss_fn=loss_fn,
                max_batches=None,  # search_batches chose them
                **options,
            )
        else:
            if budget and split != "search" and not plan_options.get("uniform"):
                options["budget_split"] = split
            if budget and split == "search":
                why = "latency_budget: units priced by the latency table" if latency_budget is not None else None
                split_report = {"searched": False, "why": why or "uniform/balanced sweep their own head count"}
            plan = PruningPlan.from_scores(scores, **targets, latency_table=latency_table, **options)
        seconds["split"] = time.perf_counter() - t
    plan = plan.intersect(current_plan(inner))
    rearrangement = None
    if rearrange:
        from ..planning.rearrange import rearrange_plan

        t = time.perf_counter()
        plan, rearrangement = rearrange_plan(plan, scorer.batch_gradients, scores.head_ids, scores.neuron_ids)
        seconds["rearrange"] = time.perf_counter() - t

    dense = copy.deepcopy(inner) if reconstruct else None
    t = time.perf_counter()
    prune_model(inner, plan)
    seconds["prune"] = time.perf_counter() - t
    counts = {step: len(b) for step, b in used.items() if b}
    if split_report is not None and "batches" in split_report:
        counts["search"] = split_report["batches"]  # those the unpruned model's loss is finite on
    report = OneShotReport(plan=plan, scores=scores, split=split_report, rearrangement=rearrangement, batches=counts)
    if reconstruct:
        t = time.perf_counter()
        report.reconstruction = reconstruct_layers(
            inner, dense, used["reconstruct"], bias_compensation=bias_compensation
        )
        seconds["reconstruct"] = time.perf_counter() - t
        del dense
    seconds["total"] = time.perf_counter() - start
    report.seconds = seconds
    return model, report


# What ``plan_options`` may hold: ``PruningPlan.from_scores``'s shape options, and the budget search's own.
PLAN_OPTIONS = ("ranking", "normalize_heads", "min_heads_per_layer", "ffn_multiple_of", "attention_unit", "uniform")
PLAN_OPTIONS += ("balanced", "heads_kept")
SEARCH_OPTIONS = ("criterion", "num_candidates")


def _check_plan_options(options: dict, *, searching: bool, given_plan: bool) -> None:
    """Refuse an option no step of this call would read, naming it (not a TypeError deep in a later step)."""
    unknown = sorted(set(options) - set(PLAN_OPTIONS) - set(SEARCH_OPTIONS))
    if unknown:
        raise PlanError(
            f"prune_oneshot got unknown option(s) {unknown}; plan options are {', '.join(PLAN_OPTIONS)}, and the "
            f"budget search takes {', '.join(SEARCH_OPTIONS)}"
        )
    if given_plan and options:
        raise PlanError(f"{sorted(options)} shape a plan made here; with plan= given, drop them")
    search_only = sorted(set(options) & set(SEARCH_OPTIONS))
    if search_only and not searching:
        raise PlanError(
            f"{search_only} only apply to the budget search (split='search' with flops_budget or params_budget, "
            "without uniform/balanced), which this call does not run: drop them or ask for the search"
        )
    if searching and "heads_kept" in options:
        raise PlanError("heads_kept fixes the head count the budget search chooses: drop it, or pass split='ratio'")


def _score(model, batches, method, loss_fn, *, record: bool):
    """Scores of the live units on ``batches`` (eval mode); the model's own ``.grad`` are left as they were."""
    kwargs = {"record_batches": True} if record else {}
    scorer = ImportanceScorer(model, method, **kwargs)
    if method not in GRADIENT_METHODS:
        return scorer, scorer.scores
    saved = {p: p.grad for p in model.parameters()}
    was_training = model.training
    model.eval()
    try:
        with scorer:
            for batch in batches:
                for p in saved:
                    p.grad = None
                model_loss(model, batch, loss_fn).backward()
    finally:
        for p, g in saved.items():
            p.grad = g
        model.train(was_training)
    if scorer.num_examples == 0:
        raise CalibrationError(
            f"the loss was NaN or infinite on every calibration batch ({scorer.skipped_batches} batches): "
            "nothing can be scored; check the data (labels in range?) and the loss_fn"
        )
    return scorer, scorer.scores
