"""One-shot weight sparsity for LLMs: ``prune_weights_oneshot`` zeroes individual weights of the blocks' linear
layers (unstructured or N:M) from calibration batches, with no retraining.

How each method reads the data:

- ``magnitude``: ``|W|``; no data.
- ``wanda`` and ``sparsegpt``, layer by layer on the calibration stream (``stream.LayerStream``, as
  ``reconstruct`` uses it): one recording forward stores what every layer is called with; then per layer, one pass
  of the layer as it is (dense) over the stored inputs, with hooks on its targets summing what the method needs
  (``wanda``: ``x_j^2`` per input feature; ``sparsegpt``: ``H = X^T X``), all of the layer's targets from that
  one pass as Wanda and SparseGPT's reference code do (not sub-layer by sub-layer); then the layer is pruned
  (``sparsegpt`` with the OBS update of ``sparsity.obs``) and a pass of the pruned layer gives the next layer's
  inputs. Each layer is thus calibrated on the inputs the pruned layers before it produce. Padding tokens count
  for nothing. Extra modules (``lm_head``, ...) are calibrated by one forward of the pruned model at the end.
- ``gblm`` (GBLM-Pruner, Das et al. 2023): Wanda's layer-wise pass with the score
  ``|W_ij| * (sqrt(sum x_j^2 / sequences) + gradient_scale * sqrt(sum over sequences of g_ij^2))``, ``g`` the
  gradient of one sequence's mean token loss in the dense model (one scoring pass as for fisher, first; one
  sequence per batch or ``micro_batch_size=1`` makes each term one sequence's). ``gradient_scale`` is GBLM's 100,
  which its authors set for 2,048-token sequences.
- ``taylor`` and ``fisher``, from the whole model's gradient: one scoring pass (``sparsity.WeightScorer``) in eval
  mode with frozen weights (only activation gradients: ``score_pass``'s machinery), optionally in micro-batches
  (each micro-batch's mean loss is one batch of the sums: ``fisher`` is then the empirical Fisher over them) and
  with non-reentrant checkpointing; then masks from the scores.

Statistics are summed in float32 on the model's device; only the report's numbers leave it. Device memory for
the layer-wise methods: the model, one hidden vector per calibration token, one layer's activations for one batch,
and one layer's statistics (``sparsegpt``: an ``in x in`` float32 matrix per target).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..architectures import get_adapter
from ..dispatch import check_in_memory
from ..sparsity import (
    GRADIENT_WEIGHT_METHODS,
    WeightMasks,
    WeightScorer,
    check_scope,
    check_sparsity,
    check_targets,
    check_weight_method,
    masks_from_scores,
    matrix_sparsity,
    record_weight_sparsity,
    weight_targets,
)
from ..sparsity.obs import sparsegpt_prune_
from ..state import unwrap_model
from .calibration import CalibrationError, calibration_batches, check_loss_inputs, model_inputs, model_loss, token_mask
from .score_pass import _activation_gradients_only, _as_it_was, _checkpointed, _checkpointing_modules, check_options
from .stream import LayerStream, StreamError

LAYERWISE_METHODS = ("wanda", "sparsegpt", "gblm")
# the methods that read the whole model's gradient (one scoring pass)
GRADIENT_PASS_METHODS = (*GRADIENT_WEIGHT_METHODS, "gblm")
# Each method's comparison group unless told: per output row for wanda (its paper's choice for LLMs) and the
# gradient scores; per matrix for magnitude and sparsegpt (their papers' baselines).
DEFAULT_SCOPES = {"magnitude": "layer", "wanda": "row", "sparsegpt": "layer", "taylor": "row", "fisher": "row"}
DEFAULT_SCOPES["gblm"] = "row"


@dataclass
class WeightPruningReport:
    """What ``prune_weights_oneshot`` did: the target and the sparsity the weights now have (exact zeros of the
    targets, overall, per matrix and per block), the calibration it read and the seconds it took."""

    method: str
    pattern: str
    sparsity: float
    scope: str | None
    measured: float = 0.0
    per_matrix: dict = field(default_factory=dict)
    per_layer: dict = field(default_factory=dict)
    batches: int = 0
    tokens: int = 0
    seconds: float = 0.0
    device: str = ""

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "pattern": self.pattern,
            "sparsity": self.sparsity,
            "scope": self.scope,
            "measured": self.measured,
            "per_layer": {str(k): v for k, v in self.per_layer.items()},
            "per_matrix": self.per_matrix,
            "batches": self.batches,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "device": self.device,
        }

    def summary(self) -> str:
        scope = f", scope {self.scope}" if self.scope else ""
        return (
            f"weight sparsity {self.measured:.2%} ({self.pattern}, target {self.sparsity:.2%}, {self.method}{scope}) "
            f"over {len(self.per_matrix)} matrices; {self.tokens} calibration tokens in {self.batches} batches; "
            f"{self.seconds:.1f} s on {self.device}"
        )


def check_weight_options(sparsity, pattern, method, scope=None, blocksize=128, percdamp=0.01):
    """``(sparsity, pattern, method, scope)`` checked (``scope`` None: the method's default; ``None`` for N:M,
    where it does not apply). Raises ``ValueError`` naming the option."""
    method = check_weight_method(method)
    sparsity, pattern = check_sparsity(sparsity, pattern)
    scope = DEFAULT_SCOPES[method] if scope is None else check_scope(scope)
    if scope == "global" and method in LAYERWISE_METHODS and not pattern.is_nm:
        raise ValueError(
            f"{method} prunes one layer at a time on the inputs the pruned layers before it give, so it cannot rank "
            "weights across layers: sparsity_scope must be 'layer' or 'row'"
        )
    if isinstance(blocksize, bool) or not isinstance(blocksize, numbers.Integral) or blocksize < 1:
        raise ValueError(f"blocksize must be an integer >= 1, got {blocksize!r}")
    if not (isinstance(percdamp, numbers.Real) and math.isfinite(percdamp) and percdamp >= 0):
        raise ValueError(f"percdamp must be a finite number >= 0, got {percdamp!r}")
    return sparsity, pattern, method, None if pattern.is_nm else scope


def prune_weights_oneshot(
    model: nn.Module,
    batches: Iterable | None = None,
    sparsity: float | None = None,
    pattern="unstructured",
    method: str = "wanda",
    scope: str | None = None,
    extra_modules=(),
    *,
    max_batches: int | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    loss_fn=None,
    micro_batch_size: int | None = None,
    gradient_checkpointing: bool = False,
    gradient_scale: float = 100.0,
) -> WeightPruningReport:
    """Zero ``sparsity`` of the weights of ``model``'s block matrices (and ``extra_modules``) in place, by
    ``method``, and record it in the config (``config.gradprune["weight_sparsity"]``); returns the report.

    Args:
        batches: calibration batches (dicts of model inputs, e.g. a ``DataLoader`` with a collator); the first
            ``max_batches`` (all by default) are used and held for the call. ``magnitude`` needs none.
        sparsity / pattern: ``check_sparsity``'s pair (an N:M pattern fixes the sparsity; None gives it).
        method: ``magnitude``, ``wanda`` (default), ``sparsegpt``, ``taylor`` or ``fisher`` (module docstring).
        scope: unstructured masks compare weights per output ``"row"`` or per matrix (``"layer"``), or across all
            matrices (``"global"``: magnitude, taylor, fisher only). None: the method's own (``DEFAULT_SCOPES``).
        blocksize / percdamp: ``sparsegpt``'s column block and Hessian damping (``sparsity.obs``).
        loss_fn / micro_batch_size / gradient_checkpointing: the scoring pass of the gradient methods (taylor,
            fisher, gblm; as ``prune_oneshot``'s); refused for the others. ``gradient_scale``: gblm's weight of the
            gradient term.

    Everything is checked before the first weight changes: the options, the targets (an N:M pattern on a width
    that is no multiple of M), offloaded weights, the calibration batches (present, with tokens; a loss for the
    gradient methods).
    """
    started = time.perf_counter()
    inner = unwrap_model(model, allow_distributed=False)
    sparsity, pattern, method, scope = check_weight_options(sparsity, pattern, method, scope, blocksize, percdamp)
    micro = check_options(micro_batch_size, gradient_checkpointing, loss_fn)
    if method not in GRADIENT_PASS_METHODS and (micro is not None or gradient_checkpointing or loss_fn):
        raise ValueError(
            f"loss_fn, micro_batch_size and gradient_checkpointing shape the gradient pass of taylor/fisher/gblm; "
            f"{method} runs none: drop them"
        )
    if not (isinstance(gradient_scale, numbers.Real) and math.isfinite(gradient_scale) and gradient_scale >= 0):
        raise ValueError(f"gradient_scale must be a finite number >= 0, got {gradient_scale!r}")
    check_in_memory(inner, "prune_weights_oneshot", needs_weights=True)
    targets = weight_targets(inner, extra_modules)
    check_targets(targets, pattern)
    if gradient_checkpointing:
        _checkpointing_modules(inner)
    data, tokens = [], 0
    if method != "magnitude":
        if batches is None:
            raise CalibrationError(f"{method} reads calibration batches: pass batches (or use method='magnitude')")
        data = list(calibration_batches(batches, inner, max_batches=max_batches))
        if method in GRADIENT_PASS_METHODS:
            for b in data:
                check_loss_inputs(inner, b, loss_fn)
        tokens = count_tokens(data)

    device = next(inner.parameters()).device
    if method in LAYERWISE_METHODS:
        extra = None
        if method == "gblm":  # the dense model's per-sequence gradients, before any weight changes
            scorer = _gradient_pass(inner, targets, data, "fisher", loss_fn, micro, gradient_checkpointing)
            sequences = sum(token_mask(b).shape[0] for b in data)
            extra = (scorer.grad_stats, sequences, float(gradient_scale))
        _layerwise(inner, targets, data, sparsity, pattern, method, scope, blocksize, percdamp, extra)
    else:
        scores = _gradient_scores(inner, targets, data, method, loss_fn, micro, gradient_checkpointing)
        WeightMasks.from_scores(targets, scores, sparsity, pattern, scope or "layer").apply_(inner)
    record_weight_sparsity(inner, targets, pattern=pattern, sparsity=sparsity, method=method, scope=scope)
    measured = matrix_sparsity(targets)
    report = WeightPruningReport(method, pattern.name, sparsity, scope, measured["sparsity"], measured["per_matrix"])
    report.per_layer = _per_layer(targets)
    report.batches, report.tokens, report.device = len(data), tokens, str(device)
    report.seconds = time.perf_counter() - started
    return report


def count_tokens(batches: list[dict]) -> int:
    """The batches' real tokens; ``CalibrationError`` when there are none (every ``attention_mask`` 0)."""
    tokens = int(sum(token_mask(b).sum() for b in batches))
    if tokens == 0:
        raise CalibrationError(
            f"the {len(batches)} calibration batches hold no tokens (every attention_mask is 0): weight scores need "
            "some real tokens"
        )
    return tokens


def _per_layer(targets) -> dict:
    zeros, total = defaultdict(int), defaultdict(int)
    for t in targets:
        key = t.layer if t.layer is not None else t.name
        zeros[key] += int((t.module.weight == 0).sum())
        total[key] += t.module.weight.numel()
    return {k: zeros[k] / total[k] for k in total}


# --- gradient methods: one scoring pass of the whole model ---------------------------------------------------
def _gradient_scores(inner, targets, data, method, loss_fn, micro, checkpointing) -> dict:
    if method == "magnitude":
        return WeightScorer(inner, method, targets).scores()
    return _gradient_pass(inner, targets, data, method, loss_fn, micro, checkpointing).scores()


def _gradient_pass(inner, targets, data, method, loss_fn, micro, checkpointing) -> WeightScorer:
    """A ``WeightScorer`` (taylor or fisher) filled by one backward per batch (or micro-batch) in eval mode with
    frozen weights."""
    scorer = WeightScorer(inner, method, targets)
    first_layer = get_adapter(inner).layers(inner)[0]
    finite = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(_as_it_was(inner))
        inner.eval()
        stack.enter_context(_activation_gradients_only(inner, first_layer))
        if checkpointing:
            stack.enter_context(_checkpointed(_checkpointing_modules(inner)))
        stack.enter_context(scorer)
        for batch in data:
            size = token_mask(batch).shape[0]
            step = micro or size
            for start in range(0, size, step):
                part = _rows(batch, slice(start, start + step), size) if step < size else batch
                loss = model_loss(inner, part, loss_fn)
                if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
                    raise CalibrationError("the calibration loss does not depend on the model: check the loss_fn")
                if torch.isfinite(loss.detach()).all():  # a NaN/inf loss would poison every sum
                    loss.backward()
                    finite += 1
    if finite == 0:
        raise CalibrationError(
            "the loss was NaN or infinite on every calibration batch: nothing can be scored (labels in range?)"
        )
    return scorer


def _rows(batch: dict, rows: slice, size: int) -> dict:
    return {
        k: v[rows] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == size else v for k, v in batch.items()
    }


# --- layer-wise methods: the calibration stream --------------------------------------------------------------
class _Stats:
    """Per target, the sum over real tokens of ``x^2`` per input feature (wanda) or of ``x x^T`` (sparsegpt),
    in float32 (float64 for a float64 model) on the weight's device; filled by forward hooks while a batch's
    padding mask is current."""

    def __init__(self, targets, method: str):
        self.targets, self.method = targets, method
        self.sums: dict[str, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(torch.promote_types(x.dtype, torch.float32))  # bf16 sums over tokens lose their bits
        if self.mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(self.mask.shape):
            x = x[self.mask.to(x.device)]
        return x.reshape(-1, x.shape[-1])

    def add(self, t, x: torch.Tensor) -> None:
        rows = self.rows(x)
        value = rows.t() @ rows if self.method == "sparsegpt" else rows.square().sum(0)
        self.sums[t.name] = self.sums[t.name] + value if t.name in self.sums else value

    @contextlib.contextmanager
    def hooked(self):
        def make(t):
            def hook(module, args):
                if args and isinstance(args[0], torch.Tensor):
                    self.add(t, args[0])

            return hook

        handles = [t.module.register_forward_pre_hook(make(t)) for t in self.targets]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def _prune_target(t, stat, sparsity, pattern, method, scope, blocksize, percdamp, extra=None) -> None:
    if stat is None:
        raise StreamError(f"{t.name} saw no input while its layer ran: it cannot be calibrated")
    matrix = t.matrix
    if method in ("wanda", "gblm"):
        w = matrix.detach().float().abs()
        if method == "wanda":
            scores = w * stat.to(matrix.device).sqrt()[None, :]
        else:
            grads, sequences, scale = extra
            if t.name not in grads:
                raise ValueError(f"gblm has no gradient of {t.name}: the loss does not reach it")
            norms = (stat.to(matrix.device) / sequences).sqrt()[None, :]
            scores = w * (norms + scale * grads[t.name].to(matrix.device).sqrt())
        keep = masks_from_scores({t.name: scores}, sparsity, pattern, scope or "layer")[t.name]
        matrix.mul_(keep.to(matrix.device))
        return
    w = (
        matrix.detach()
        .to(torch.promote_types(matrix.dtype, torch.float32))
        .clone(memory_format=torch.contiguous_format)
    )
    sparsegpt_prune_(w, stat, sparsity, pattern, blocksize=blocksize, percdamp=percdamp, scope=scope or "layer")
    matrix.copy_(w.to(matrix.dtype))


@torch.no_grad()
def _layerwise(inner, targets, data, sparsity, pattern, method, scope, blocksize, percdamp, extra=None) -> None:
    layers = get_adapter(inner).layers(inner)
    by_layer = defaultdict(list)
    for t in targets:
        by_layer[t.layer].append(t)
    masks = [token_mask(b) for b in data]
    options = (sparsity, pattern, method, scope, blocksize, percdamp)
    with _as_it_was(inner):
        inner.eval()
        stream = LayerStream(inner, layers, data)  # before any change: a family that cannot stream is refused here
        for index, layer in enumerate(layers):
            if by_layer.get(index):
                stats = _Stats(by_layer[index], method)
                with stats.hooked():
                    for b in range(len(data)):
                        stats.mask = masks[b]
                        stream.call(layer, index, b)
                for t in by_layer[index]:
                    _prune_target(t, stats.sums.get(t.name), *options, extra)
                del stats
            stream.advance(layer, index)
        del stream
        outside = by_layer.get(None)
        if outside:  # modules outside the blocks (lm_head, ...): one forward of the pruned model
            stats = _Stats(outside, method)
            kwargs = {"use_cache": False} if hasattr(inner.config, "use_cache") else {}
            with stats.hooked():
                for batch, mask in zip(data, masks):
                    stats.mask = mask
                    inner(**model_inputs(batch), **kwargs)
            for t in outside:
                _prune_target(t, stats.sums.get(t.name), *options, extra)
