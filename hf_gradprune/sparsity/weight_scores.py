"""Weight scores: ``magnitude``, ``wanda``, ``taylor`` and ``fisher`` through hooks (``WeightScorer``);
``sparsegpt`` (layer-wise OBS with weight updates) lives in ``obs.py``; ``gblm`` (GBLM-Pruner, Das et al. 2023:
Wanda's score plus ``|W|`` times the per-sequence gradients' l2 norm) in ``oneshot/weights.py``. Those two are
one-shot only (``ONESHOT_WEIGHT_METHODS``).

For a target matrix ``W`` (``[out, in]``) with inputs ``x`` (one row per token) and gradient ``G = dL/dW``:

- ``magnitude``: ``|W|``;
- ``wanda``: ``|W_ij| * ||x_j||_2`` over the calibration tokens (padding excluded; Sun et al. 2023);
- ``taylor``: ``sum over batches of |W_ij * G_ij|``, the first-order estimate of the loss change when the weight
  goes (Molchanov et al. 2019, per weight);
- ``fisher``: ``1/2 * W_ij**2 * mean over batches of G_ij**2``, the diagonal second-order saliency (OBD with the
  empirical Fisher; per example when batches hold one sequence, as LLM calibration does).

Only hooks are used, as ``ImportanceScorer`` does: a forward hook on each target reads its input, and a tensor
hook on its output receives ``dL/dy``, so ``G = (dL/dy)^T x`` is formed even when the weights are frozen (one-shot
scoring keeps no weight gradients). Accumulated in float32 whatever the model's dtype. In a pass with a backward
the statistics are taken in the gradient hook, which a non-reentrant checkpoint's recompute never fires, so
nothing is counted twice.
"""

from __future__ import annotations

import torch
from torch import nn

from ..scoring.scorer import mask_position
from ..state import unwrap_model
from .targets import WeightTarget, weight_targets

WEIGHT_METHODS = ("magnitude", "wanda", "taylor", "fisher", "sparsegpt", "gblm")
ONESHOT_WEIGHT_METHODS = ("sparsegpt", "gblm")  # layer by layer on calibration data: prune_weights_oneshot only
GRADIENT_WEIGHT_METHODS = ("taylor", "fisher")
HOOKED_METHODS = ("magnitude", "wanda", "taylor", "fisher")


def check_weight_method(method) -> str:
    if method not in WEIGHT_METHODS:
        raise ValueError(f"weight_method must be one of {', '.join(WEIGHT_METHODS)}, got {method!r}")
    return method


class WeightScorer:
    """Accumulates weight scores over forward (and, for ``taylor``/``fisher``, backward) passes.

    ``with WeightScorer(model, "wanda") as scorer: run batches``; then ``scorer.scores()`` gives ``{target name:
    [out, in] float32 scores}``. ``state_dict()`` / ``load_state_dict()`` carry the accumulators (a resumed run);
    ``reduce_(fn)`` applies ``fn`` (e.g. a sum over ranks) to each of them in place.
    """

    def __init__(self, model: nn.Module, method: str = "wanda", targets: list[WeightTarget] | None = None):
        method = check_weight_method(method)
        if method not in HOOKED_METHODS:
            raise ValueError(f"{method} updates weights layer by layer: use prune_weights_oneshot, not WeightScorer")
        self.model, self.method = model, method
        self.targets = list(targets) if targets is not None else weight_targets(model)
        self._handles: list = []
        self._mask: torch.Tensor | None = None
        self.reset()

    # --- lifecycle -------------------------------------------------------------------------------
    def reset(self) -> None:
        self.sq_norms: dict[str, torch.Tensor] = {}  # wanda: sum over tokens of x_j**2
        self.grad_stats: dict[str, torch.Tensor] = {}  # taylor: sum |W*G|; fisher: sum G**2
        self.batches = 0  # backward passes seen (fisher's mean)

    @property
    def is_attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> WeightScorer:
        if self._handles or self.method == "magnitude":
            return self
        base = unwrap_model(self.model)
        position = mask_position(base)
        self._handles.append(base.register_forward_pre_hook(self._entry_hook(position), with_kwargs=True))
        self._handles.append(base.register_forward_hook(self._exit_hook))
        for t in self.targets:
            self._handles.append(t.module.register_forward_hook(self._target_hook(t)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> WeightScorer:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # --- hooks -----------------------------------------------------------------------------------
    def _entry_hook(self, position):
        def hook(module, args, kwargs):
            mask = kwargs.get("attention_mask")
            if mask is None and position is not None and len(args) > position:
                mask = args[position]
            self._mask = mask.detach() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

        return hook

    def _exit_hook(self, module, args, output) -> None:
        self._mask = None

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``[tokens, in]`` float32 rows, padding rows zeroed when the mask fits."""
        x = x.detach().float()
        mask = self._mask
        if mask is not None and x.dim() == 3 and tuple(mask.shape) == tuple(x.shape[:2]):
            x = x * mask.to(x.device, x.dtype)[..., None]
        return x.reshape(-1, x.shape[-1])

    def _target_hook(self, t: WeightTarget):
        def hook(module, args, output):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
                return
            backward = torch.is_grad_enabled() and output.requires_grad
            if self.method in GRADIENT_WEIGHT_METHODS and not backward:
                return  # no gradient will come: nothing to score in this pass
            if not backward:
                self._add_sq(t, self._tokens(x))
                return
            rows, raw = self._tokens(x), x.detach()

            def on_grad(grad):
                self._on_grad(t, rows, raw, grad)

            output.register_hook(on_grad)

        return hook

    def _add_sq(self, t: WeightTarget, rows: torch.Tensor) -> None:
        sq = rows.pow(2).sum(0)
        self.sq_norms[t.name] = self.sq_norms[t.name] + sq if t.name in self.sq_norms else sq

    @torch.no_grad()
    def _on_grad(self, t: WeightTarget, rows, raw, grad) -> None:
        if self.method == "wanda":
            self._add_sq(t, rows)
            return
        # the weight's true gradient: every token, padding included, as autograd would form it
        g = grad.detach().float().reshape(-1, grad.shape[-1]).t() @ raw.float().reshape(-1, raw.shape[-1])
        w = t.matrix.detach().float()
        value = (w * g).abs() if self.method == "taylor" else g.square()
        self.grad_stats[t.name] = self.grad_stats[t.name] + value if t.name in self.grad_stats else value
        if t is self.targets[0]:
            self.batches += 1

    # --- results ---------------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self) -> dict[str, torch.Tensor]:
        out = {}
        for t in self.targets:
            w = t.matrix.detach().float()
            if self.method == "magnitude":
                out[t.name] = w.abs()
            elif self.method == "wanda":
                if t.name not in self.sq_norms:
                    raise ValueError(f"wanda has seen no input of {t.name}: run calibration batches through the model")
                out[t.name] = w.abs() * self.sq_norms[t.name].to(w.device).sqrt()[None, :]
            else:
                if t.name not in self.grad_stats:
                    raise ValueError(
                        f"{self.method} has seen no gradient of {t.name}: run a backward of the loss while attached"
                    )
                stat = self.grad_stats[t.name].to(w.device)
                out[t.name] = stat if self.method == "taylor" else 0.5 * w.square() * stat / max(self.batches, 1)
        return out

    def state_dict(self) -> dict:
        return {
            "method": self.method,
            "batches": self.batches,
            "sq_norms": {k: v.cpu() for k, v in self.sq_norms.items()},
            "grad_stats": {k: v.cpu() for k, v in self.grad_stats.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method:
            raise ValueError(f"this state holds {state.get('method')!r} statistics, the scorer computes {self.method}")
        device = {t.name: t.module.weight.device for t in self.targets}
        self.batches = int(state["batches"])
        self.sq_norms = {k: v.to(device.get(k, "cpu")) for k, v in state["sq_norms"].items()}
        self.grad_stats = {k: v.to(device.get(k, "cpu")) for k, v in state["grad_stats"].items()}

    @torch.no_grad()
    def reduce_(self, fn) -> None:
        """Replace every accumulator by ``fn(accumulator)``: e.g. ``accelerator.reduce(t, "sum")``, so every rank
        scores on every rank's data and gets the same masks."""
        for stats in (self.sq_norms, self.grad_stats):
            for k in list(stats):
                stats[k] = fn(stats[k])
        self.batches = int(fn(torch.tensor(float(self.batches), device=_device(self.targets))).item())


def _device(targets) -> torch.device:
    return targets[0].module.weight.device if targets else torch.device("cpu")
