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

Optionally the projection's bias also takes the removed units' mean contribution on the calibration
tokens (FLAP, An et al. 2024), measured in the dense model.

Cost: one forward per calibration batch records what every layer is called with; then each layer runs
alone on the stored hidden states (a few layer passes per layer, for both models). Memory: the normal
equations per sub-layer (``A^T A``: units x units, ``A^T b``), never per-token contributions, plus one
hidden state per calibration token for each model. The scales are float64 arithmetic on float32
products; padding tokens count for nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..state import pruning_state, unwrap_model
from ..units import HEAD, NEURON
from .calibration import calibration_batches, check_count, model_inputs, token_mask

logger = logging.getLogger(__name__)

# Elements of the per-chunk [tokens, heads, hidden] contribution tensor; bounds memory on big models.
_CHUNK_ELEMENTS = 1 << 24


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


@dataclass
class ReconstructionReport:
    sublayers: list[SubLayerReport] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0

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
        return {"tokens": self.tokens, "seconds": self.seconds, "sublayers": [asdict(r) for r in self.sublayers]}

    def summary(self) -> str:
        lines = [f"{'layer':>5} {'part':>9} {'units':>6} {'error before':>13} {'after':>11} {'scales':>15}  note"]
        for r in self.sublayers:
            part = "attention" if r.kind == HEAD else "FFN"
            scales = f"{r.min_scale:.2f}..{r.max_scale:.2f}"
            note = f"skipped: {r.skipped}" if r.skipped else ("+ bias" if r.bias_compensated else "")
            note += f" ({r.note})" if r.note else ""
            errors = f"{r.error_before:>13.4g} {r.error_after:>11.4g}"
            lines.append(f"{r.layer:>5} {part:>9} {r.units:>6} {errors} {scales:>15}  {note}")
        lines.append(f"{self.tokens} calibration tokens, {self.seconds:.1f} s")
        return "\n".join(lines)


class _Stop(Exception):
    """Ends a forward once the sub-layer of interest has been read (nothing after it is needed)."""


def reconstruct(
    model: nn.Module,
    dense: nn.Module,
    calibration: Iterable,
    *,
    least_squares: bool = True,
    bias_compensation: bool = False,
    ridge: float = 1e-4,
    max_scale: float = 10.0,
    raise_ridge: int = 3,
    max_batches: int | None = None,
) -> ReconstructionReport:
    """Rescale the kept units of every pruned sub-layer of ``model`` to reproduce ``dense``, in place.

    Args:
        model: the pruned model (after ``prune_model``).
        dense: its reference: the model before this prune (the unpruned one, or a milder plan of the
            same model); it must keep every unit ``model`` keeps. It is not changed.
        calibration: batches of model inputs (dicts, e.g. a ``DataLoader`` with a transformers collator);
            labels are ignored. Every batch is held in memory for the whole call.
        least_squares: fit per-unit scales (ridge-regularised towards 1 with ``ridge`` times the mean
            diagonal of ``A^T A``). When a scale would exceed ``max_scale`` in size (Kwon et al. skip the
            layer there), the ridge is raised tenfold up to ``raise_ridge`` times, and the report notes it.
            A sub-layer is skipped, and the log says why, when its system stays ill-conditioned or absurd,
            or the fit would not lower its error.
        bias_compensation: add the removed units' mean contribution (in the dense model) to the output
            projection's bias, where it has one (FLAP).

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
    max_batches = check_count("max_batches", max_batches)
    student, teacher = _check_pair(model, dense)
    batches = list(calibration_batches(calibration, student, max_batches=max_batches))
    masks, tokens = calibration_tokens(batches)

    s_state, t_state = pruning_state(student), pruning_state(teacher)
    adapter = s_state.adapter
    report = ReconstructionReport(tokens=tokens)
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    try:
        with torch.no_grad():
            # Each layer is run on its own, from the hidden states that entered it, so the whole call costs a
            # few forwards, not one per sub-layer; the arguments each layer got (masks, positions) are replayed.
            s_stream = _Stream(student, s_state.layers, batches)
            t_stream = _Stream(teacher, t_state.layers, batches)
            for index, (s_layer, t_layer) in enumerate(zip(s_state.layers, t_state.layers)):
                # the reference does not change: one pass per layer gives both sub-layers' targets and its output
                reads = [adapter.residual_output(t_layer, kind) for kind in (HEAD, NEURON)]
                if bias_compensation:  # the removed units' inputs, where the reference has any
                    if t_state.head_ids[index]:
                        reads.append((adapter.attention_output(t_layer), "input"))
                    if t_state.neuron_ids[index]:
                        reads.append((adapter.ffn_output(t_layer), "input"))
                t_stream.prefetch(index, reads)
                for kind in (HEAD, NEURON):
                    kept = (s_state.head_ids if kind == HEAD else s_state.neuron_ids)[index]
                    have = (t_state.head_ids if kind == HEAD else t_state.neuron_ids)[index]
                    removed = [p for p, i in enumerate(have) if i not in set(kept)]
                    if not kept:
                        report.sublayers.append(SubLayerReport(index, kind, 0, math.nan, math.nan, "no units left"))
                        continue
                    entry = _SubLayer(adapter, index, kind, s_layer, t_layer, len(kept), removed, s_state.geometry)
                    result = entry.fit(
                        s_stream, t_stream, masks, least_squares, bias_compensation, ridge, max_scale, raise_ridge
                    )
                    _log(result)
                    report.sublayers.append(result)
                s_stream.advance(index)
                t_stream.advance(index)
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    report.seconds = time.perf_counter() - started
    return report


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


def _check_pair(model, dense):
    """The two models as transformers models, or a ``ReconstructionError`` saying what is wrong."""
    try:
        student, teacher = unwrap_model(model), unwrap_model(dense)
    except TypeError as err:
        raise ReconstructionError(f"reconstruct needs transformers models: {err}") from None
    if student is teacher:
        raise ReconstructionError(
            "the dense reference is the pruned model itself: pass a copy of the model taken before pruning"
        )
    try:
        s_state, t_state = pruning_state(student), pruning_state(teacher)
    except ValueError as err:
        raise ReconstructionError(f"cannot read the models' pruning state: {err}") from None
    if s_state.geometry != t_state.geometry:
        raise ReconstructionError(
            "the dense reference is not the pruned model's original: their unpruned geometries differ "
            f"({t_state.geometry} vs {s_state.geometry}); pass a copy of this model taken before pruning"
        )
    for layer, (a, b) in enumerate(zip(s_state.head_ids, t_state.head_ids)):
        if not set(a) <= set(b):
            raise ReconstructionError(
                f"layer {layer}: the pruned model keeps heads the dense reference lacks; the reference must be "
                "the model before this prune (or a milder plan of it)"
            )
    for layer, (a, b) in enumerate(zip(s_state.neuron_ids, t_state.neuron_ids)):
        if not set(a) <= set(b):
            raise ReconstructionError(
                f"layer {layer}: the pruned model keeps FFN neurons the dense reference lacks; the reference must be "
                "the model before this prune (or a milder plan of it)"
            )
    try:
        for kind in (HEAD, NEURON):
            s_state.adapter.residual_output(s_state.layers[0], kind)
    except NotImplementedError as err:
        raise ReconstructionError(str(err)) from None
    return student, teacher


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


def _forward_kwargs(model) -> dict:
    # No KV cache: each forward stops early and is thrown away.
    return {"use_cache": False} if hasattr(model.config, "use_cache") else {}


def _compute_dtype(model) -> torch.dtype:
    # float32 whatever the model's dtype (bf16 products summed over tokens lose most of their bits);
    # a float64 model keeps float64
    return torch.promote_types(next(model.parameters()).dtype, torch.float32)


def _grab_hooks(reads: list[tuple[nn.Module, str]], got: dict, dtype, stop: bool = True) -> list:
    """Hooks that store each read (``(module, "input")``: its first input; ``"output"``: its first output) in
    ``got`` in the compute dtype, and (``stop``) stop the forward after the last one."""

    def make(slot, last):
        def grab(value):
            value = value[0] if isinstance(value, (tuple, list)) else value
            got[slot] = value.detach().to(dtype)
            if last:
                raise _Stop

        return grab

    handles = []
    for slot, (module, where) in enumerate(reads):
        grab = make(slot, stop and slot == len(reads) - 1)
        if where == "input":
            handles.append(module.register_forward_pre_hook(lambda m, args, g=grab: g(args)))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, g=grab: g(out)))
    return handles


class _Stream:
    """Per calibration batch, the hidden state entering the current layer, and the arguments every layer
    was called with in one forward of the model (masks, position embeddings: whatever the family passes).

    One forward per batch records them; after that each layer runs alone on the stored hidden states,
    so reconstructing L layers costs a few forwards instead of one per sub-layer (O(L) instead of O(L^2)).
    Holds one hidden state per calibration token (of the model's dtype) at a time.
    """

    def __init__(self, model, layers, batches):
        self.model, self.layers = model, layers
        self.hidden, self.calls = [], []
        self.cache, self.cached = [], None  # prefetch(): per batch, (reads, output) of layer ``cached``
        device = next(model.parameters()).device
        for batch in batches:
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model_inputs(batch).items()}
            calls: list = [None] * len(layers)

            def make(i, calls=calls):
                def pre(module, args, kwargs):
                    calls[i] = (args, kwargs)
                    if i == len(layers) - 1:
                        raise _Stop

                return pre

            handles = [layer.register_forward_pre_hook(make(i), with_kwargs=True) for i, layer in enumerate(layers)]
            try:
                model(**inputs, **_forward_kwargs(model))
            except _Stop:
                pass
            finally:
                for h in handles:
                    h.remove()
            if any(c is None for c in calls):
                raise ReconstructionError(
                    "a forward of a calibration batch did not run every layer (a custom forward that skips "
                    "layers?): reconstruction replays each layer's call"
                )
            first_args, first_kwargs = calls[0]
            self.hidden.append(first_args[0] if first_args else first_kwargs["hidden_states"])
            # the hidden state is replaced at every replay; dropping it keeps one per token, not one per layer
            self.calls.append([_without_hidden(a, k) for a, k in calls])

    def _call(self, index: int, b: int):
        args, kwargs = self.calls[b][index]
        if args is not None:
            return self.layers[index](self.hidden[b], *args, **kwargs)
        return self.layers[index](**kwargs, hidden_states=self.hidden[b])

    def _run(self, index: int, b: int, reads: list[tuple[nn.Module, str]], stop: bool):
        """Run layer ``index`` on batch ``b``'s stored input with ``reads`` hooked; (reads, output or None)."""
        got: dict[int, torch.Tensor] = {}
        handles = _grab_hooks(reads, got, _compute_dtype(self.model), stop=stop)
        out = None
        try:
            out = self._call(index, b)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        if len(got) != len(reads):
            raise ReconstructionError(
                f"layer {index} did not run the modules reconstruction reads (a family adapter that names the "
                "wrong modules?)"
            )
        return [got[i] for i in range(len(reads))], out[0] if isinstance(out, (tuple, list)) else out

    def prefetch(self, index: int, reads: list[tuple[nn.Module, str]]) -> None:
        """For a model that does not change (the reference): run layer ``index`` once per batch, keeping
        ``reads`` and its output, so that later ``read`` calls and ``advance`` cost no further pass."""
        self.cache = []
        for b in range(len(self.hidden)):
            got, out = self._run(index, b, reads, stop=False)
            self.cache.append(({(id(m), w): v for (m, w), v in zip(reads, got)}, out))
        self.cached = index

    def read(self, index: int, b: int, reads: list[tuple[nn.Module, str]]) -> list[torch.Tensor]:
        """Run layer ``index`` on batch ``b``'s stored input until the last of ``reads`` has been seen."""
        if self.cached == index:
            return [self.cache[b][0][(id(m), w)] for m, w in reads]
        return self._run(index, b, reads, stop=True)[0]

    def advance(self, index: int) -> None:
        """Replace each stored hidden state by layer ``index``'s output (with its reconstruction folded in)."""
        if self.cached == index:
            self.hidden = [out for _, out in self.cache]
            self.cache, self.cached = [], None
            return
        for b in range(len(self.hidden)):
            out = self._call(index, b)
            self.hidden[b] = out[0] if isinstance(out, (tuple, list)) else out


def _without_hidden(args: tuple, kwargs: dict) -> tuple:
    """A layer call's arguments without the hidden state: ``(rest of args, kwargs)``, or ``(None, kwargs)``
    when the hidden state was a keyword."""
    if args:
        return tuple(args[1:]), dict(kwargs)
    return None, {k: v for k, v in kwargs.items() if k != "hidden_states"}


class _SubLayer:
    """One pruned sub-layer: its normal equations over the calibration tokens, the fit, and the fold."""

    def __init__(self, adapter, index, kind, s_layer, t_layer, units, removed, geometry):
        self.adapter, self.index, self.kind, self.units, self.removed = adapter, index, kind, units, removed
        self.group = geometry.head_dim if kind == HEAD else 1  # input features per unit
        out = adapter.attention_output if kind == HEAD else adapter.ffn_output
        self.s_proj, self.t_proj = out(s_layer), out(t_layer)
        self.s_point = adapter.residual_output(s_layer, kind)
        self.t_point = adapter.residual_output(t_layer, kind)

    def fit(
        self, student: _Stream, teacher: _Stream, masks, least_squares, bias_compensation, ridge, max_scale, raise_ridge
    ):
        dtype = _compute_dtype(student.model)
        weight = self.adapter.output_weight(self.s_proj).detach().to(dtype)  # [hidden, units * group]
        has_bias = getattr(self.s_proj, "bias", None) is not None
        compensate = bias_compensation and has_bias and bool(self.removed)
        t_weight = self.adapter.output_weight(self.t_proj).detach().to(dtype) if compensate else None
        u, hidden = self.units, weight.shape[0]
        f64 = torch.float64
        gram = torch.zeros(u, u, dtype=f64)  # A^T A
        cross = torch.zeros(u, dtype=f64)  # A^T e, e = target - (residual + bias)
        unit_sum = torch.zeros(u, hidden, dtype=f64)  # sum over tokens of A (its rows: unit contributions)
        e_sum = torch.zeros(hidden, dtype=f64)
        e_sq = torch.zeros((), dtype=f64)
        removed_sum = torch.zeros(hidden, dtype=f64)  # dense contribution of the removed units
        n = 0
        cols = None
        if compensate:
            cols = (torch.tensor(self.removed)[:, None] * self.group + torch.arange(self.group)[None, :]).reshape(-1)
        wtw = weight.t() @ weight if self.kind == NEURON else None  # [units, units] for the FFN
        for b, mask in enumerate(masks):
            z, y_s = student.read(self.index, b, [(self.s_proj, "input"), self.s_point])
            t_reads = [(self.t_proj, "input"), self.t_point] if compensate else [self.t_point]
            t_out = teacher.read(self.index, b, t_reads)
            y_t = t_out[-1]
            keep = mask.reshape(-1).to(z.device)
            z = z.reshape(-1, z.shape[-1])[keep]
            device = z.device
            w = weight.to(device)
            e = (y_t.to(device, dtype).reshape(-1, hidden)[keep] - y_s.reshape(-1, hidden)[keep]) + z @ w.t()
            n += z.shape[0]
            e_sum += e.sum(0).double().cpu()
            e_sq += e.double().pow(2).sum().cpu()
            if compensate:
                zt = t_out[0].to(dtype).reshape(-1, t_out[0].shape[-1])[keep.to(t_out[0].device)]
                tw = t_weight.to(zt.device)
                removed_sum += (zt[:, cols.to(zt.device)] @ tw[:, cols.to(zt.device)].t()).sum(0).double().cpu()
            if self.kind == NEURON:
                gram += ((z.t() @ z) * wtw.to(device)).double().cpu()
                cross += (z * (e @ w)).sum(0).double().cpu()
                unit_sum += (z.sum(0)[:, None] * w.t()).double().cpu()
            else:
                w3 = w.reshape(hidden, u, self.group)
                step = max(1, _CHUNK_ELEMENTS // max(1, u * hidden))
                for start in range(0, z.shape[0], step):
                    zc = z[start : start + step].reshape(-1, u, self.group)
                    c = torch.einsum("nud,hud->nuh", zc, w3)  # each kept head's contribution per token
                    gram += torch.einsum("nuh,nvh->uv", c, c).double().cpu()
                    cross += torch.einsum("nuh,nh->u", c, e[start : start + step]).double().cpu()
                    unit_sum += c.sum(0).double().cpu()
        delta = removed_sum / max(n, 1) if compensate else torch.zeros(hidden, dtype=f64)
        # b = e - delta (the bias moves by delta): A^T b and b^T b from the accumulated sums
        atb = cross - unit_sum @ delta
        btb = e_sq - 2 * delta @ e_sum + n * delta @ delta
        ones = torch.ones(u, dtype=f64)
        denom = n * hidden

        def error(s, bt_b, at_b):
            return float((s @ gram @ s - 2 * s @ at_b + bt_b) / denom)

        before = error(ones, e_sq, cross)
        report = SubLayerReport(self.index, self.kind, u, before, before)
        if not (least_squares or compensate):
            report.skipped = "no bias to compensate" if not has_bias else "no unit was removed here"
            return report
        scales = ones
        if least_squares:
            scales, why, used = _solve(gram, atb, ridge, max_scale, raise_ridge)
            if used != ridge and not why:
                report.note = f"ridge raised to {used:g} to keep every scale within max_scale"
            if why and not compensate:
                report.skipped = why
                return report
            if why:  # the bias compensation alone may still help
                report.note = f"scales left at 1: {why}"
        after = error(scales, btb, atb)
        if not math.isfinite(after) or after > before:
            report.skipped = f"the fit would not lower the error ({before:.4g} -> {after:.4g})"
            return report
        self._fold(scales, delta if compensate else None)
        report.error_after = after
        report.min_scale, report.max_scale = float(scales.min()), float(scales.max())
        report.bias_compensated = compensate
        return report

    @torch.no_grad()
    def _fold(self, scales: torch.Tensor, delta: torch.Tensor | None) -> None:
        """Scale each kept unit's columns of the output projection; move the bias by ``delta``."""
        weight = self.adapter.output_weight(self.s_proj)  # a view: in-place changes reach the parameter
        dtype = torch.promote_types(weight.dtype, torch.float32)
        per_column = scales.repeat_interleave(self.group).to(weight.device, dtype)
        weight.copy_((weight.to(dtype) * per_column[None, :]).to(weight.dtype))
        if delta is not None:
            bias = self.s_proj.bias
            bias.copy_((bias.to(dtype) + delta.to(bias.device, dtype)).to(bias.dtype))


def _solve(gram, atb, ridge, max_scale, raises: int = 0) -> tuple[torch.Tensor, str | None, float]:
    """Scales minimising ||A s - b||^2 + lam ||s - 1||^2 with lam = ``ridge`` x mean diag(A^T A), or ones and
    the reason they cannot be trusted; also the ridge used.

    When a scale exceeds ``max_scale`` the ridge is raised tenfold, up to ``raises`` times (from 1e-4 when
    it was 0): a stronger pull towards 1 often gives a sane fit where Kwon et al. would skip the layer.
    """
    u = gram.shape[0]
    ones = torch.ones(u, dtype=gram.dtype)
    diag = gram.diagonal()
    if not torch.isfinite(gram).all() or not torch.isfinite(atb).all():
        return ones, "non-finite activations on the calibration data", ridge
    scale = float(diag.mean())
    if scale <= 0:
        return ones, "the kept units contribute nothing on the calibration data", ridge
    eye = torch.eye(u, dtype=gram.dtype)
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
        f"a scale of {worst:.3g} exceeds max_scale={max_scale:g} even at ridge {used:g}: too little "
        "calibration data for this layer",
        ridge,
    )
