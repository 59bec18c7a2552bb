"""``Scores``: per-layer importance of every live head and FFN neuron, as plain tensors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from ..architectures import Geometry
from ..units import HEAD, NEURON

GRADIENT_METHODS = ("taylor", "fisher")
METHODS = (*GRADIENT_METHODS, "magnitude", "random")


class ScoresError(ValueError):
    """Scores that cannot be turned into a plan, or a file that holds none."""


_METADATA_KEY = "hf_gradprune_scores"
_HEADER_KEYS = ("method", "geometry", "head_ids", "neuron_ids", "num_examples")
_WRITE_WITH_SAVE = "score files are written by Scores.save (e.g. scorer.scores.save('scores.safetensors'))"


def _require(data: dict, keys, path: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise ScoresError(
            f"{path!r} is not a scores file: it lacks {', '.join(map(repr, missing))}; {_WRITE_WITH_SAVE}"
        )


def _tensor_names(num_layers: int) -> list[str]:
    """The safetensors keys of the heads' then the neurons' scores, layer by layer."""
    return [f"{kind}.{i}" for kind in ("heads", "neurons") for i in range(num_layers)]


@dataclass
class Scores:
    """Importance of each live unit, with the unit's index in the *original* (unpruned) model.

    ``heads[l]`` is a float32 tensor ``[H_l]`` and ``head_ids[l]`` the original head index of each entry;
    ``neurons[l]`` / ``neuron_ids[l]`` likewise for FFN neurons. Higher means more important.
    ``num_examples`` counts the examples whose gradients were accumulated (0 for weight-only methods).

    ``groups`` (grouped-query attention only, else None): ``groups[l]`` scores each live key/value head
    of layer ``l`` with all its query heads as one unit (ascending original key/value id, as ``kv_ids``
    gives them). For gradient methods it is the gate of the whole group: the per-example contributions of
    its query heads are summed *before* ``|.|`` or squaring, so it is not the sum of the heads' scores.
    """

    method: str
    geometry: Geometry
    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    head_ids: list[list[int]]
    neuron_ids: list[list[int]]
    num_examples: int = 0
    skipped_batches: int = 0
    meta: dict = field(default_factory=dict)
    groups: list[torch.Tensor] | None = None

    def kv_ids(self, layer: int) -> list[int]:
        """Original ids of the key/value heads live in ``layer``: those its live query heads read."""
        return sorted({h // self.geometry.group_size for h in self.head_ids[layer]})

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ``ScoresError`` if these scores cannot rank units (no data, NaN/inf, ragged ids)."""
        if self.method in GRADIENT_METHODS and self.num_examples <= 0:
            raise ScoresError(
                f"no examples were accumulated for {self.method!r} scores: run forward *and* backward "
                "(loss.backward()) on at least one batch while the ImportanceScorer is active (inside `with scorer:`)"
            )
        n = self.geometry.num_layers
        if not (len(self.heads) == len(self.neurons) == len(self.head_ids) == len(self.neuron_ids) == n):
            raise ScoresError(f"scores must cover all {n} layers of the model")
        for kind, values, ids in ((HEAD, self.heads, self.head_ids), (NEURON, self.neurons, self.neuron_ids)):
            for layer, (v, i) in enumerate(zip(values, ids)):
                if v.numel() != len(i):
                    raise ScoresError(f"layer {layer}: {v.numel()} {kind} scores for {len(i)} {kind} ids")
                if not torch.isfinite(v).all():
                    raise ScoresError(
                        f"layer {layer} has NaN or inf {kind} scores; check the loss for NaN/inf and, under "
                        "fp16, make sure overflowing steps are skipped (lower the learning rate or use bf16)"
                    )
        if self.groups is not None:
            if len(self.groups) != n:
                raise ScoresError(f"group scores must cover all {n} layers of the model")
            for layer, v in enumerate(self.groups):
                if v.numel() != len(self.kv_ids(layer)) or not torch.isfinite(v).all():
                    raise ScoresError(
                        f"layer {layer}: {v.numel()} key/value group scores for {len(self.kv_ids(layer))} live "
                        "key/value heads, or NaN/inf among them"
                    )

    # ------------------------------------------------------------------ arithmetic
    def __add__(self, other: Scores) -> Scores:
        if (self.method, self.geometry, self.head_ids, self.neuron_ids) != (
            other.method,
            other.geometry,
            other.head_ids,
            other.neuron_ids,
        ):
            raise ScoresError("can only add scores of the same method, model and live units")
        return Scores(
            method=self.method,
            geometry=self.geometry,
            heads=[a + b for a, b in zip(self.heads, other.heads)],
            neurons=[a + b for a, b in zip(self.neurons, other.neurons)],
            head_ids=self.head_ids,
            neuron_ids=self.neuron_ids,
            num_examples=self.num_examples + other.num_examples,
            skipped_batches=self.skipped_batches + other.skipped_batches,
            meta=dict(self.meta),
            groups=None
            if self.groups is None or other.groups is None
            else [a + b for a, b in zip(self.groups, other.groups)],
        )

    def all_reduce(self, device: torch.device | str | None = None) -> Scores:
        """Sum over all processes of ``torch.distributed`` (a no-op without one); returns new scores.

        Every rank must call it. ``device`` is where the collective runs (CUDA for NCCL, CPU for gloo);
        by default the current CUDA device under NCCL, else the CPU.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        if device is None:
            device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
        tensors = (*self.heads, *self.neurons, *(self.groups or ()))
        flat = torch.cat(
            [t.float().reshape(-1) for t in tensors]
            + [torch.tensor([float(self.num_examples), float(self.skipped_batches)])]
        ).to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.cpu()
        out, pos = [], 0
        for t in tensors:
            out.append(flat[pos : pos + t.numel()].reshape(t.shape))
            pos += t.numel()
        n = len(self.heads)
        return Scores(
            method=self.method,
            geometry=self.geometry,
            heads=out[:n],
            neurons=out[n : 2 * n],
            head_ids=self.head_ids,
            neuron_ids=self.neuron_ids,
            num_examples=int(round(flat[pos].item())),
            skipped_batches=int(round(flat[pos + 1].item())),
            meta=dict(self.meta),
            groups=None if self.groups is None else out[2 * n :],
        )

    # ------------------------------------------------------------------ files
    def _header(self) -> dict:
        return {
            "method": self.method,
            "geometry": self.geometry.to_dict(),
            "head_ids": self.head_ids,
            "neuron_ids": self.neuron_ids,
            "num_examples": self.num_examples,
            "skipped_batches": self.skipped_batches,
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``*.safetensors`` (tensors + JSON header in the metadata) or ``*.json``."""
        path = os.fspath(path)
        if path.endswith(".json"):
            data = self._header()
            data["heads"] = [t.tolist() for t in self.heads]
            data["neurons"] = [t.tolist() for t in self.neurons]
            if self.groups is not None:
                data["groups"] = [t.tolist() for t in self.groups]
            with open(path, "w") as f:
                json.dump(data, f)
            return
        if not path.endswith(".safetensors"):
            raise ValueError(f"save scores to a .safetensors or .json path, not {path!r}")
        from safetensors.torch import save_file

        values = [t.float().contiguous().cpu() for t in (*self.heads, *self.neurons)]
        tensors = dict(zip(_tensor_names(len(self.heads)), values))
        for layer, t in enumerate(self.groups or ()):
            tensors[f"groups.{layer}"] = t.float().contiguous().cpu()
        save_file(tensors, path, metadata={_METADATA_KEY: json.dumps(self._header())})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Scores:
        """Read what ``save`` wrote; ``ScoresError`` for a missing file or one that ``save`` did not write."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ScoresError(f"no scores file at {path!r}")
        try:
            if path.endswith(".json"):
                with open(path) as f:
                    data = json.load(f)
                if not isinstance(data, dict):
                    raise ScoresError(f"{path!r} holds JSON but not an object; {_WRITE_WITH_SAVE}")
                _require(data, (*_HEADER_KEYS, "heads", "neurons"), path)
                heads = [torch.tensor(v, dtype=torch.float32) for v in data["heads"]]
                neurons = [torch.tensor(v, dtype=torch.float32) for v in data["neurons"]]
                groups = data.get("groups")
                groups = None if groups is None else [torch.tensor(v, dtype=torch.float32) for v in groups]
            else:
                from safetensors import safe_open

                with safe_open(path, framework="pt") as f:
                    header = (f.metadata() or {}).get(_METADATA_KEY)
                    if header is None:
                        raise ScoresError(
                            f"{path!r} is a safetensors file without the {_METADATA_KEY!r} metadata that "
                            f"Scores.save writes (is it a model's weights?); {_WRITE_WITH_SAVE}"
                        )
                    data = json.loads(header)
                    _require(data, _HEADER_KEYS, path)
                    n = data["geometry"]["num_layers"]
                    names, present = _tensor_names(n), set(f.keys())
                    missing = [k for k in names if k not in present]
                    if missing:
                        raise ScoresError(f"{path!r} lacks the score tensors {missing[:4]}; {_WRITE_WITH_SAVE}")
                    values = [f.get_tensor(k) for k in names]
                    heads, neurons = values[:n], values[n:]
                    group_names = [f"groups.{i}" for i in range(n)]
                    groups = [f.get_tensor(k) for k in group_names] if group_names[0] in present else None
            scores = cls(
                method=data["method"],
                geometry=Geometry(**data["geometry"]),
                heads=heads,
                neurons=neurons,
                head_ids=[list(map(int, ids)) for ids in data["head_ids"]],
                neuron_ids=[list(map(int, ids)) for ids in data["neuron_ids"]],
                num_examples=int(data["num_examples"]),
                skipped_batches=int(data.get("skipped_batches", 0)),
                meta=data.get("meta", {}),
                groups=groups,
            )
        except ScoresError:
            raise
        except Exception as e:  # a truncated or hand-edited file: say which, not where it broke
            raise ScoresError(f"cannot read scores from {path!r} ({type(e).__name__}: {e}); {_WRITE_WITH_SAVE}") from e
        if scores.method not in METHODS:
            raise ScoresError(f"{path!r} has scores of an unknown method {scores.method!r}")
        return scores

    def summary(self) -> str:
        lines = [f"{self.method} scores over {self.num_examples} examples"]
        for layer, (h, n) in enumerate(zip(self.heads, self.neurons)):
            top = "-" if h.numel() == 0 else f"{h.max().item():.3g}"
            mean = "-" if n.numel() == 0 else f"{n.mean().item():.3g}"
            lines.append(f"  layer {layer}: {h.numel()} heads (max {top}), {n.numel()} neurons (mean {mean})")
        return "\n".join(lines)
