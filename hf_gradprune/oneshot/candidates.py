"""Choosing among the retraining-free steps by held-out loss, so that the default never loses to its own parts.

Reconstruction and rearrangement each lower their own objective (a sub-layer's residual-stream error, the
gradients of the removed units) and still can cost accuracy (benchmarks/README.md §6: reconstruction 0.9-5.3
points on MiniLM, rearrangement 0.6-9). So ``prune_oneshot`` measures the candidates (one-shot; + reconstruction;
+ rearrangement; + both) on calibration batches that none of the steps fitted on, and keeps the lowest loss; the
trainer's ``reconstruct=True`` keeps its reconstruction by the same rule (``improves``). A candidate's units
are gated off (``unit_gates``: a factor 0 is exactly the cut), so no candidate needs its own copy of the model;
reconstruction's changes (the output projections) are saved and put back between candidates (``ProjectionSnapshot``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..state import pruning_state
from .budget_search import _mean_loss, plan_gates
from .reconstruct import ReconstructionReport

# A step's setting besides True (done) and False (not done): tried both ways and kept by held-out loss.
AUTO = "auto"


@dataclass
class Candidate:
    """One way to finish the prune, and its mean loss on the held-out batches (None: not measured)."""

    name: str
    rearrange: bool
    reconstruct: bool
    loss: float | None = None
    note: str | None = None
    reconstruction: ReconstructionReport | None = None  # when this candidate reconstructs

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "reconstruction"}
        r = self.reconstruction
        if r is not None:
            needed = [s.tokens_needed for s in r.sublayers if s.tokens_needed]
            out["reconstruction"] = {
                "error_before": r.error_before,
                "error_after": r.error_after,
                "skipped": len(r.skipped),
                "tokens": r.tokens,
                "tokens_needed": max(needed) if needed else None,
                "seconds": r.seconds,
            }
        return out


def candidate_name(rearrange: bool, reconstruct: bool) -> str:
    return {
        (False, False): "one-shot",
        (False, True): "reconstruction",
        (True, False): "rearrangement",
        (True, True): "rearrangement + reconstruction",
    }[(rearrange, reconstruct)]


def check_step(name: str, value) -> None:
    if not (value is True or value is False or (isinstance(value, str) and value == AUTO)):
        raise ValueError(
            f"{name} must be True, False or 'auto' (try it and keep it only if it lowers the held-out loss), "
            f"got {value!r}"
        )


def candidates(rearrange, reconstruct) -> list[Candidate]:
    """The candidates the two steps' settings allow, simplest first (ties keep the simpler one)."""
    out = []
    for r in (False, True) if rearrange == AUTO else (bool(rearrange),):
        for c in (False, True) if reconstruct == AUTO else (bool(reconstruct),):
            out.append(Candidate(candidate_name(r, c), r, c))
    return out


def best(found: list[Candidate]) -> Candidate:
    """The measured candidate of lowest loss; the first (simplest) among equal ones. A non-finite loss never wins
    over a finite one."""

    def key(c: Candidate):
        finite = c.loss is not None and math.isfinite(c.loss)
        return (not finite, c.loss if finite else 0.0)

    return min((c for c in found if c.loss is not None), key=key)


def held_out_loss(model: nn.Module, batches: list[dict], loss_fn, plan=None, micro_batch_size=None) -> float:
    """Mean loss over ``batches`` with the units outside ``plan`` gated off (None: the model as it is), in eval mode."""
    gates = plan_gates(model, plan) if plan is not None else None
    was_training = model.training
    model.eval()
    try:
        return _mean_loss(model, batches, loss_fn, gates, micro_batch_size)
    finally:
        model.train(was_training)


class ProjectionSnapshot:
    """A copy, in host memory, of every layer's output projections (weights and biases): all that reconstruction
    changes. ``restore()`` puts it back into the same parameters."""

    def __init__(self, model: nn.Module):
        state = pruning_state(model)
        adapter = state.adapter
        self.params = [
            p
            for layer in state.layers
            for proj in (adapter.attention_output(layer), adapter.ffn_output(layer))
            for p in proj.parameters(recurse=False)
        ]
        self.saved = [p.detach().to("cpu", copy=True) for p in self.params]

    @torch.no_grad()
    def restore(self) -> None:
        for p, saved in zip(self.params, self.saved):
            p.copy_(saved.to(p.device))


def improves(before: float, after: float) -> bool:
    """Whether a step that moved the held-out loss from ``before`` to ``after`` is kept: a finite, strictly lower loss
    (or any finite one where the loss before was not)."""
    return math.isfinite(after) and (not math.isfinite(before) or after < before)
