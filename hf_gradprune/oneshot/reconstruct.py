"""Layer-wise least-squares reconstruction of a pruned model, with no retraining (Kwon et al. 2022, §4.3).

For every pruned sub-layer (attention, then FFN, from the first layer to the last) the kept units'
contributions are rescaled so that the residual stream right after the sub-layer (before any post-norm)
best reproduces the *dense* model's, on the dense model's own input:

    min_s  sum over tokens  || y_dense - (r + bias + sum_i s_i c_i) ||^2  +  lam ||s - 1||^2

where ``c_i`` is kept unit ``i``'s contribution (its slice of the output projection times its input) and
``r`` the residual, both in the pruned model, which already carries the reconstruction of the layers
before. The target includes the dense residual, so errors carried in from earlier layers are corrected
too (fitting only the removed units' contribution barely moves the error). The scales are folded into
the output projection's columns: the model keeps its shape, and saves and reloads as any pruned model.
Optionally the bias also takes the removed units' mean dense contribution (FLAP, An et al. 2024).

One module of about 700 lines because the layer loop, the normal equations and the fold share one sub-layer's
state; the calibration stream (``stream.py``) and the dense reference (``reference.py``) are their own modules.

Where the work happens: on the model's device. Per sub-layer, ``Z^T Z`` of the output projection's input and
``sum z * (e W)`` are float32 products summed in float64 where the activations are; ``A^T A`` is their unit
blocks against ``W^T W`` (one matrix product per batch for heads and neurons alike), solved there (Cholesky);
only the scales and the report's numbers leave the device.

Cost: one forward per calibration batch records what every layer is called with (the layers after the
first pass their input through); then each layer runs alone on the stored hidden states: once for the
dense layer (its outputs give both sub-layers' targets and the next layer's dense input; not at all when
the targets were recorded, ``DenseTargets``), and for the pruned layer once up to the attention's end and
once through the FFN, then once more after the FFN's fold. With ``reuse_ffn_inputs`` (a pre-norm family:
the attention block's output is its projection's, and the FFN ends the layer) the FFN's pass replays the
attention block's fitted output instead of running it, and the layer's output after the fold is that pass's
output plus the fold's change: one pruned pass per layer in all. Besides the passes, per layer: ``u^2 (N + h)``
products for ``u`` kept units, ``N`` tokens and hidden size ``h``, and a ``u^3 / 3`` Cholesky: with few
calibration tokens and wide FFNs (a 1B model on 2,048 tokens) these outweigh the passes.

Memory on the device, for the whole call: the pruned model's weights, one dense layer (``DenseLayers``
brings one at a time unless the reference is a resident model), and per calibration token: the pruned
and the dense hidden state and the dense layer's attention output (three hidden vectors in the model's
dtype), plus, when activations are reused, the attention block's output and the FFN's inputs (kept units);
and the normal equations of one sub-layer (input features^2 float64). Padding tokens count for nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..planning.plan import PlanError, PruningPlan
from ..state import pruning_state, unwrap_model
from ..units import HEAD, NEURON
from .budget_search import plan_gates, unit_gates
from .calibration import calibration_batches, check_count, token_mask
from .reference import DenseLayers, DenseTargets
from .stream import LayerStream, StreamError, block_of, first, like, replaying

logger = logging.getLogger(__name__)


class ReconstructionError(ValueError):
    """A reconstruction that cannot be done as asked (the model is left unchanged)."""


@dataclass
class SubLayerReport:
    """What reconstruction did to one sub-layer. Errors: mean squared error per token and hidden feature
    of the residual stream against the dense model's, on the calibration tokens."""

    layer: int
    kind: str  # HEAD (attention) or NEURON (FFN)
    units: int  # kept units (the scales fitted)
    error_before: float
    error_after: float
    skipped: str | None = None  # why nothing was changed, when nothing was
    min_scale: float = 1.0
    max_scale: float = 1.0
    bias_compensated: bool = False
    note: str | None = None  # e.g. why the scales were left at 1 while the bias still moved
    read_tokens: str = "all"  # "head": fitted on the tokens a classifier head reads (the last layer)
    tokens: int = 0  # the tokens fitted on
    # fitted (or skipped) on fewer than TOKENS_PER_UNIT tokens per kept unit: about how many tokens would be enough
    tokens_needed: int | None = None


@dataclass
class ReconstructionReport:
    sublayers: list[SubLayerReport] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    device: str = ""  # where the normal equations were accumulated and solved
    reference: str = ""  # where the dense layers lived (DenseLayers.where)
    reused_ffn_inputs: bool = False  # the pruned layer's output after the FFN fold came without another pass

    @property
    def skipped(self) -> list[SubLayerReport]:
        return [r for r in self.sublayers if r.skipped]

    @property
    def error_before(self) -> float:
        """Summed over the sub-layers that have units, each measured with the earlier ones reconstructed (so
        not the model's end-to-end error)."""
        return sum(r.error_before for r in self.sublayers if r.units)

    @property
    def error_after(self) -> float:
        return sum(r.error_after for r in self.sublayers if r.units)

    def to_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "seconds": self.seconds,
            "device": self.device,
            "reference": self.reference,
            "reused_ffn_inputs": self.reused_ffn_inputs,
            "sublayers": [asdict(r) for r in self.sublayers],
        }

    def summary(self) -> str:
        lines = [f"{'layer':>5} {'part':>9} {'units':>6} {'error before':>13} {'after':>11} {'scales':>15}  note"]
        for r in self.sublayers:
            part = "attention" if r.kind == HEAD else "FFN"
            scales = f"{r.min_scale:.2f}..{r.max_scale:.2f}"
            note = f"skipped: {r.skipped}" if r.skipped else ("+ bias" if r.bias_compensated else "")
            note += f" ({r.note})" if r.note else ""
            errors = f"{r.error_before:>13.4g} {r.error_after:>11.4g}"
            lines.append(f"{r.layer:>5} {part:>9} {r.units:>6} {errors} {scales:>15}  {note}")
        lines.append(f"{self.tokens} calibration tokens, {self.seconds:.1f} s on {self.device or '?'}")
        return "\n".join(lines)


def reconstruct(
    model: nn.Module,
    dense: nn.Module | DenseLayers | DenseTargets,
    calibration: Iterable,
    *,
    least_squares: bool = True,
    bias_compensation: bool = False,
    ridge: float = 1e-4,
    max_scale: float = 10.0,
    raise_ridge: int = 3,
    max_batches: int | None = None,
    reuse_ffn_inputs: bool | None = None,
    plan: PruningPlan | None = None,
    classifier_tokens: bool = True,
) -> ReconstructionReport:
    """Rescale the kept units of every pruned sub-layer of ``model`` to reproduce ``dense``, in place.

    Args:
        model: the pruned model (after ``prune_model``).
        dense: its reference: the model before this prune (the unpruned one, or a milder plan of the
            same model), or its layers as ``DenseLayers.capture(model)`` took them before the prune (held in
            host memory or on disk, brought to the device one layer at a time), or the dense targets recorded
            on these very batches (``DenseTargets``, from ``prune_oneshot``'s scoring pass: no dense layer runs).
            It must keep every unit ``model`` keeps. It is not changed.
        calibration: batches of model inputs (dicts, e.g. a ``DataLoader`` with a transformers collator);
            labels are ignored. Every batch is held in memory for the whole call.
        least_squares: fit per-unit scales (ridge-regularised towards 1 with ``ridge`` times the mean
            diagonal of ``A^T A``). When a scale would exceed ``max_scale`` in size (Kwon et al. skip the
            layer there), the ridge is raised tenfold up to ``raise_ridge`` times, and the report notes it.
            A sub-layer is skipped, and the log says why, when its system stays ill-conditioned or absurd,
            or the fit would not lower its error.
        bias_compensation: add the removed units' mean contribution (in the dense model) to the output
            projection's bias, where it has one (FLAP).
        reuse_ffn_inputs: keep each batch's attention output and FFN inputs to replay the attention in the
            FFN's pass and update the layer's output after the fold, instead of running them again. None
            (default): on the CPU, where a pass costs more than the memory; not on an accelerator.
        plan: fit only the units this plan keeps (original ids, a subset of the model's live units), with the
            model's other live units gated off (``unit_gates``) for the whole call: the model keeps its shape,
            and cutting it to ``plan`` afterwards (``prune_model``) keeps the fit. ``prune_oneshot`` tries
            candidate plans this way before its one cut. None: the units the model has.
        classifier_tokens: for a sequence classifier, fit the last layer on the tokens its head reads
            (``FamilyAdapter.head_read_tokens``: BERT's [CLS], a decoder's last non-pad token) instead of every
            token: nothing else of that layer reaches the head. Earlier layers still fit every token (their
            outputs feed the attention of the layers after).

    Returns a ``ReconstructionReport`` (per sub-layer error before and after, and what was skipped).
    """
    started = time.perf_counter()
    if not (least_squares or bias_compensation):
        raise ReconstructionError("nothing to do: set least_squares and/or bias_compensation")
    if not (isinstance(ridge, (int, float)) and math.isfinite(ridge) and ridge >= 0):
        raise ReconstructionError(f"ridge must be a finite number >= 0, got {ridge!r}")
    if not (isinstance(max_scale, (int, float)) and max_scale > 0):
        raise ReconstructionError(f"max_scale must be a number > 0, got {max_scale!r}")
    if isinstance(raise_ridge, bool) or not isinstance(raise_ridge, int) or raise_ridge < 0:
        raise ReconstructionError(f"raise_ridge must be an integer >= 0, got {raise_ridge!r}")
    if reuse_ffn_inputs not in (None, True, False):
        raise ReconstructionError(f"reuse_ffn_inputs must be True, False or None (auto), got {reuse_ffn_inputs!r}")
    max_batches = check_count("max_batches", max_batches)
    student, reference, teacher = _check_pair(model, dense)
    batches = list(calibration_batches(calibration, student, max_batches=max_batches))
    masks, tokens = calibration_tokens(batches)
    recorded = isinstance(reference, DenseTargets)
    if recorded:
        if bias_compensation:
            raise ReconstructionError(
                "bias_compensation needs the removed units' inputs, which recorded targets do not hold: pass the "
                "dense model or DenseLayers"
            )
        if (
            not reference.complete
            or any(t.shape[:2] != m.shape for t, m in zip(reference.targets(0)[HEAD], masks))
            or len(reference.targets(0)[HEAD]) != len(masks)
        ):
            raise ReconstructionError(
                "the recorded dense targets are not those of these calibration batches: record them on the same "
                "batches, or pass the dense model"
            )

    s_state = pruning_state(student)
    adapter = s_state.adapter
    kept_ids, gates = _kept_and_gates(student, s_state, plan)
    last_masks = None
    if classifier_tokens:
        reads = [adapter.head_read_tokens(student, b) for b in batches]
        if all(r is not None for r in reads):
            last_masks = [m & r.to(m.device) for m, r in zip(masks, reads)]
            if not any(bool(m.any()) for m in last_masks):
                last_masks = None  # the head reads only padding: fit every token rather than none
    device = next(student.parameters()).device
    if reuse_ffn_inputs is None:
        reuse_ffn_inputs = device.type == "cpu"
    report = ReconstructionReport(tokens=tokens, device=str(device), reference=reference.where)
    modes = (student.training, None if teacher is None else teacher.training)
    student.eval()
    if teacher is not None:
        teacher.eval()
    try:
        with torch.no_grad(), unit_gates(student, *gates):
            s_stream = LayerStream(student, s_state.layers, batches)
            # The layers get the same inputs and arguments in both models (embeddings are never pruned), so the
            # dense stream starts from the pruned one's record; a resident dense model that attends another way
            # (eager vs SDPA: other mask formats) records its own.
            own = teacher is not None and _attn(teacher) != _attn(student)
            t_stream = LayerStream(teacher, pruning_state(teacher).layers, batches) if own else s_stream.fork()
            if recorded:
                t_stream = None
            dtype = _compute_dtype(student)
            for index, s_layer in enumerate(s_state.layers):
                kept = {HEAD: kept_ids[0][index], NEURON: kept_ids[1][index]}
                live = {HEAD: s_state.head_ids[index], NEURON: s_state.neuron_ids[index]}
                last = last_masks is not None and index == len(s_state.layers) - 1
                fit_masks = last_masks if last else masks
                have = {HEAD: reference.head_ids[index], NEURON: reference.neuron_ids[index]}
                removed = {}
                for k in (HEAD, NEURON):
                    keeps = set(kept[k])
                    removed[k] = [p for p, i in enumerate(have[k]) if i not in keeps]
                if recorded:
                    targets = reference.targets(index)
                else:
                    with reference.layer(index, device) as t_layer:
                        targets = _dense_targets(
                            adapter, t_layer, t_stream, index, masks, removed if bias_compensation else None, dtype
                        )
                next_hidden = None
                replay = None  # per batch, the attention block's output after its fold (reused activations)
                for kind in (HEAD, NEURON):
                    if not kept[kind]:
                        report.sublayers.append(SubLayerReport(index, kind, 0, math.nan, math.nan, "no units left"))
                        continue
                    keeps = set(kept[kind])
                    positions = [p for p, i in enumerate(live[kind]) if i in keeps]
                    entry = _SubLayer(
                        adapter, index, kind, s_layer, positions, len(live[kind]), s_state.geometry, dtype
                    )
                    point = adapter.residual_output(s_layer, kind)
                    # the FFN's pass runs to the layer's end when its output is the layer's (pre-norm families)
                    through = kind == NEURON and reuse_ffn_inputs and point == (s_layer, "output")
                    block = block_of(s_layer, entry.proj) if kind == HEAD and reuse_ffn_inputs else None
                    attention = block_of(s_layer, adapter.attention_output(s_layer)) if replay else None
                    rows = _passes(
                        s_stream,
                        s_layer,
                        index,
                        entry,
                        point,
                        targets[kind],
                        fit_masks,
                        through,
                        block,
                        (attention, replay),
                    )
                    result, change = entry.fit(
                        targets.get(("removed", kind)), least_squares, bias_compensation, ridge, max_scale, raise_ridge
                    )
                    result.read_tokens = "head" if last else "all"
                    _log(result)
                    report.sublayers.append(result)
                    if block is not None and all(o is not None and torch.equal(first(o), p) for _, p, _, o in rows):
                        # the block's output is its projection's (no post-processing: pre-norm attention), so after
                        # the fold it is that output plus the fold's change, and the FFN's pass need not run it
                        replay = [like(o, p if change is None else change(z, p)) for z, p, _, o in rows]
                    if through:
                        next_hidden = [out if change is None else change(z, out) for z, _, out, _ in rows]
                        report.reused_ffn_inputs = True
                    del rows
                if next_hidden is None:
                    s_stream.advance(s_layer, index)
                else:
                    s_stream.hidden = next_hidden
                if t_stream is not None:
                    t_stream.hidden = targets["output"]
    except StreamError as err:  # the family's layers cannot be replayed (raised at the first layer)
        raise ReconstructionError(str(err)) from None
    finally:
        student.train(modes[0])
        if teacher is not None:
            teacher.train(modes[1])
    short = [r for r in report.sublayers if r.tokens_needed and not r.skipped]
    if short:
        logger.warning(
            "reconstruction: %d sub-layers were fitted on fewer than %d tokens per kept unit (up to %d tokens would be "
            "enough): with too few tokens a fit lowers its own error and can still make the model worse "
            "(prune_oneshot's default measures that on held-out batches)",
            len(short),
            TOKENS_PER_UNIT,
            max(r.tokens_needed for r in short),
        )
    report.seconds = time.perf_counter() - started
    return report


def _attn(model) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


def _log(r: SubLayerReport) -> None:
    part = "attention" if r.kind == HEAD else "FFN"
    if r.skipped:
        logger.warning("reconstruction: layer %d %s skipped: %s", r.layer, part, r.skipped)
    else:
        logger.info(
            "reconstruction: layer %d %s error %.4g -> %.4g (scales %.3f..%.3f)",
            r.layer,
            part,
            r.error_before,
            r.error_after,
            r.min_scale,
            r.max_scale,
        )


def _check_pair(model, dense) -> tuple[nn.Module, DenseLayers, nn.Module | None]:
    """The pruned model, its reference as ``DenseLayers``, and the dense model when one was given; or a
    ``ReconstructionError`` saying what is wrong."""
    try:
        student = unwrap_model(model)
        teacher = None if isinstance(dense, (DenseLayers, DenseTargets)) else unwrap_model(dense)
    except TypeError as err:
        raise ReconstructionError(f"reconstruct needs transformers models: {err}") from None
    if student is teacher:
        raise ReconstructionError(
            "the dense reference is the pruned model itself: pass a copy of the model taken before pruning"
        )
    try:
        s_state = pruning_state(student)
        reference = dense if teacher is None else DenseLayers.of_model(teacher)
    except ValueError as err:
        raise ReconstructionError(f"cannot read the models' pruning state: {err}") from None
    if len(reference) == 0:
        raise ReconstructionError("the dense reference was closed (DenseLayers.close): capture it again")
    if s_state.geometry != reference.geometry:
        raise ReconstructionError(
            "the dense reference is not the pruned model's original: their unpruned geometries differ "
            f"({reference.geometry} vs {s_state.geometry}); pass a copy of this model taken before pruning"
        )
    for what, mine, theirs in (
        ("heads", s_state.head_ids, reference.head_ids),
        ("FFN neurons", s_state.neuron_ids, reference.neuron_ids),
    ):
        for layer, (a, b) in enumerate(zip(mine, theirs)):
            if not set(a) <= set(b):
                raise ReconstructionError(
                    f"layer {layer}: the pruned model keeps {what} the dense reference lacks; the reference must "
                    "be the model before this prune (or a milder plan of it)"
                )
    try:
        for kind in (HEAD, NEURON):
            s_state.adapter.residual_output(s_state.layers[0], kind)
    except NotImplementedError as err:
        raise ReconstructionError(str(err)) from None
    return student, reference, teacher


def _kept_and_gates(student, s_state, plan) -> tuple[tuple[list, list], tuple]:
    """Per kind and layer the original ids of the units to fit, and ``unit_gates``' factors (None, None: no gates)."""
    if plan is None:
        return (s_state.head_ids, s_state.neuron_ids), (None, None)
    if not isinstance(plan, PruningPlan):
        raise ReconstructionError(f"plan must be a PruningPlan, got {type(plan).__name__}")
    try:
        gates = plan_gates(student, plan)
    except PlanError as err:
        raise ReconstructionError(f"plan: {err}") from None
    return (plan.heads, plan.neurons), gates


def calibration_tokens(batches: list[dict]) -> tuple[list[torch.Tensor], int]:
    """Per batch the [batch, seq] mask of its real tokens, and their count; ``CalibrationError`` /
    ``ReconstructionError`` when a batch has no tokens to read or all of them are padding."""
    masks = [token_mask(b) for b in batches]
    tokens = int(sum(m.sum() for m in masks))
    if tokens == 0:
        raise ReconstructionError(
            f"the {len(batches)} calibration batches for reconstruction hold no tokens (every attention_mask is 0)"
        )
    return masks, tokens


def _compute_dtype(model) -> torch.dtype:
    # float32 whatever the model's dtype (bf16 products summed over tokens lose most of their bits); float64 stays
    return torch.promote_types(next(model.parameters()).dtype, torch.float32)


def _passes(stream, layer, index, entry, point, targets, masks, through, block, replay) -> list[tuple]:
    """Run the pruned ``layer`` over every batch for one sub-layer, adding each batch to ``entry``'s normal
    equations. ``through``: run to the layer's end and keep its output; ``block``: keep that module's output;
    ``replay``: ``(attention block, outputs per batch)`` the block returns instead of running. Per batch
    ``(z, projection output, layer output, block output)`` (the last three None unless kept; z only when some are)."""
    rows, seen = [], []
    grab = block.register_forward_hook(lambda m, a, o: seen.append(o)) if block is not None else None
    try:
        with replaying(*replay) as current:
            for b, mask in enumerate(masks):
                current[0] = b
                reads = [(entry.proj, "input"), (entry.proj, "output"), point]
                got, out = stream.run(layer, index, b, reads, stop=not through)
                z = entry.add(*got, targets[b], mask)
                keep = through or block is not None
                rows.append(
                    (z if keep else None, got[1] if block is not None else None, out if through else None, None)
                )
    finally:
        if grab is not None:
            grab.remove()
    if block is not None:
        if len(seen) != len(rows):
            return [(z, p, out, None) for z, p, out, _ in rows]
        rows = [(z, p, out, o) for (z, p, out, _), o in zip(rows, seen)]
    return rows


def _dense_targets(adapter, t_layer, stream: LayerStream, index: int, masks, removed, dtype) -> dict:
    """One pass of the dense layer over every batch: per kind the residual stream after the sub-layer (the
    targets), the layer's output (the next dense input), and with ``removed`` (bias compensation) the sum
    over the real tokens of the removed units' contributions, per kind."""
    reads = [adapter.residual_output(t_layer, HEAD), adapter.residual_output(t_layer, NEURON)]
    sums = {}
    if removed is not None:
        for kind in (HEAD, NEURON):
            if removed[kind]:
                proj = (adapter.attention_output if kind == HEAD else adapter.ffn_output)(t_layer)
                weight = adapter.output_weight(proj).detach()
                group = weight.shape[1] // len(_ids(adapter, t_layer, kind))
                cols = (torch.tensor(removed[kind])[:, None] * group + torch.arange(group)[None, :]).reshape(-1)
                cols = cols.to(weight.device)
                reads.append((proj, "input"))
                sums[kind] = (
                    cols,
                    weight[:, cols].to(dtype),
                    torch.zeros(len(cols), dtype=torch.float64, device=weight.device),
                )
    out = {HEAD: [], NEURON: [], "output": []}
    for b, mask in enumerate(masks):
        got, output = stream.run(t_layer, index, b, reads, stop=False)
        out[HEAD].append(got[0])
        out[NEURON].append(got[1])
        out["output"].append(output)
        for slot, kind in enumerate(k for k in (HEAD, NEURON) if k in sums):
            cols, _, acc = sums[kind]
            z = got[2 + slot]
            keep = mask.reshape(-1).to(z.device)
            acc += z.reshape(-1, z.shape[-1])[keep][:, cols].to(dtype).sum(0).double()
    for kind, (_, weight, acc) in sums.items():
        out[("removed", kind)] = weight.double() @ acc  # [hidden]: summed over tokens
    return out


def _ids(adapter, layer, kind) -> range:
    return range(adapter.num_heads(layer) if kind == HEAD else adapter.ffn_width(layer))


# The tokens per kept unit below which the report says a fit had too few (``tokens_needed``) and how many would be
# enough. Measured on SmolLM2-135M at 20% of block parameters (up to 1,536 FFN units per layer; benchmarks/README.md
# §10.2): perplexity 40.0 one-shot; reconstructed on 256 / 512 / 1,024 / 2,048 / 8,192 tokens 48.6 / 41.7 / 38.0 /
# 36.5 / 36.2: worse than none below one token per unit, within 1% of the most measured from about two.
TOKENS_PER_UNIT = 2

# Tokens whose Z^T Z products are summed in the compute dtype before they join the float64 sum.
_FLUSH_TOKENS = 16384


class _SubLayer:
    """One pruned sub-layer: its normal equations over the calibration tokens, accumulated on the device where
    the activations are, the fit, and the fold."""

    def __init__(self, adapter, index, kind, s_layer, positions, live, geometry, dtype):
        self.adapter, self.index, self.kind, self.units, self.dtype = adapter, index, kind, len(positions), dtype
        self.group = geometry.head_dim if kind == HEAD else 1  # input features per unit
        self.proj = (adapter.attention_output if kind == HEAD else adapter.ffn_output)(s_layer)
        # the input features of the units fitted (all of the projection's unless a plan gates some off)
        self.cols = None
        if len(positions) != live:
            self.cols = (torch.tensor(positions)[:, None] * self.group + torch.arange(self.group)[None, :]).reshape(-1)
        weight = adapter.output_weight(self.proj).detach().to(dtype)
        self.weight = weight if self.cols is None else weight[:, self.cols.to(weight.device)]  # [hidden, units * group]
        self.bias = getattr(self.proj, "bias", None)
        self.n = 0
        self.sums = None
        self.pending, self.pending_tokens = None, 0  # Z^T Z not yet added to the float64 sum

    def _flush(self) -> None:
        if self.pending is not None and self.pending_tokens:
            self.sums["ztz"] += self.pending.double()
            self.pending.zero_()
            self.pending_tokens = 0

    def _zeros(self, device, hidden):
        f64, features = torch.float64, self.units * self.group
        self.sums = {
            # Z^T Z over the projection's input features: A^T A is its blocks (a unit's group x group features)
            # summed against W^T W's, so one matrix product per batch serves heads and neurons alike
            "ztz": torch.zeros(features, features, dtype=f64, device=device),
            "zew": torch.zeros(features, dtype=f64, device=device),  # sum over tokens of z * (e W): A^T e by blocks
            "z_sum": torch.zeros(features, dtype=f64, device=device),  # for A's row sums (the bias shift)
            "e_sum": torch.zeros(hidden, dtype=f64, device=device),
            "e_sq": torch.zeros((), dtype=f64, device=device),
        }

    def add(self, z, proj_out, y_s, y_t, mask) -> torch.Tensor:
        """Accumulate one batch: ``z`` the projection's input, ``proj_out`` its output, ``y_s`` / ``y_t`` the
        residual stream after the sub-layer in the pruned and the dense model. Returns ``z`` as [tokens, in]."""
        dtype, device = self.dtype, z.device
        hidden = self.weight.shape[0]
        if self.sums is None:
            self._zeros(device, hidden)
        keep = mask.reshape(-1).to(device)
        z_all = z.reshape(-1, z.shape[-1]).to(dtype)
        z = z_all[keep]
        if self.cols is not None:  # gated-off units read 0 and are not fitted
            z = z[:, self.cols.to(device)]
        w = self.weight.to(device)
        contribution = proj_out.reshape(-1, hidden)[keep].to(dtype)  # z @ w.t() + bias, as the model computed it
        if self.bias is not None:
            contribution = contribution - self.bias.detach().to(device, dtype)
        e = (y_t.reshape(-1, hidden)[keep].to(dtype) - y_s.reshape(-1, hidden)[keep].to(dtype)) + contribution
        s = self.sums
        self.n += z.shape[0]
        s["e_sum"] += e.sum(0).double()
        s["e_sq"] += e.double().pow(2).sum()
        # Z^T Z sums in the compute dtype over up to _FLUSH_TOKENS tokens (as one batch of that size would), then
        # in float64: converting a units x units float32 matrix at every small batch cost more than its product
        if self.pending is None:
            self.pending = torch.zeros_like(s["ztz"], dtype=dtype)
        self.pending.addmm_(z.t(), z)
        self.pending_tokens += z.shape[0]
        if self.pending_tokens >= _FLUSH_TOKENS:
            self._flush()
        s["zew"] += (z * (e @ w)).sum(0).double()
        s["z_sum"] += z.sum(0).double()
        return z_all

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Sum a per-feature vector, or a features x features matrix, over each unit's group of features."""
        u, g = self.units, self.group
        if g == 1:
            return x
        if x.dim() == 1:
            return x.reshape(u, g).sum(1)
        return x.reshape(u, g, u, g).sum((1, 3))

    def fit(self, removed_sum, least_squares, bias_compensation, ridge, max_scale, raise_ridge):
        """Solve, fold, report. Returns the report and, when the weights changed, ``change(z, out)``: ``out``
        plus what the fold added to the projection's output for inputs ``z`` (all tokens)."""
        self._flush()
        self.pending = None
        s, n, u = self.sums, self.n, self.units
        hidden = self.weight.shape[0]
        device = s["ztz"].device
        f64 = torch.float64
        w = self.weight.to(device)
        # A's column for unit i is its contribution z_i W_i^T per token: A^T A = blocks of (Z^T Z) * (W^T W),
        # A^T e = blocks of sum_t z * (e W); W^T W is a product in the compute dtype, as the per-batch ones
        gram = self._blocks(s.pop("ztz").mul_((w.t() @ w).double()))
        w = w.double()
        cross = self._blocks(s["zew"])
        compensate = bias_compensation and self.bias is not None and removed_sum is not None
        delta = removed_sum.to(device) / max(n, 1) if compensate else torch.zeros(hidden, dtype=f64, device=device)
        # b = e - delta (the bias moves by delta): A^T b and b^T b from the accumulated sums
        atb = cross - self._blocks(s["z_sum"] * (delta @ w))
        btb = s["e_sq"] - 2 * delta @ s["e_sum"] + n * delta @ delta
        ones = torch.ones(u, dtype=f64, device=device)
        denom = n * hidden

        def error(scales, bt_b, at_b):
            return float((scales @ gram @ scales - 2 * scales @ at_b + bt_b) / denom)

        before = error(ones, s["e_sq"], cross)
        report = SubLayerReport(self.index, self.kind, u, before, before)
        has_bias = self.bias is not None
        if not (least_squares or compensate):
            report.skipped = "no bias to compensate" if not has_bias else "no unit was removed here"
            return report, None
        scales = ones
        report.tokens = n
        if n < TOKENS_PER_UNIT * u:
            report.tokens_needed = TOKENS_PER_UNIT * u
        if least_squares:
            scales, why, used = _solve(gram, atb, ridge, max_scale, raise_ridge)
            if why and ("max_scale" in why or "ill-conditioned" in why):
                if report.tokens_needed:
                    needed = report.tokens_needed
                    why += f": too little calibration data ({n} tokens for {u} units; about {needed} would be enough)"
                else:
                    why += f" ({n} tokens for {u} units: not for lack of data)"
            if used != ridge and not why:
                report.note = f"ridge raised to {used:g} to keep every scale within max_scale"
            if why and not compensate:
                report.skipped = why
                return report, None
            if why:  # the bias compensation alone may still help
                report.note = f"scales left at 1: {why}"
        after = error(scales, btb, atb)
        if not math.isfinite(after) or after > before:
            report.skipped = f"the fit would not lower the error ({before:.4g} -> {after:.4g})"
            return report, None
        change = self._fold(scales, delta if compensate else None)
        report.error_after = after
        report.min_scale, report.max_scale = float(scales.min()), float(scales.max())
        report.bias_compensated = compensate
        return report, change

    @torch.no_grad()
    def _fold(self, scales: torch.Tensor, delta: torch.Tensor | None):
        """Scale each kept unit's columns of the output projection; move the bias by ``delta``. Returns
        ``change(z, out)``: ``out`` plus what the fold changed in the projection's output for input ``z``."""
        weight = self.adapter.output_weight(self.proj)  # a view: in-place changes reach the parameter
        dtype = torch.promote_types(weight.dtype, torch.float32)
        before = weight.detach().to(self.dtype, copy=True)  # not a view: the parameter changes below
        per_column = scales.repeat_interleave(self.group).to(weight.device, dtype)
        if self.cols is not None:  # the gated-off units' columns stay (a cut to the plan drops them)
            full = torch.ones(weight.shape[1], dtype=dtype, device=weight.device)
            full[self.cols.to(weight.device)] = per_column
            per_column = full
        weight.copy_((weight.to(dtype) * per_column[None, :]).to(weight.dtype))
        moved = None
        if delta is not None:
            bias = self.proj.bias
            old = bias.detach().to(self.dtype, copy=True)  # not a view: changed below
            bias.copy_((bias.to(dtype) + delta.to(bias.device, dtype)).to(bias.dtype))
            moved = bias.detach().to(self.dtype) - old
        diff = weight.detach().to(self.dtype) - before  # the folded weights, as stored

        def change(z, out):
            step = z.to(diff.device, self.dtype) @ diff.t()
            if moved is not None:
                step = step + moved
            return (out.to(self.dtype) + step.reshape(out.shape)).to(out.dtype)

        return change


def _solve(gram, atb, ridge, max_scale, raises: int = 0) -> tuple[torch.Tensor, str | None, float]:
    """Scales minimising ||A s - b||^2 + lam ||s - 1||^2 with lam = ``ridge`` x mean diag(A^T A), or ones and
    the reason they cannot be trusted; also the ridge used. Solved where ``gram`` is.

    When a scale exceeds ``max_scale`` the ridge is raised tenfold, up to ``raises`` times (from 1e-4 when
    it was 0): a stronger pull towards 1 often gives a sane fit where Kwon et al. would skip the layer.
    """
    u = gram.shape[0]
    ones = torch.ones(u, dtype=gram.dtype, device=gram.device)
    diag = gram.diagonal()
    if not torch.isfinite(gram).all() or not torch.isfinite(atb).all():
        return ones, "non-finite activations on the calibration data", ridge
    scale = float(diag.mean())
    if scale <= 0:
        return ones, "the kept units contribute nothing on the calibration data", ridge
    eye = torch.eye(u, dtype=gram.dtype, device=gram.device)
    worst = math.inf
    for attempt in range(raises + 1):
        used = ridge if attempt == 0 else max(ridge, 1e-5) * 10**attempt
        lam = used * scale
        factor, info = torch.linalg.cholesky_ex(gram + lam * eye)
        if int(info) != 0:
            continue  # ill-conditioned at this ridge: a larger one may do
        s = torch.cholesky_solve((atb + lam * ones)[:, None], factor)[:, 0]
        if not torch.isfinite(s).all():
            continue
        worst = float(s.abs().max())
        if worst <= max_scale:
            return s, None, used
    if math.isinf(worst):
        return ones, "the least-squares system is ill-conditioned (raise ridge to regularise it)", ridge
    return (
        ones,
        f"a scale of {worst:.3g} exceeds max_scale={max_scale:g} even at ridge {used:g}",
        ridge,
    )
