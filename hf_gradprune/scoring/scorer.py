"""``ImportanceScorer``: accumulates head and FFN-neuron importance during ordinary forward/backward.

For a layer, let ``a`` be the input of its attention output projection (the concatenated head
contexts) or of its FFN output projection (post-activation). For example ``e`` and unit ``u``

    s[e, u] = sum over tokens and over u's dimensions of  a * dL_e/da

which is ``dL_e/dg_u`` for a gate ``g_u = 1`` multiplying the unit's slice: the first-order Taylor
estimate of the loss change when ``u`` is removed. ``taylor`` accumulates ``|s|`` (Michel et al. 2019),
``fisher`` accumulates ``s**2`` (Kwon et al. 2022), both summed over examples. Under grouped-query
attention a key/value head with its query heads is also scored as one gate: its query heads' ``s`` are
summed per example before ``|.|`` or squaring (``Scores.groups``).

Only hooks are used (forward pre-hooks on the output projections, a tensor hook on their inputs, and
pre/post-hooks on the model and its base model that read the padding mask), so the scorer works inside
any training step, including ``Trainer``'s, whichever module the forward enters. The hooks go on the
transformers model under any ``torch.compile`` / DDP wrapper and run outside ``torch.compile``'s graphs.
Reentrant gradient checkpointing (``use_reentrant=True``) is refused: it runs the layers' forward without
gradients and recomputes them inside the backward, one layer at a time, where no pass can be told apart.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
import threading

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

from ..state import pruning_state, unwrap_model
from ..units import HEAD, KV_GROUP, NEURON
from .scores import GRADIENT_METHODS, METHODS, Scores

# state_dict() keys, kept as they were before units.py (saved scorer states use them)
_STATE_KEYS = {HEAD: "heads", NEURON: "neurons", KV_GROUP: "kv_groups"}


class _Pass:
    """What one forward pass contributes; committed once its backward has reached the pass's first layer.

    Every scored activation depends on those of the first layer the forward went through, so their
    gradients are the last to arrive: the backward is then complete for this pass.
    """

    def __init__(self, examples: int, mask: torch.Tensor | None):
        self.examples = examples
        self.mask = mask
        self.seen: set = set()
        self.first_layer: int | None = None
        self.first_count = 0  # activations registered in the first layer
        self.first_left = 0  # of those, still waiting for their gradient in this backward
        self.pending: dict = {}
        self.signed: dict = {}  # (kind, layer) -> s summed over the pass's examples, with record_batches
        self.bad = False


class _Forward(threading.local):
    """The forward in progress, per thread: ``nn.DataParallel`` runs its replicas' forwards in threads."""

    mask: torch.Tensor | None = None
    current: _Pass | None = None


class _Hook:
    """One of the scorer's module hooks: run outside ``torch.compile``, and left behind by ``copy.deepcopy``.

    Traced by ``torch.compile`` (``torch.compiler.disable`` prevents it), a hook's side effects on the pass
    in progress would not happen as written, and each scored activation would start its own pass. A deep
    copy of the model (a teacher, a dense copy) gets a hook that does nothing: it must not feed this scorer,
    and the scorer's ``detach()`` could not take the hook off the copy. ``nn.DataParallel``'s replicas
    share the model's hooks without deep-copying them, so they are scored.
    """

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = torch.compiler.disable(fn)

    def __call__(self, *args):
        return self.fn(*args)

    def __deepcopy__(self, memo):
        return _inert_hook


def _inert_hook(*args) -> None:
    return None


class ImportanceScorer:
    """Score heads and FFN neurons of ``model``.

    Args:
        model: a supported transformers model (BERT family, GPT-2, Llama family).
        method: ``taylor`` | ``fisher`` (gradient x activation) or ``magnitude`` | ``random`` (baselines).
        reduction: how the backward loss combines the examples of a batch: ``"mean"`` (the usual
            transformers loss) or ``"sum"``. Under ``"mean"`` gradients are multiplied by the batch size,
            so scores are per example whatever the batch size.
        seed: seed of the ``random`` baseline.
        record_batches: also keep, per committed pass, each unit's signed gate gradient summed over the
            pass's examples (``batch_gradients``), which ``rearrange_plan`` needs. Gradient methods only.

    Scoring happens inside ``with scorer:`` (or between ``attach()`` and ``detach()``). These nest like a
    re-entrant lock: the hooks go on at the first ``attach()`` and come off at the matching last
    ``detach()``, so an inner ``with scorer:`` does not end an outer one; ``detach()`` on a detached
    scorer does nothing. Each backward is committed on its own, with its examples, whether the forward
    entered the model, its base model (``model.bert``) or a layer.

    ``loss_scale`` is the factor the backward loss carries on top of that reduction, e.g. ``1 / k`` under
    ``k`` steps of gradient accumulation or the GradScaler's scale under fp16; gradients are divided by
    it. A backward whose gradients hold NaN/inf (an fp16 overflow) is skipped as a whole and counted in
    ``skipped_batches``.

    After ``prune_model`` call ``reset()``. A scorer that holds no scores follows the pruned model by
    itself; one that does raises when it would score the pruned model, rather than mix the two.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "taylor",
        *,
        reduction: str = "mean",
        seed: int = 0,
        record_batches: bool = False,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown importance method {method!r}; choose one of {', '.join(METHODS)}")
        if not isinstance(record_batches, bool):
            raise TypeError(f"record_batches must be True or False, got {record_batches!r}")
        if record_batches and method not in GRADIENT_METHODS:
            raise ValueError(
                f"record_batches=True records gate gradients, but {method!r} takes no gradients: use one of "
                f"{', '.join(GRADIENT_METHODS)}"
            )
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
        self.model = model
        self.method = method
        self.reduction = reduction
        self.seed = seed
        self.record_batches = record_batches
        self.loss_scale = 1.0
        self._depth = 0  # attach() calls not yet matched by detach()
        self._handles: list = []
        self._checkpointing: list = []  # the model's modules that can checkpoint, while attached
        self._forward = _Forward()
        self._lock = threading.Lock()  # commits may come from several devices' autograd threads
        self._group: _Pass | None = None  # inside one_batch(): the passes gathered so far
        self._reset_data()

    @property
    def loss_scale(self) -> float:
        return self._loss_scale

    @loss_scale.setter
    def loss_scale(self, value: float) -> None:
        # Checked here, where the mistake is made, rather than as a ZeroDivisionError deep in a backward.
        if not isinstance(value, (numbers.Real, torch.Tensor)):
            raise TypeError(f"loss_scale must be a number, not {type(value).__name__}")
        scale = float(value)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(
                f"loss_scale must be finite and > 0 (the factor the backward loss was multiplied by), not {value!r}"
            )
        self._loss_scale = scale

    # ------------------------------------------------------------------ lifecycle
    def reset(self) -> None:
        """Forget everything accumulated; re-read the live units (call after pruning)."""
        self._reset_data()
        if self._handles:  # put the hooks on the model's current layers
            self._remove_hooks()
            self._add_hooks()

    def _reset_data(self) -> None:
        state = pruning_state(self.model)
        self._state = state
        self._layers = state.layers  # those of the transformers model under any compile / DDP wrapper
        self._sizes = [(len(h), len(n)) for h, n in zip(state.head_ids, state.neuron_ids)]
        device = next(self.model.parameters()).device
        ids = _unit_ids(state)
        self._kinds = tuple(ids)  # the head and neuron kinds, and the key/value groups under grouped-query attention
        # The pass in progress is kept: a reset in the middle of a forward (the model was pruned while the
        # scorer was empty) must not split that forward into two passes that would each count its examples.
        self._total = {kind: [torch.zeros(len(i), device=device) for i in ids[kind]] for kind in self._kinds}
        # record_batches: per kind and layer, one CPU float32 row per committed pass
        self._batches = {kind: [[] for _ in ids[kind]] for kind in self._kinds}
        self.num_examples = 0
        self.skipped_batches = 0

    def _model_changed(self) -> bool:
        adapter = self._state.adapter
        layers = adapter.layers(unwrap_model(self.model))
        return [(adapter.num_heads(x), adapter.ffn_width(x)) for x in layers] != self._sizes

    def _follow_model(self, *, refuse: bool) -> None:
        """If the model was pruned since the last reset: reset when that loses nothing; else raise if ``refuse``."""
        if not self._model_changed():
            return
        if not (self.num_examples or self.skipped_batches):
            self._reset_data()
        elif refuse:
            raise RuntimeError(
                f"the model was pruned after this ImportanceScorer last read it, and the scorer holds what it "
                f"accumulated for the units it had then ({self.num_examples} examples, {self.skipped_batches} "
                "skipped batches): read scorer.scores if you need them, then call scorer.reset() before scoring "
                "the pruned model"
            )

    @property
    def is_attached(self) -> bool:
        """True while the hooks are on (inside ``with scorer:`` or between ``attach()`` and ``detach()``).

        Never for ``magnitude`` / ``random``, which read the weights and need no hooks.
        """
        return bool(self._handles)

    def state_dict(self) -> dict:
        """What has been accumulated so far (completed backward passes), to save and resume scoring.

        ``{"method", "head_ids", "neuron_ids", "heads", "neurons", "num_examples", "skipped_batches"}``,
        with tensors on the CPU; ``load_state_dict`` takes it back on a scorer of the same live units.
        """
        self._follow_model(refuse=False)
        state = self._state
        out = {
            "method": self.method,
            "head_ids": [list(ids) for ids in state.head_ids],
            "neuron_ids": [list(ids) for ids in state.neuron_ids],
            "num_examples": self.num_examples,
            "skipped_batches": self.skipped_batches,
        }
        for kind in self._kinds:
            out[_STATE_KEYS[kind]] = [t.detach().cpu().clone() for t in self._total[kind]]
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue from ``state_dict()`` of a scorer with the same method on the same live units."""
        if state_dict.get("method") != self.method:
            raise ValueError(
                f"these scores were accumulated with {state_dict.get('method')!r}, this scorer uses {self.method!r}"
            )
        live = pruning_state(self.model)
        if state_dict.get("head_ids") != live.head_ids or state_dict.get("neuron_ids") != live.neuron_ids:
            raise ValueError(
                "these scores are for other live units than the model has now (it was pruned in between, or "
                "they come from another model); start a new scorer instead"
            )
        ids = _unit_ids(live)
        if any(_STATE_KEYS[k] not in state_dict for k in ids):
            raise ValueError(
                "this state dict lacks the key/value group scores a grouped-query model needs (saved by an older "
                "hf_gradprune?); start a new scorer instead"
            )
        values = {kind: list(state_dict[_STATE_KEYS[kind]]) for kind in ids}
        if any([tuple(v.shape) for v in values[k]] != [(len(i),) for i in ids[k]] for k in ids):
            raise ValueError("these scores' tensors do not match their unit ids: the state dict is damaged")
        self._reset_data()  # replaced wholesale below, and now sized for the live units
        for kind in ids:
            for total, value in zip(self._total[kind], values[kind]):
                total.copy_(value.to(total.device))
        self.num_examples = int(state_dict["num_examples"])
        self.skipped_batches = int(state_dict.get("skipped_batches", 0))

    def attach(self) -> ImportanceScorer:
        """Start scoring (re-entrant: each call needs its own ``detach()``)."""
        if self._depth == 0 and self.method in GRADIENT_METHODS:
            _refuse_reentrant_checkpointing(unwrap_model(self.model).modules())
            self._follow_model(refuse=True)
            self._add_hooks()
        self._depth += 1
        return self

    def detach(self) -> None:
        """End one ``attach()``; the hooks come off with the outermost one."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            self._remove_hooks()

    @contextlib.contextmanager
    def one_batch(self, examples: int | None = None):
        """Count every backward inside as one pass: the micro-batches of one batch.

        Their sums are added and committed when the context closes: together, or skipped together (one
        ``skipped_batches``) if any of them held NaN/inf, as the whole batch's backward would be; with
        ``record_batches`` they make one row of ``batch_gradients``. ``num_examples`` grows by ``examples``
        (by default those the passes saw: give the batch's size when some micro-batches were not run).
        Set ``loss_scale`` before each backward so that its gradients are on the whole batch's scale. If the
        body raises, nothing of it is committed. Does not nest.
        """
        if examples is not None and not (
            isinstance(examples, numbers.Integral) and not isinstance(examples, bool) and examples >= 0
        ):
            raise ValueError(f"examples must be an integer >= 0 or None, got {examples!r}")
        group = _Pass(0, None)
        with self._lock:
            if self._group is not None:
                raise RuntimeError("ImportanceScorer.one_batch() does not nest: close the open one first")
            self._group = group
        try:
            yield self
        finally:
            with self._lock:
                self._group = None
        if group.pending or group.bad:  # a backward reached the commit inside
            if examples is not None:
                group.examples = int(examples)
            self._commit(group)

    def __enter__(self) -> ImportanceScorer:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # ------------------------------------------------------------------ hooks
    def _add_hooks(self) -> None:
        # The forward may enter the full model or its base model (a custom head on ``model.bert``): both
        # read the padding mask and start a new pass. Both are the transformers model's, under any
        # ``torch.compile`` / DDP wrapper: the wrapper's forward goes through them.
        model = unwrap_model(self.model)
        # Modules that can checkpoint, read again by every forward: checkpointing may be switched on later.
        self._checkpointing = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
        base = getattr(model, "base_model", None)
        entries = [model] + ([base] if isinstance(base, nn.Module) and base is not model else [])
        # Every hook is a ``_Hook`` around a closure, never a bound method: ``copy.deepcopy(model)`` copies
        # the model's hooks, and a bound method would take the scorer (and its thread-local state) along.
        for module in entries:
            hook = self._entry_hook(mask_position(module))
            self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._exit_hook(), always_call=True))
        adapter = self._state.adapter
        for i, layer in enumerate(self._layers):
            for kind, module in ((HEAD, adapter.attention_output(layer)), (NEURON, adapter.ffn_output(layer))):
                self._handles.append(module.register_forward_pre_hook(self._activation_hook(kind, i)))

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._forward.mask = self._forward.current = None

    def _entry_hook(self, mask_position: int | None):
        def hook(module, args, kwargs):
            if torch.is_grad_enabled():
                _refuse_reentrant_checkpointing(self._checkpointing)
            mask = kwargs.get("attention_mask")
            if mask is None and mask_position is not None and len(args) > mask_position:
                mask = args[mask_position]
            self._forward.mask = mask.detach() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
            self._forward.current = None

        return _Hook(hook)

    def _exit_hook(self):
        forward = self._forward

        def hook(module, args, output) -> None:
            # A later forward that enters below the hooked modules must not reuse this one's mask or pass.
            forward.mask = forward.current = None

        return _Hook(hook)

    def _activation_hook(self, kind: str, layer: int):
        group = self._state.geometry.head_dim if kind == HEAD else 1

        def hook(module, args):
            a = args[0]
            if not (torch.is_grad_enabled() and isinstance(a, torch.Tensor) and a.requires_grad):
                return
            if a.shape[-1] != self._total[kind][layer].numel() * group:
                self._follow_model(refuse=True)
            if a.shape[-1] == 0:  # no units left here, nothing to score
                return
            forward = self._forward
            p = forward.current
            if p is None or (kind, layer) in p.seen:  # a unit scored twice: this is another forward
                _refuse_reentrant_checkpointing(self._checkpointing)  # (a forward that entered a layer)
                p = forward.current = _Pass(a.shape[0], forward.mask)
            p.seen.add((kind, layer))
            if p.first_layer is None:
                p.first_layer = layer
            if layer == p.first_layer:
                p.first_count += 1
                p.first_left += 1
            acts = a.detach()

            def on_grad(grad):
                self._accumulate(p, kind, layer, group, acts, grad)

            a.register_hook(on_grad)

        return _Hook(hook)

    @torch.no_grad()
    def _accumulate(self, p: _Pass, kind: str, layer: int, group: int, acts, grad) -> None:
        # float32 whatever the model's dtype: bf16 products summed over tokens lose most of their bits.
        prod = acts.float() * grad.float()
        batch = prod.shape[0]
        prod = prod.reshape(*prod.shape[:-1], prod.shape[-1] // group, group).sum(-1)  # [B, (T,) units]
        mask = p.mask
        if mask is not None and prod.dim() == 3 and tuple(mask.shape) == tuple(prod.shape[:2]):
            prod = prod * mask.to(prod.device, torch.float32)[..., None]  # padding tokens count for nothing
        per_example = prod.sum(dim=tuple(range(1, prod.dim() - 1))) if prod.dim() > 2 else prod
        per_example = per_example * ((batch if self.reduction == "mean" else 1.0) / self._loss_scale)
        parts = {kind: per_example}
        if kind == HEAD and KV_GROUP in self._kinds:  # each group's gate: its heads' s summed before |.| or ^2
            groups = self._total[KV_GROUP][layer].numel()
            parts[KV_GROUP] = per_example.reshape(batch, groups, -1).sum(-1)
        for part, s in parts.items():
            value = (s.abs() if self.method == "taylor" else s.square()).sum(0)
            if not torch.isfinite(value).all():
                p.bad = True
            previous = p.pending.get((part, layer))
            p.pending[(part, layer)] = value if previous is None else previous + value
            if self.record_batches:  # signed, before |.| or ^2: the pass's gradient w.r.t. each unit's gate
                signed = s.sum(0)
                previous = p.signed.get((part, layer))
                p.signed[(part, layer)] = signed if previous is None else previous + signed
        if layer == p.first_layer:
            p.first_left -= 1
            if p.first_left == 0:
                self._commit(p)
                p.first_left = p.first_count  # a second backward through the same graph (retain_graph)

    def _commit(self, p: _Pass) -> None:
        """Fold one completed backward into the totals, or drop it whole if any gradient was NaN/inf."""
        pending, signed, bad = p.pending, p.signed, p.bad
        p.pending, p.signed, p.bad = {}, {}, False
        with self._lock:
            group = self._group
            if group is not None and group is not p:  # inside one_batch(): gathered, committed when it closes
                group.bad = group.bad or bad
                group.examples += p.examples
                for into, part in ((group.pending, pending), (group.signed, signed)):
                    for key, value in part.items():
                        into[key] = value if key not in into else into[key] + value
                return
            if bad:
                self.skipped_batches += 1
                return
            self._follow_model(refuse=True)
            for (kind, layer), value in pending.items():
                total = self._total[kind][layer]
                if value.shape != total.shape:  # never broadcast a pruned layer's scores onto the old units
                    raise RuntimeError(
                        f"layer {layer} has {value.numel()} {kind}s but this scorer has {total.numel()}: the model "
                        "changed during this step; call scorer.reset() after pruning"
                    )
                total += value.to(total.device)
            if self.record_batches:
                # One row per pass in every layer (zeros where the pass did not reach a layer), so that row i
                # of every layer is the same pass.
                for kind in self._kinds:
                    for layer, rows in enumerate(self._batches[kind]):
                        value = signed.get((kind, layer))
                        width = self._total[kind][layer].numel()
                        rows.append(torch.zeros(width) if value is None else value.detach().float().cpu())
            self.num_examples += p.examples

    # ------------------------------------------------------------------ results
    @property
    def batch_gradients(self) -> dict[str, list[torch.Tensor]]:
        """Per committed pass, each live unit's gate gradient (``record_batches=True`` only), on the CPU.

        ``{kind: [tensor [num_passes, live units] per layer]}`` for ``"head"``, ``"neuron"`` and, under
        grouped-query attention, ``"kv_group"``; row ``i`` of every layer is the ``i``-th committed pass
        (one forward/backward): the signed ``s`` of the module docstring summed over the pass's examples,
        under the same ``reduction`` / ``loss_scale`` correction as the scores. Columns follow the scores'
        ``head_ids`` / ``neuron_ids`` (``Scores.kv_ids`` for groups). A pass skipped for NaN/inf is not
        recorded. It takes ``4 * passes * units`` bytes. ``reset()`` and ``load_state_dict()`` clear it and
        ``state_dict()`` leaves it out: it covers the passes scored since then.
        """
        if not self.record_batches:
            raise RuntimeError(
                "this scorer does not record batches: create it with ImportanceScorer(..., record_batches=True)"
            )
        self._follow_model(refuse=False)
        return {
            kind: [
                torch.stack(rows) if rows else torch.zeros(0, total.numel())
                for rows, total in zip(self._batches[kind], self._total[kind])
            ]
            for kind in self._kinds
        }

    @property
    def scores(self) -> Scores:
        """The accumulated (or, for baselines, computed) ``Scores``, on the CPU.

        Accumulated scores are for the units that were live while they were accumulated.
        """
        self._follow_model(refuse=False)
        state = self._state
        grouped = KV_GROUP in self._kinds
        groups = None
        if self.method in GRADIENT_METHODS:
            heads = [t.detach().cpu().clone() for t in self._total[HEAD]]
            neurons = [t.detach().cpu().clone() for t in self._total[NEURON]]
            groups = [t.detach().cpu().clone() for t in self._total[KV_GROUP]] if grouped else None
        elif self.method == "magnitude":
            adapter, d = state.adapter, state.geometry.head_dim
            head_sq = [adapter.head_sq_norms(layer, d).cpu() for layer in self._layers]
            heads = [sq.sqrt() for sq in head_sq]
            neurons = [adapter.neuron_sq_norms(layer).sqrt().cpu() for layer in self._layers]
            if grouped:  # a group's weights: its query heads' and its own key/value projections
                kv_sq = [adapter.kv_head_sq_norms(layer, d).cpu() for layer in self._layers]
                groups = [(h.reshape(len(k), -1).sum(-1) + k).sqrt() for h, k in zip(head_sq, kv_sq)]
        else:
            gen = torch.Generator().manual_seed(self.seed)
            heads = [torch.rand(len(ids), generator=gen) for ids in state.head_ids]
            neurons = [torch.rand(len(ids), generator=gen) for ids in state.neuron_ids]
            if grouped:
                groups = [torch.rand(len(ids), generator=gen) for ids in _unit_ids(state)[KV_GROUP]]
        return Scores(
            method=self.method,
            geometry=state.geometry,
            heads=heads,
            neurons=neurons,
            head_ids=[list(ids) for ids in state.head_ids],
            neuron_ids=[list(ids) for ids in state.neuron_ids],
            num_examples=self.num_examples if self.method in GRADIENT_METHODS else 0,
            skipped_batches=self.skipped_batches,
            groups=groups,
        )


def _refuse_reentrant_checkpointing(modules) -> None:
    """Raise if any of ``modules`` checkpoints its forward (in training mode) with ``use_reentrant=True``.

    Reentrant checkpointing runs the layers' forward without gradients and recomputes each layer within
    the backward, after the forward has ended: the scorer would see every layer as its own forward and
    score all but the last one as zero.
    """
    for module in modules:
        if not (getattr(module, "gradient_checkpointing", False) and module.training):
            continue
        func = getattr(module, "_gradient_checkpointing_func", None)
        if isinstance(func, functools.partial):  # transformers binds its checkpointing kwargs this way
            # torch's checkpoint is reentrant when use_reentrant is not given
            reentrant = func.keywords.get("use_reentrant", True)
        else:
            reentrant = func is _torch_checkpoint
        if reentrant:
            raise RuntimeError(
                f"ImportanceScorer cannot score a model that uses reentrant gradient checkpointing "
                f"(use_reentrant=True, on {type(module).__name__}): its layers would score zero. Enable "
                "checkpointing with use_reentrant=False, transformers' default: "
                "model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False}), "
                "or TrainingArguments(gradient_checkpointing_kwargs={'use_reentrant': False})"
            )


def _unit_ids(state) -> dict[str, list[list[int]]]:
    """Live original ids per kind; under grouped-query attention also the live key/value heads."""
    ids = {HEAD: state.head_ids, NEURON: state.neuron_ids}
    group = state.geometry.group_size
    if group > 1:
        ids[KV_GROUP] = [sorted({h // group for h in heads}) for heads in state.head_ids]
    return ids


def mask_position(module: nn.Module) -> int | None:
    """Where ``attention_mask`` sits among ``module.forward``'s positional parameters (GPT-2 has it third)."""
    try:
        names = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return None
    return names.index("attention_mask") if "attention_mask" in names else None
