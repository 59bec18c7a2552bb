"""``ImportanceScorer``: accumulates head and FFN-neuron importance during ordinary forward/backward.

For a layer, let ``a`` be the input of its attention output projection (the concatenated head
contexts) or of its FFN output projection (post-activation). For example ``e`` and unit ``u``

    s[e, u] = sum over tokens and over u's dimensions of  a * dL_e/da

which is ``dL_e/dg_u`` for a gate ``g_u = 1`` multiplying the unit's slice: the first-order Taylor
estimate of the loss change when ``u`` is removed. ``taylor`` accumulates ``|s|`` (Michel et al. 2019),
``fisher`` accumulates ``s**2`` (Kwon et al. 2022), both summed over examples.

Only hooks are used (a forward pre-hook on each output projection, a tensor hook on its input), so the
scorer works inside any training step, including ``Trainer``'s.
"""

from __future__ import annotations

import torch
from torch import nn

from .scores import GRADIENT_METHODS, METHODS, Scores
from .state import pruning_state


class ImportanceScorer:
    """Score heads and FFN neurons of ``model``.

    Args:
        model: a supported transformers model (BERT family, GPT-2).
        method: ``taylor`` | ``fisher`` (gradient x activation) or ``magnitude`` | ``random`` (baselines).
        reduction: how the backward loss combines the examples of a batch: ``"mean"`` (the usual
            transformers loss) or ``"sum"``. Under ``"mean"`` gradients are multiplied by the batch size,
            so scores are per example whatever the batch size.
        seed: seed of the ``random`` baseline.

    ``loss_scale`` is the factor the backward loss carries on top of that reduction, e.g. ``1 / k`` under
    ``k`` steps of gradient accumulation or the GradScaler's scale under fp16; gradients are divided by
    it. A backward whose gradients hold NaN/inf (an fp16 overflow) is skipped as a whole and counted in
    ``skipped_batches``.
    """

    def __init__(self, model: nn.Module, method: str = "taylor", *, reduction: str = "mean", seed: int = 0):
        if method not in METHODS:
            raise ValueError(f"unknown importance method {method!r}; choose one of {', '.join(METHODS)}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
        self.model = model
        self.method = method
        self.reduction = reduction
        self.seed = seed
        self.loss_scale = 1.0
        self._handles: list = []
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def reset(self) -> None:
        """Forget everything accumulated; re-read the live units (call after pruning)."""
        state = pruning_state(self.model)
        self._state = state
        self._layers = state.adapter.layers(self.model)
        device = next(self.model.parameters()).device
        self._total = {
            "heads": [torch.zeros(len(ids), device=device) for ids in state.head_ids],
            "neurons": [torch.zeros(len(ids), device=device) for ids in state.neuron_ids],
        }
        self._pending = {k: [torch.zeros_like(t) for t in v] for k, v in self._total.items()}
        self._pending_examples = 0
        self._pending_bad = False
        self._mask = None
        self.num_examples = 0
        self.skipped_batches = 0

    @property
    def is_attached(self) -> bool:
        """True while the hooks are on (inside ``with scorer:`` or between ``attach()`` and ``detach()``)."""
        return bool(self._handles)

    def state_dict(self) -> dict:
        """What has been accumulated so far (completed backward passes), to save and resume scoring.

        ``{"method", "head_ids", "neuron_ids", "heads", "neurons", "num_examples", "skipped_batches"}``,
        with tensors on the CPU; ``load_state_dict`` takes it back on a scorer of the same live units.
        """
        if self.method in GRADIENT_METHODS:
            self._commit()
        state = self._state
        return {
            "method": self.method,
            "head_ids": [list(ids) for ids in state.head_ids],
            "neuron_ids": [list(ids) for ids in state.neuron_ids],
            "heads": [t.detach().cpu().clone() for t in self._total["heads"]],
            "neurons": [t.detach().cpu().clone() for t in self._total["neurons"]],
            "num_examples": self.num_examples,
            "skipped_batches": self.skipped_batches,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue from ``state_dict()`` of a scorer with the same method on the same live units."""
        state = self._state
        if state_dict.get("method") != self.method:
            raise ValueError(
                f"these scores were accumulated with {state_dict.get('method')!r}, this scorer uses {self.method!r}"
            )
        if state_dict.get("head_ids") != state.head_ids or state_dict.get("neuron_ids") != state.neuron_ids:
            raise ValueError(
                "these scores are for other live units than the model has now (it was pruned in between, or "
                "they come from another model); start a new scorer instead"
            )
        for kind in ("heads", "neurons"):
            for total, value in zip(self._total[kind], state_dict[kind]):
                total.copy_(value.to(total.device))
        for pending in (*self._pending["heads"], *self._pending["neurons"]):
            pending.zero_()
        self._pending_examples = 0
        self._pending_bad = False
        self.num_examples = int(state_dict["num_examples"])
        self.skipped_batches = int(state_dict.get("skipped_batches", 0))

    def attach(self) -> ImportanceScorer:
        if self._handles or self.method not in GRADIENT_METHODS:
            return self
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_forward, with_kwargs=True))
        adapter = self._state.adapter
        for i, layer in enumerate(self._layers):
            for kind, module in (("heads", adapter.attention_output(layer)), ("neurons", adapter.ffn_output(layer))):
                self._handles.append(module.register_forward_pre_hook(self._activation_hook(kind, i)))
        return self

    def detach(self) -> None:
        self._commit()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._mask = None

    def __enter__(self) -> ImportanceScorer:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # ------------------------------------------------------------------ hooks
    def _on_model_forward(self, module, args, kwargs):
        self._commit()  # the previous backward is complete by the time the next forward starts
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]
        self._mask = mask.detach() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _activation_hook(self, kind: str, layer: int):
        head_dim = self._state.geometry.head_dim

        def hook(module, args):
            a = args[0]
            if not (torch.is_grad_enabled() and isinstance(a, torch.Tensor) and a.requires_grad):
                return
            mask, acts = self._mask, a.detach()
            group = head_dim if kind == "heads" else 1

            def on_grad(grad):
                self._accumulate(kind, layer, acts, grad, mask, group)

            a.register_hook(on_grad)

        return hook

    @torch.no_grad()
    def _accumulate(self, kind, layer, acts, grad, mask, group) -> None:
        # float32 whatever the model's dtype: bf16 products summed over tokens lose most of their bits.
        prod = acts.float() * grad.float()
        batch = prod.shape[0]
        prod = prod.reshape(*prod.shape[:-1], prod.shape[-1] // group, group).sum(-1)  # [B, (T,) units]
        if mask is not None and prod.dim() == 3 and tuple(mask.shape) == tuple(prod.shape[:2]):
            prod = prod * mask.to(prod.device, torch.float32)[..., None]  # padding tokens count for nothing
        per_example = prod.sum(dim=tuple(range(1, prod.dim() - 1))) if prod.dim() > 2 else prod
        scale = (batch if self.reduction == "mean" else 1.0) / self.loss_scale
        per_example = per_example * scale
        value = per_example.abs() if self.method == "taylor" else per_example.square()
        value = value.sum(0)
        if not torch.isfinite(value).all():
            self._pending_bad = True
        self._pending[kind][layer] += value.to(self._pending[kind][layer].device)
        self._pending_examples = batch

    def _commit(self) -> None:
        """Fold the last backward's contributions into the totals (or drop them if any was NaN/inf)."""
        if not self._pending_examples:
            return
        if self._pending_bad:
            self.skipped_batches += 1
        else:
            for kind in self._total:
                for total, pending in zip(self._total[kind], self._pending[kind]):
                    total += pending
            self.num_examples += self._pending_examples
        for pending in (*self._pending["heads"], *self._pending["neurons"]):
            pending.zero_()
        self._pending_examples = 0
        self._pending_bad = False

    # ------------------------------------------------------------------ results
    @property
    def scores(self) -> Scores:
        """The accumulated (or, for baselines, computed) ``Scores``, on the CPU."""
        state = self._state
        if self.method in GRADIENT_METHODS:
            self._commit()
            heads = [t.detach().cpu().clone() for t in self._total["heads"]]
            neurons = [t.detach().cpu().clone() for t in self._total["neurons"]]
        elif self.method == "magnitude":
            adapter, d = state.adapter, state.geometry.head_dim
            heads = [adapter.head_sq_norms(layer, d).sqrt().cpu() for layer in self._layers]
            neurons = [adapter.neuron_sq_norms(layer).sqrt().cpu() for layer in self._layers]
        else:
            gen = torch.Generator().manual_seed(self.seed)
            heads = [torch.rand(len(ids), generator=gen) for ids in state.head_ids]
            neurons = [torch.rand(len(ids), generator=gen) for ids in state.neuron_ids]
        return Scores(
            method=self.method,
            geometry=state.geometry,
            heads=heads,
            neurons=neurons,
            head_ids=[list(ids) for ids in state.head_ids],
            neuron_ids=[list(ids) for ids in state.neuron_ids],
            num_examples=self.num_examples if self.method in GRADIENT_METHODS else 0,
            skipped_batches=self.skipped_batches,
        )
