"""The calibration stream: what every layer of a model is called with, and the hidden state entering one
layer at a time, so that layers can run alone, one after the other, on stored inputs.

Reconstruction (and any layer-by-layer method: SparseGPT-style solvers, Wanda) uses it so that a 7-8B model's
calibration costs a few layer passes per layer, with one layer's activations held at a time, instead of a
forward of the whole model per sub-layer.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .calibration import model_inputs


class StreamError(ValueError):
    """A model whose layers cannot be replayed one at a time (nothing was changed)."""


class Stop(Exception):
    """Ends a forward once everything of interest has been read (nothing after it is needed)."""


def _forward_kwargs(model) -> dict:
    # No KV cache: each forward stops early and is thrown away.
    return {"use_cache": False} if hasattr(model.config, "use_cache") else {}


def first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def like(template, hidden):
    """A layer's return value shaped as ``template`` (a tensor, or a tuple led by one) carrying ``hidden``."""
    if isinstance(template, tuple):
        return (hidden, *template[1:])
    if isinstance(template, list):
        return [hidden, *template[1:]]
    return hidden


class LayerStream:
    """Per calibration batch, the hidden state entering the current layer, and the arguments every layer
    was called with in one forward of the model (masks, position embeddings: whatever the family passes).

    The recording forward runs the first layer and passes the hidden state through the others (their calls
    are all that is read), so it costs about one layer per batch. After it, each layer runs alone on the
    stored hidden states: reconstructing L layers costs a few layer passes each, not a forward per sub-layer.
    Holds one hidden state per calibration token (of the model's dtype) at a time.
    """

    def __init__(self, model, layers, batches):
        self.hidden, self.calls = [], []
        if model is None:  # fork()
            return
        device = next(model.parameters()).device
        for batch in batches:
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model_inputs(batch).items()}
            calls: list = [None] * len(layers)
            template: list = []

            def pre(module, args, kwargs, i, calls=calls):
                calls[i] = (args, kwargs)
                if i == len(layers) - 1:
                    raise Stop

            def post(module, args, kwargs, output, template=template):
                template.append(output)

            def passthrough(*args, template=template, **kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                return like(template[0], hidden)

            handles = [
                layer.register_forward_pre_hook(lambda m, a, k, i=i: pre(m, a, k, i), with_kwargs=True)
                for i, layer in enumerate(layers)
            ]
            handles.append(layers[0].register_forward_hook(post, with_kwargs=True))
            # an instance ``forward`` (e.g. Accelerate's hook wrapper) is put back afterwards
            saved = [layer.__dict__.get("forward") for layer in layers]
            for layer in layers[1:]:
                layer.forward = passthrough
            try:
                model(**inputs, **_forward_kwargs(model))
            except Stop:
                pass
            finally:
                for h in handles:
                    h.remove()
                for layer, forward in zip(layers[1:], saved[1:]):
                    if forward is None:
                        del layer.forward
                    else:
                        layer.forward = forward
            if any(c is None for c in calls):
                raise StreamError(
                    "a forward of a calibration batch did not run every layer (a custom forward that skips "
                    "layers?): reconstruction replays each layer's call"
                )
            first_args, first_kwargs = calls[0]
            self.hidden.append(first_args[0] if first_args else first_kwargs["hidden_states"])
            # the hidden state is replaced at every replay; dropping it keeps one per token, not one per layer
            self.calls.append([_without_hidden(a, k) for a, k in calls])

    def fork(self) -> LayerStream:
        """A stream over the same calls and (until replaced) the same hidden states."""
        other = LayerStream(None, [], [])
        other.hidden, other.calls = list(self.hidden), self.calls
        return other

    def call(self, layer: nn.Module, index: int, b: int):
        args, kwargs = self.calls[b][index]
        if args is not None:
            return layer(self.hidden[b], *args, **kwargs)
        return layer(**kwargs, hidden_states=self.hidden[b])

    def run(self, layer: nn.Module, index: int, b: int, reads: list[tuple[nn.Module, str]], stop: bool):
        """Run ``layer`` on batch ``b``'s stored input with ``reads`` hooked (``(module, "input")``: its first
        input; ``"output"``: its first output; ``(layer, "output")`` is the layer's own); returns the reads (as
        the model computed them) and the layer's output, or None when ``stop`` ended the pass at the last read."""
        got: dict[int, torch.Tensor] = {}
        inner = [(slot, m, w) for slot, (m, w) in enumerate(reads) if (m, w) != (layer, "output")]
        wanted = len(inner)
        stop = stop and wanted == len(reads)  # the layer's own output comes at its end

        def make(slot):
            def grab(value):
                got[slot] = first(value).detach()
                if stop and len(got) == wanted:
                    raise Stop

            return grab

        handles = []
        for slot, module, where in inner:
            grab = make(slot)
            if where == "input":
                handles.append(module.register_forward_pre_hook(lambda m, args, g=grab: g(args)))
            else:
                handles.append(module.register_forward_hook(lambda m, args, out, g=grab: g(out)))
        out = None
        try:
            out = self.call(layer, index, b)
        except Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        if out is not None:
            out = first(out)
            for slot, read in enumerate(reads):
                if read == (layer, "output"):
                    got[slot] = out
        if len(got) != len(reads):
            raise StreamError(
                f"layer {index} did not run the modules reconstruction reads (a family adapter that names the "
                "wrong modules?)"
            )
        return [got[i] for i in range(len(reads))], out

    def advance(self, layer: nn.Module, index: int) -> None:
        """Replace each stored hidden state by ``layer``'s output (with its reconstruction folded in)."""
        for b in range(len(self.hidden)):
            self.hidden[b] = first(self.call(layer, index, b))


def _without_hidden(args: tuple, kwargs: dict) -> tuple:
    """A layer call's arguments without the hidden state: ``(rest of args, kwargs)``, or ``(None, kwargs)``
    when the hidden state was a keyword."""
    if args:
        return tuple(args[1:]), dict(kwargs)
    return None, {k: v for k, v in kwargs.items() if k != "hidden_states"}


def block_of(layer: nn.Module, proj: nn.Module) -> nn.Module | None:
    """The layer's child that holds ``proj`` (the attention block of its output projection), or None."""
    for child in layer.children():
        if any(m is proj for m in child.modules()):
            return child
    return None


@contextlib.contextmanager
def replaying(block: nn.Module | None, outputs: list | None):
    """While open, ``block`` returns ``outputs[current[0]]`` instead of running (when ``outputs`` is given)."""
    current = [0]
    if block is None or outputs is None:
        yield current
        return
    saved = block.__dict__.get("forward")  # an instance forward (Accelerate's hook wrapper) is put back after
    block.forward = lambda *args, **kwargs: outputs[current[0]]
    try:
        yield current
    finally:
        if saved is None:
            del block.forward
        else:
            block.forward = saved
