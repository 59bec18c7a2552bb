"""Weights stored as values + bitmask: packing, and turning a folder ``save_pretrained`` just wrote (dense, in a
temporary folder) into a bitmask folder. Reading it back is the shipped file's (``modeling_gradprune``
``load_bitmask_weights``), so that remote code and ``load_pruned`` restore the weights with the same code.

The layout (format 2): ``model.bitmask.safetensors`` (or shards ``model.bitmask-0000i-of-0000n.safetensors`` and
``model.safetensors.index.bitmask.json``). A packed parameter ``P`` is stored as ``P`` (its nonzero elements, 1-D,
in its dtype) and ``P.bitmask`` (uint8: bit i of byte j is element 8j + i of the row-major parameter), plus
``P.negzero`` (a bit per zero, set for -0.0) when some zeros are -0.0; the file's metadata ``gradprune_packed``
maps each ``P`` to its shape. Every other tensor is stored as it is.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .. import modeling_gradprune
from ..modeling_gradprune import (
    BITMASK,
    BITMASK_FORMAT_REQUIRES,
    BITMASK_FORMAT_VERSION,
    CLASS_PREFIX,
    CONFIG_KEY,
    NEGZERO,
    PACKED_KEY,
    SPARSITY_KEY,
    auto_map_for,
)
from .checkpoint import with_variant

_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # a float's bits, by its width


def _pack_bits(flags: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.packbits(flags, bitorder="little"))  # bit i of byte j: element 8j + i


def pack_bitmask(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(values, bits, negzero)``: the nonzero elements of ``tensor`` (row-major), a packed bitmask of where they
    are, and, if any zero is -0.0, a packed bit per zero (in order) set for -0.0, else None.
    ``modeling_gradprune.unpack_bitmask`` is the inverse, bit for bit (NaN and inf are values)."""
    if not tensor.is_floating_point():
        raise TypeError(f"only floating-point weights are packed, got {tensor.dtype}")
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    keep = (flat != 0).numpy()
    raw = flat.view(_BITS[flat.element_size()]).numpy()  # bit patterns (NumPy has no bfloat16), copied exactly
    negative = raw[~keep] < 0  # -0.0 is the sign bit alone
    values = torch.from_numpy(raw[keep]).view(flat.dtype)
    return values, _pack_bits(keep), _pack_bits(negative) if negative.any() else None


def packed_names(model, targets: list[str]) -> set[str]:
    """Every name under which the target modules' weights may be saved (a tied weight has several)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    absent = [t for t in targets if f"{t}.weight" not in params]
    if absent:
        raise ValueError(
            f"the weight-sparsity record names {absent[:3]}, which the model lacks: record_weight_sparsity was "
            "called on another model"
        )
    wanted = {id(params[f"{t}.weight"]) for t in targets}
    return {name for name, p in params.items() if id(p) in wanted}


def _bitmask_name(name: str) -> str:
    """``model.safetensors`` -> ``model.bitmask.safetensors``; ``model-00001-of-00002.safetensors`` ->
    ``model.bitmask-00001-of-00002.safetensors`` (transformers' variant naming)."""
    stem, ext = name.rsplit(".", 1)
    head, sep, shard = stem.partition("-")
    return f"{head}.{BITMASK}{sep}{shard}.{ext}"


def compress_folder(folder: str, names: set[str], model_type: str) -> dict:
    """Rewrite the dense weights ``save_pretrained`` wrote into ``folder`` as a bitmask folder: the tensors of
    ``names`` packed, the config marked format 2 with ``auto_map`` to the shipped classes (copied in). Returns
    ``{"packed": [names], "bytes": {file: size}}``."""
    index_name = "model.safetensors.index.json"
    index_path = os.path.join(folder, index_name)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            index = json.load(f)
        files = sorted(set(index["weight_map"].values()))
    elif os.path.isfile(os.path.join(folder, "model.safetensors")):
        index, files = None, ["model.safetensors"]
    else:
        found = sorted(n for n in os.listdir(folder) if n != "config.json")
        raise ValueError(f"save_pretrained wrote no safetensors weights ({found}); bitmask folders are safetensors")
    packed, renamed, weight_map = [], {}, {}
    for name in files:
        path = os.path.join(folder, name)
        with safe_open(path, framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors, out, shapes = load_file(path), {}, {}
        for key, tensor in tensors.items():
            if key in names:
                out[key], out[f"{key}.{BITMASK}"], negzero = pack_bitmask(tensor)
                if negzero is not None:
                    out[f"{key}.{NEGZERO}"] = negzero
                shapes[key] = list(tensor.shape)
            else:
                out[key] = tensor
        renamed[name] = _bitmask_name(name)
        weight_map.update(dict.fromkeys(out, renamed[name]))
        save_file(out, os.path.join(folder, renamed[name]), metadata={**metadata, PACKED_KEY: json.dumps(shapes)})
        os.remove(path)  # ours: written by save_pretrained into this temporary folder
        packed += shapes
    if index is not None:
        index["weight_map"] = weight_map
        with open(os.path.join(folder, with_variant(index_name, BITMASK)), "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
        os.remove(index_path)
    _mark_config(folder, model_type)
    shipped = os.path.join(folder, os.path.basename(modeling_gradprune.__file__))
    if not os.path.isfile(shipped):  # a stock model's save does not copy it; a bitmask folder needs it
        shutil.copyfile(modeling_gradprune.__file__, shipped)
    sizes = {n: os.path.getsize(os.path.join(folder, n)) for n in renamed.values()}
    return {"packed": sorted(packed), "bytes": sizes}


def _mark_config(folder: str, model_type: str) -> None:
    """config.json of a bitmask folder: format 2 (the previous release refuses it), storage ``bitmask``, and
    ``auto_map`` / ``architectures`` naming the shipped classes, which restore the weights."""
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    record = config[CONFIG_KEY]
    record["format_version"], record["requires"] = BITMASK_FORMAT_VERSION, BITMASK_FORMAT_REQUIRES
    record[SPARSITY_KEY] = {**record[SPARSITY_KEY], "storage": BITMASK}
    config["auto_map"] = auto_map_for(model_type)
    names = config.get("architectures") or []
    config["architectures"] = [n if n.startswith(CLASS_PREFIX) else CLASS_PREFIX + n for n in names]
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
