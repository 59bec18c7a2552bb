"""The retraining-free path in one call: score, split the budget, rearrange, prune, reconstruct, and (hybrid)
sparsify the weights that remain.

It follows Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for Transformers"): Fisher scores
from unlabelled calibration data, a head-count search for the budget split, a greedy mask rearrangement
within layers, and a layer-wise least-squares reconstruction against the model before the prune. Each
step can be switched off; the report says what each did and how long it took. With ``weight_sparsity`` (or an N:M
``sparsity_pattern``) the call then zeroes individual weights of the smaller model (``weights.py``): heads and
neurons first, weights of what remains second, all options checked before the unit cut.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..dispatch import check_in_memory
from ..planning.plan import PlanError, PruningPlan, validate_targets
from ..scoring.scores import GRADIENT_METHODS, METHODS
from ..sparsity import check_targets, weight_targets
from ..state import pruning_state, unwrap_model
from ..surgery import current_plan, prune_model
from ..units import HEAD
from .budget_search import _with_dense_labels
from .calibration import CalibrationError, LossFn, calibration_batches, check_count, check_loss_inputs
from .candidates import ProjectionSnapshot, best, candidates, check_step, held_out_loss
from .reconstruct import calibration_tokens
from .reconstruct import reconstruct as reconstruct_layers  # the keyword below is `reconstruct`
from .reference import WHERE, DenseLayers, DenseReferenceError, DenseTargets, fits_in_host
from .report import OneShotReport, StepMeter, batch_tokens
from .score_pass import check_options, score_calibration
from .weights import (
    GRADIENT_PASS_METHODS,
    WeightPruningReport,
    check_weight_options,
    count_tokens,
    prune_weights_oneshot,
)

SPLITS = ("search", "ratio", "normalized")


@dataclass
class HybridReport(OneShotReport):
    """``OneShotReport`` and, when the call also sparsified weights, their report (``weights``)."""

    weights: WeightPruningReport | None = None

    def to_dict(self) -> dict:
        return {**super().to_dict(), "weights": None if self.weights is None else self.weights.to_dict()}


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
    rearrange: bool | str = "auto",
    reconstruct: bool | str = "auto",
    bias_compensation: bool = False,
    scoring_batches: int | None = None,
    search_batches: int | None = 4,
    reconstruct_batches: int | None = 16,
    selection_batches: int = 4,
    loss_fn: LossFn | None = None,
    seq_len: int = 128,
    reference: str = "auto",
    reference_folder: str | None = None,
    micro_batch_size: int | None = None,
    gradient_checkpointing: bool = False,
    weight_sparsity: float | None = None,
    sparsity_pattern: str = "unstructured",
    weight_method: str = "wanda",
    sparsity_scope: str | None = None,
    weight_batches: int | None = None,
    sparsity_extra_modules=(),
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
        rearrange: Kwon's greedy swap within each layer (gradient methods only; with others it is never done).
        reconstruct: least-squares rescaling of every pruned layer against the model's layers as they were
            before the prune (``oneshot.reconstruct``), on the model's device.
            Each of the two is True (done), False (not done) or ``"auto"`` (the default: tried, and kept only if
            it lowers the held-out loss). Each step lowers its own objective yet either can cost accuracy
            (benchmarks/README.md §6), so with any ``"auto"`` the call measures every candidate the settings allow
            (one-shot; + reconstruction; + rearrangement; + both) by its mean loss on the last
            ``selection_batches`` calibration batches, which no step fits on (they are left out of scoring, the
            search and reconstruction), and keeps the lowest (the simpler one on a tie). The candidates' units
            are gated off rather than cut (a factor 0 is exactly the cut); the model is cut once, to the winner.
            Cost: ``selection_batches`` forwards per candidate (``report.selection["forwards"]``, plus one
            labelling forward per batch for an unlabelled classifier) and one reconstruction per reconstructed
            candidate; ``report.selection`` gives every candidate's loss and the choice.
        selection_batches: how many calibration batches (the last ones) are held out to choose (an integer >= 1;
            at least one batch must be left to fit on). Unused when no step is ``"auto"``.
        reference: what reconstruction reads the dense model's targets from (``oneshot.reference``):
            ``"activations"`` (the scoring pass records each layer's dense residual stream on the reconstruction
            batches: no dense layer runs again and no weights are copied; two hidden vectors per layer and token),
            or the layers before the cut (``DenseLayers``), brought to the device one at a time: ``"cpu"`` (host
            memory), ``"disk"`` (safetensors files in a temporary folder inside ``reference_folder``, removed at
            the end), ``"device"`` (a copy on the model's device: no transfers, one more model's worth of device
            memory). ``"auto"`` (default): recorded activations on the CPU when they fit in host memory and
            scoring covers the reconstruction batches; else host memory when a copy of the layers fits there
            with room to spare; else disk. ``report.reference`` says which was used and why.
        loss_fn: ``loss_fn(model, batch) -> loss`` for scoring and the search, instead of the default.
        micro_batch_size / gradient_checkpointing: bound memory at standard calibration sizes (e.g. 128 x
            2,048 tokens on an 8B model): scoring's forward and backward and the search's forwards run on at most
            ``micro_batch_size`` sequences at a time (scores and losses equal the whole batch's; needs the default
            loss), and scoring's layers recompute their activations in the backward (non-reentrant
            checkpointing, for the scoring pass only). Scoring never keeps weight gradients
            (``oneshot.score_pass``).
        weight_sparsity / sparsity_pattern / weight_method / sparsity_scope: hybrid pruning. After the units are cut
            (and reconstructed), ``prune_weights_oneshot`` zeroes this fraction of the remaining block weights
            (an N:M pattern implies its own fraction; ``weight_sparsity=None`` with ``"unstructured"``: off), by
            ``weight_method`` (``wanda`` by default; ``magnitude``, ``sparsegpt``, ``taylor``, ``fisher``) on the
            first ``weight_batches`` calibration batches (all by default), on the blocks' matrices and
            ``sparsity_extra_modules`` (e.g. ``("lm_head",)``). ``report.weights`` says what it did.
            The gradient methods' pass takes ``loss_fn``, ``micro_batch_size`` and ``gradient_checkpointing``.
        plan_options: further ``PruningPlan.from_scores`` options (``ranking``, ``uniform``, ...), with its
            defaults: FFN widths are multiples of ``DEFAULT_FFN_MULTIPLE_OF`` (64) unless ``ffn_multiple_of=1``.

    Everything is checked before the model changes: the targets, the method, the batch counts, a given plan's
    model, the calibration data (an empty loader, a batch no loss can be made for, reconstruction batches
    without tokens, a loss that is NaN on every batch), the reference option, and that no weight is offloaded
    by Accelerate (``dispatch.check_in_memory``: a cut cannot reach an offload folder).

    Peak device memory, with a streamed reference (``"cpu"`` / ``"disk"``): the largest of
    - scoring: the model's weights and gradients plus one calibration batch's activations for the backward
      pass (``micro_batch_size`` and ``gradient_checkpointing`` bound those);
    - the search: the weights plus one forward of ``micro_batch_size`` sequences (or a batch);
    - reconstruction: the pruned model's weights + one dense layer + per calibration token three hidden
      vectors (pruned and dense stream, the dense attention output) in the model's dtype + one sub-layer's
      normal equations (kept units^2 float64) and one batch's layer activations.
    The held-out choice adds, in host memory, two copies of the layers' output projections (those before
    reconstruction, and the best reconstructed ones so far), and runs each reconstruction on the uncut model when
    the candidates have two plans (rearrangement changed the units), else on the cut one.
    ``report.peak_memory`` gives the measured peak of each step (``report.memory_kind`` says how it was measured).
    """
    scoring_batches = check_count("scoring_batches", scoring_batches)
    search_batches = check_count("search_batches", search_batches)
    reconstruct_batches = check_count(
        "reconstruct_batches", reconstruct_batches, hint="; to skip reconstruction pass reconstruct=False"
    )
    micro_batch_size = check_options(micro_batch_size, gradient_checkpointing, loss_fn)
    check_step("rearrange", rearrange)
    check_step("reconstruct", reconstruct)
    selection_batches = check_count("selection_batches", selection_batches)
    if selection_batches is None:
        raise CalibrationError("selection_batches must be an integer >= 1 (the held-out batches that choose the steps)")
    sparsify = weight_sparsity is not None or sparsity_pattern != "unstructured"
    if sparsify:
        weight_options = check_weight_options(weight_sparsity, sparsity_pattern, weight_method, sparsity_scope)
        weight_batches = check_count("weight_batches", weight_batches)
    elif weight_batches is not None or sparsity_scope is not None or sparsity_extra_modules:
        raise ValueError(
            "weight_batches, sparsity_scope and sparsity_extra_modules apply to weight sparsity: give weight_sparsity "
            "(or an N:M sparsity_pattern) too"
        )
    if "max_batches" in plan_options:
        raise CalibrationError("prune_oneshot counts the budget search's batches with search_batches, not max_batches")
    inner = unwrap_model(model, allow_distributed=False)
    state = pruning_state(inner)
    check_in_memory(inner, "prune_oneshot", needs_weights=True)  # offloaded or meta weights: refused
    if reference not in WHERE:
        raise DenseReferenceError(f"reference must be one of {', '.join(map(repr, WHERE))}, not {reference!r}")
    if reference_folder is not None and not Path(reference_folder).is_dir():
        raise DenseReferenceError(f"reference_folder {str(reference_folder)!r} is not a directory: create it first")
    meter = StepMeter(inner)
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
    if method not in GRADIENT_METHODS:
        rearrange = False  # it swaps units by their per-batch gate gradients, which only gradient methods have
    options = candidates(rearrange, reconstruct)
    selecting = len(options) > 1
    rearrange = any(c.rearrange for c in options)  # from here: whether any candidate rearranges, or reconstructs
    reconstruct = any(c.reconstruct for c in options)
    budget = flops_budget is not None or params_budget is not None or latency_budget is not None
    sweeps = plan_options.get("uniform") or plan_options.get("balanced")
    searching = plan is None and budget and split == "search" and not sweeps and latency_budget is None
    _check_plan_options(plan_options, searching=searching, given_plan=plan is not None)
    needs_scores = plan is None or rearrange
    batches = list(calibration_batches(calibration, inner))
    held = []
    if selecting:
        if len(batches) <= selection_batches:
            raise CalibrationError(
                f"prune_oneshot holds out the last {selection_batches} calibration batches to choose between "
                f"{', '.join(c.name for c in options)}, and needs at least one more to fit on: it got {len(batches)}. "
                "Give more batches, lower selection_batches, or choose the steps yourself (rearrange= and "
                "reconstruct= True or False)"
            )
        batches, held = batches[:-selection_batches], batches[-selection_batches:]
    used = {
        "score": batches[:scoring_batches] if needs_scores and method in GRADIENT_METHODS else [],
        "search": batches[:search_batches] if searching else [],
        "reconstruct": batches[:reconstruct_batches] if reconstruct else [],
        "weights": batches[:weight_batches] if sparsify and weight_options[2] != "magnitude" else [],
    }
    weight_grads = sparsify and weight_options[2] in GRADIENT_PASS_METHODS
    for b in used["score"] + used["search"] + held + (used["weights"] if weight_grads else []):
        check_loss_inputs(inner, b, loss_fn)
    if used["weights"]:
        count_tokens(used["weights"])
    if sparsify:
        # the widths no cut changes (hidden size); the extra modules' names (no cut renames them)
        check_targets(weight_targets(inner, sparsity_extra_modules), weight_options[1])
    if reconstruct:
        calibration_tokens(used["reconstruct"])
        # fails here, before any change, if the family cannot say where its sub-layers end
        state.adapter.residual_output(state.layers[0], HEAD)
    recorder = None
    if reconstruct:
        recorder = _recorder(inner, reference, used, bias_compensation)
    labelling = 0
    if held:  # an unlabelled classifier's held-out batches: labelled by the unpruned model, as the search's
        was_training = inner.training
        inner.eval()
        try:
            held, dense_held = _with_dense_labels(inner, held, loss_fn)
        finally:
            inner.train(was_training)
        labelling = len(held) if dense_held else 0

    scores, scorer, scored = None, None, None
    if needs_scores:
        with meter.step("score", tokens=batch_tokens(used["score"])):
            scored = score_calibration(
                inner,
                used["score"],
                method,
                loss_fn,
                record=rearrange,
                micro_batch_size=micro_batch_size,
                gradient_checkpointing=gradient_checkpointing,
                targets=recorder,
            )
            scorer, scores = scored.scorer, scored.scores
    split_report = None
    if plan is None:
        # the search's batches lead the scoring ones: the scoring pass measured their dense losses already
        n = len(used["search"])
        known = scored.losses[:n] if scored is not None and len(scored.losses) >= n else None
        with meter.step("split", tokens=batch_tokens(used["search"])):
            plan, split_report = _plan(
                inner,
                scores,
                used["search"],
                known,
                searching,
                budget,
                split,
                targets,
                latency_table,
                loss_fn,
                seq_len,
                plan_options,
                micro_batch_size,
            )
    plan = plan.intersect(current_plan(inner))
    if sparsify:
        _check_cut_widths(plan, state.geometry, weight_options[1])
    plans = {False: plan}
    rearrangement = None
    if rearrange:
        from ..planning.rearrange import rearrange_plan

        with meter.step("rearrange"):
            plans[True], rearrangement = rearrange_plan(
                plan, scorer.batch_gradients, scores.head_ids, scores.neuron_ids
            )
    dense = None
    if recorder is not None and not recorder.complete:
        if reference == "activations":
            raise DenseReferenceError(
                f"reference='activations': {recorder.failed}; nothing was changed. Pass reference='auto' or 'cpu'"
            )
        recorder.close()
        recorder = None
    if recorder is not None:
        dense = recorder
    elif reconstruct:  # the layers as they are now, for reconstruction's targets
        with meter.step("reference"):
            dense = DenseLayers.capture(
                inner, "auto" if reference == "activations" else reference, folder=reference_folder
            )
    counts = {step: len(b) for step, b in used.items() if b}
    if held:
        counts["selection"] = len(held)
    if scored is not None and micro_batch_size is not None:
        counts["score_forwards"] = scored.micro_batches  # the micro-batches the score batches were split into
    if split_report is not None and "batches" in split_report:
        counts["search"] = split_report["batches"]  # those the unpruned model's loss is finite on
    try:
        if selecting:
            chosen, selection = _select(
                inner,
                plans,
                options,
                dense,
                used["reconstruct"],
                held,
                labelling,
                loss_fn,
                micro_batch_size,
                bias_compensation,
                meter,
            )
            plan = plans[chosen.rearrange]
            report = HybridReport(
                plan=plan, scores=scores, split=split_report, rearrangement=rearrangement, batches=counts
            )
            report.selection = selection
            report.reconstruction = chosen.reconstruction
        else:
            plan = plans[options[0].rearrange]
            with meter.step("prune"):
                prune_model(inner, plan)
            report = HybridReport(
                plan=plan, scores=scores, split=split_report, rearrangement=rearrangement, batches=counts
            )
            if reconstruct:
                with meter.step("reconstruct", tokens=batch_tokens(used["reconstruct"])):
                    report.reconstruction = reconstruct_layers(
                        inner, dense, used["reconstruct"], bias_compensation=bias_compensation
                    )
        if reconstruct:
            report.reference = dense.to_dict()
    finally:
        if dense is not None:
            dense.close()  # drops the copy; removes the files it wrote
    if sparsify:
        sparsity, pattern, weight_method, scope = weight_options
        grad_options = {}
        if weight_grads:
            grad_options = dict(
                loss_fn=loss_fn, micro_batch_size=micro_batch_size, gradient_checkpointing=gradient_checkpointing
            )
        with meter.step("weights", tokens=batch_tokens(used["weights"])):
            report.weights = prune_weights_oneshot(
                inner,
                used["weights"] or None,
                sparsity,
                pattern,
                weight_method,
                scope,
                sparsity_extra_modules,
                **grad_options,
            )
    report.record(meter)
    return model, report


def _select(inner, plans, options, dense, fit, held, labelling, loss_fn, micro_batch_size, bias_compensation, meter):
    """Measure every candidate's mean loss on the ``held`` batches and leave the model cut to the best one, with its
    reconstruction. One plan (no rearrangement, or one that changed nothing): the model is cut first and the
    candidates differ only by reconstruction; two plans: each is gated on the uncut model, then one cut. Returns the
    chosen ``Candidate`` and ``report.selection``."""
    same = True in plans and _same_units(plans[True], plans[False])
    single = len(plans) == 1 or same

    def gate(c):  # what a candidate's units are: the model as it is once cut, or its plan's gates
        return None if single else plans[c.rearrange]

    def twin(c):  # when rearranging changed nothing: the candidate without it, if it is one (else None)
        if not (same and c.rearrange):
            return None
        return next((o for o in options if not o.rearrange and o.reconstruct == c.reconstruct), None)

    measure = dict(loss_fn=loss_fn, micro_batch_size=micro_batch_size)
    forwards, reconstructions = labelling, 0
    if single:
        with meter.step("prune"):
            prune_model(inner, plans[options[0].rearrange])
    with meter.step("select", tokens=batch_tokens(held)):
        for c in options:
            if c.reconstruct:
                continue
            if twin(c) is not None:
                c.loss, c.note = twin(c).loss, "rearrangement kept the same units"
                continue
            c.loss = held_out_loss(inner, held, plan=gate(c), **measure)
            forwards += len(held)
    fitted = [c for c in options if c.reconstruct]
    chosen_weights = None
    if fitted:
        original = ProjectionSnapshot(inner)
        with meter.step("reconstruct", tokens=batch_tokens(fit)):
            for c in fitted:
                if twin(c) is not None:
                    c.loss, c.reconstruction = twin(c).loss, twin(c).reconstruction
                    c.note = "rearrangement kept the same units"
                    continue
                c.reconstruction = reconstruct_layers(
                    inner, dense, fit, bias_compensation=bias_compensation, plan=gate(c)
                )
                reconstructions += 1
                c.loss = held_out_loss(inner, held, plan=gate(c), **measure)
                forwards += len(held)
                if best([o for o in fitted if o.loss is not None]) is c:
                    chosen_weights = ProjectionSnapshot(inner)
                original.restore()
    chosen = best(options)
    if chosen.reconstruct:
        chosen_weights.restore()
    if not single:
        with meter.step("prune"):
            prune_model(inner, plans[chosen.rearrange])
    selection = {
        "chosen": chosen.name,
        "rule": "the lowest mean loss on the held-out batches (the simpler candidate on a tie)",
        "held_out_batches": len(held),
        "held_out_tokens": batch_tokens(held),
        "forwards": forwards,
        "labelling_forwards": labelling,
        "reconstructions": reconstructions,
        "candidates": [c.to_dict() for c in options],
    }
    return chosen, selection


def _same_units(a: PruningPlan, b: PruningPlan) -> bool:
    return a.heads == b.heads and a.neurons == b.neurons


def _check_cut_widths(plan: PruningPlan, geometry, pattern) -> None:
    """Refuse, before the cut, an N:M pattern the cut model's widths cannot hold: the attention output
    projection's inputs (kept heads x head_dim) and the FFN's down projection's (kept neurons)."""
    if not pattern.is_nm:
        return
    for i, (heads, neurons) in enumerate(zip(plan.heads, plan.neurons)):
        for what, width in (("attention output", len(heads) * geometry.head_dim), ("FFN output", len(neurons))):
            if width % pattern.m:
                raise PlanError(
                    f"layer {i} keeps {width} inputs of its {what} projection, not a multiple of {pattern.m}, so "
                    f"sparsity_pattern {pattern.name} cannot hold: keep FFN widths multiples of {pattern.m} "
                    "(ffn_multiple_of) or use 'unstructured'"
                )


def _recorder(inner, reference: str, used: dict, bias_compensation: bool) -> DenseTargets | None:
    """A ``DenseTargets`` for the scoring pass to fill when reconstruction can read its targets from it (asked for,
    or ``"auto"`` on the CPU when they fit in host memory); else None. Refuses ``"activations"`` that cannot be."""
    if reference not in ("auto", "activations"):
        return None
    why_not = None
    if not used["score"]:
        why_not = "no scoring pass runs (a given plan, or a score without gradients)"
    elif bias_compensation:
        why_not = "bias_compensation needs the removed units' dense inputs"
    elif len(used["reconstruct"]) > len(used["score"]):
        why_not = (
            f"reconstruction uses {len(used['reconstruct'])} batches, scoring only {len(used['score'])} "
            "(raise scoring_batches or lower reconstruct_batches)"
        )
    if why_not is not None:
        if reference == "activations":
            raise DenseReferenceError(f"reference='activations' records the targets while scoring, but {why_not}")
        return None
    size = DenseTargets.size(inner, used["reconstruct"])
    gib = size / 2**30
    if reference == "activations":
        return DenseTargets(inner, len(used["reconstruct"]), f"asked for ({gib:.2f} GiB of recorded targets)")
    if next(inner.parameters()).device.type != "cpu" or not fits_in_host(size):
        return None
    why = (
        f"recorded by the scoring pass ({gib:.2f} GiB, host memory): on the CPU running the dense layers again "
        "costs more than keeping their outputs"
    )
    return DenseTargets(inner, len(used["reconstruct"]), why)


def _plan(
    inner,
    scores,
    batches,
    dense_losses,
    searching,
    budget,
    split,
    targets,
    latency_table,
    loss_fn,
    seq_len,
    plan_options,
    micro_batch_size=None,
):
    """The plan, by the budget search or ``PruningPlan.from_scores``, and the search's report (or why none ran)."""
    split_report = None
    options = {"seq_len": seq_len, **plan_options}
    if searching:
        from .budget_search import search_budget_split

        plan, split_report = search_budget_split(
            inner,
            scores,
            batches,
            flops_budget=targets["flops_budget"],
            params_budget=targets["params_budget"],
            loss_fn=loss_fn,
            max_batches=None,  # search_batches chose them
            dense_losses=dense_losses,
            micro_batch_size=micro_batch_size,
            **options,
        )
    else:
        if budget and split != "search":
            options["budget_split"] = split
        if budget and split == "search":
            why = "latency_budget: units priced by the latency table" if targets["latency_budget"] is not None else None
            split_report = {"searched": False, "why": why or "uniform/balanced sweep their own head count"}
        plan = PruningPlan.from_scores(scores, **targets, latency_table=latency_table, **options)
    return plan, split_report


# What ``plan_options`` may hold: ``PruningPlan.from_scores``'s shape options, and the budget search's own.
PLAN_OPTIONS = ("ranking", "normalize_heads", "min_heads_per_layer", "ffn_multiple_of", "attention_unit", "uniform")
PLAN_OPTIONS += ("balanced", "heads_kept", "min_ffn_per_layer")
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
