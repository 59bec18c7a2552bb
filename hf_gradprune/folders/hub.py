"""Saving and loading pruned Hub folders without remote code (dense, or weights stored as values + bitmask).

Imports the shipped modeling file, ``checkpoint`` and ``state`` (which checks a folder's config against its
recorded plan before anything loads; never scoring or surgery), so loading stays light; a transformers-v4
folder is handed to ``v4_compat``, imported only then, and a folder with a headless layer saved before its
family's empty-block forward existed gets it through its adapter.
"""

from __future__ import annotations

import os

import torch
import transformers
from torch import nn

from ..modeling_gradprune import (
    BITMASK,
    CONFIG_KEY,
    STORAGE_FORMATS,
    EmptyBlock,
    auto_map_for,
    check_format,
    gradprune_class,
    push_kwargs,
    stock_class,
    storage_format,
    write_folder,
)
from ..sparsity.record import recorded_weight_sparsity
from ..state import RecordError, pruning_state, unwrap_model
from .checkpoint import CheckpointError, resolve_model_class, weight_faults
from .sparse_format import compress_folder, packed_names


class FolderMismatchError(CheckpointError):
    """The folder's weights lack tensors of, or have other shapes than, the model its config's plan describes."""


def save_pruned(
    model: nn.Module, save_directory: str | os.PathLike, tokenizer=None, sparse_format: str = "dense", **kwargs
) -> None:
    """``model.save_pretrained`` plus the tokenizer, when given, written together as one atomic save.

    Both are written to a temporary folder first, so a failure leaves a previous save in
    ``save_directory`` as it was; then the previous model's weight files are replaced and the user's other
    files kept (see ``modeling_gradprune.write_folder``). ``kwargs`` go to ``save_pretrained``.

    ``sparse_format="dense"`` (the default) writes the weights as they are, zeros included: every runtime loads
    the folder. ``"bitmask"`` stores each matrix that ``config.gradprune["weight_sparsity"]`` covers
    (``record_weight_sparsity``) as its nonzero values plus a bitmask, in safetensors: a smaller folder that
    ``load_pruned`` and ``trust_remote_code=True`` (the shipped modeling file) restore bit-exactly; plain
    ``from_pretrained`` without remote code finds no weights it reads and fails.
    """
    if sparse_format not in STORAGE_FORMATS:
        raise ValueError(f"sparse_format must be one of {', '.join(STORAGE_FORMATS)}, got {sparse_format!r}")
    kwargs = push_kwargs(save_directory, kwargs)
    compress = None
    if sparse_format == BITMASK:
        compress = _bitmask_plan(model, kwargs)

    def write(folder: str) -> None:
        model.save_pretrained(folder, **kwargs)
        if compress is not None:
            compress_folder(folder, *compress)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    write_folder(save_directory, write)


def _bitmask_plan(model: nn.Module, kwargs: dict) -> tuple[set[str], str]:
    """What a bitmask save packs (the parameter names, ties included) and the model type; every refusal before
    anything is written."""
    inner = unwrap_model(model)
    config = inner.config
    info = recorded_weight_sparsity(config)
    if not info:
        raise ValueError(
            "sparse_format='bitmask' packs the matrices config.gradprune['weight_sparsity'] names, and this model "
            "has no such record: sparsify it and call record_weight_sparsity first, or save it dense"
        )
    for key, why in (
        ("variant", "it has no variants"),
        ("push_to_hub", "save it, then upload the folder (huggingface_hub's upload_folder)"),
        ("state_dict", "it packs the model's own weights"),
    ):
        if kwargs.get(key):
            raise ValueError(f"sparse_format='bitmask' cannot take {key}: {why}")
    auto_map = getattr(config, "auto_map", None)
    if auto_map and auto_map != auto_map_for(config.model_type):
        raise ValueError(
            "this model's config has an auto_map of its own remote code; a bitmask folder needs hf_gradprune's "
            "(which restores the weights): save it dense"
        )
    return packed_names(inner, info["targets"]), config.model_type


def check_folder(folder: str | os.PathLike, model_class=None, variant: str | None = None) -> None:
    """Raise unless the folder's weights (of ``variant``, as ``save_pretrained(variant=...)`` names them) fit
    the model its config (and plan) rebuilds.

    ``FolderMismatchError`` for a config.json that contradicts its recorded plan (or a plan naming units the
    model never had), a tensor of another shape or a base-model tensor the weights lack (it would load as
    random values); ``CheckpointError`` (its parent) for a folder without weights or a weight file that
    cannot be read; ``FolderFormatError`` for a folder of a newer hf_gradprune. Reads tensor headers only.
    """
    folder = os.fspath(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    record = getattr(config, CONFIG_KEY, None)
    if record:
        check_format(record)
    sparse = recorded_weight_sparsity(config)  # checked field by field (FolderFormatError)
    if record and storage_format(record) == BITMASK:
        if variant:
            raise CheckpointError(f"{folder} stores its weights as values + bitmask, which has no variants")
        variant = BITMASK
    cls = gradprune_class(resolve_model_class(config, model_class))
    with torch.device("meta"):
        skeleton = cls(config)
    if sparse:
        modules = dict(skeleton.named_modules())
        absent = [t for t in sparse["targets"] if getattr(modules.get(t), "weight", None) is None]
        if absent:
            raise FolderMismatchError(
                f"{folder}: config.json's weight-sparsity record names {len(absent)} module(s) the model lacks, "
                f"e.g. {absent[:3]}: it was edited or mixed with another model's config; restore it"
            )
    if record:
        try:
            pruning_state(skeleton)  # the one check of a config against its recorded plan
        except RecordError as e:
            raise FolderMismatchError(
                f"{folder}: {e}. As it is, the folder would load as another model than the one pruned: restore "
                "config.json from the save, or re-save the folder from the pruned model."
            ) from None
    missing, mismatched = weight_faults(folder, skeleton, config, variant)
    if mismatched:
        raise FolderMismatchError(
            f"{folder}: the weights do not match the pruning plan in config.json ({len(mismatched)} tensors), "
            f"e.g. {'; '.join(mismatched[:3])}. The folder was edited or mixed with another model's files; "
            "re-save it from the pruned model."
        )
    if missing:
        raise FolderMismatchError(
            f"{folder}: the weights lack {len(missing)} tensor(s) of the model, e.g. {missing[:3]}, which would "
            "load as random values. The weight files are incomplete or belong to another model; re-save it "
            "from the pruned model."
        )


def load_pruned(folder: str | os.PathLike, model_class=None, **kwargs) -> nn.Module:
    """Load a pruned folder with hf_gradprune's classes, no ``trust_remote_code`` needed.

    ``model_class`` picks the head (default: the folder's ``architectures``), e.g. ``BertModel`` to get
    the encoder of a classifier. ``kwargs`` go to ``from_pretrained`` (``dtype``, ``device_map``...).
    A pruned folder is checked first (``check_folder``): nothing is loaded if its weights are absent,
    unreadable, incomplete or of other shapes than its plan. A folder saved by transformers v4 after
    ``prune_heads`` (``pruned_heads`` in config.json) loads too (``v4_compat``), checked the same way.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder; load_pruned takes a directory saved by save_pretrained")
    config = transformers.AutoConfig.from_pretrained(folder)
    if not getattr(config, CONFIG_KEY, None) and getattr(config, "pruned_heads", None):
        from .v4_compat import load_v4_folder  # a transformers-v4 pruned folder (needs surgery: imported here)

        return load_v4_folder(folder, model_class=model_class, config=config, **kwargs)
    cls = resolve_model_class(config, model_class)
    if getattr(config, CONFIG_KEY, None):
        check_folder(folder, cls, kwargs.get("variant"))
        # An empty structure: the config alone builds the model, a stock one (that saves atomically, as pruned).
        # Bitmask weights: the pruned classes restore them (and then make a stock model stock again).
        record = getattr(config, CONFIG_KEY)
        shipped = record.get("structure") or storage_format(record) == BITMASK
        cls = gradprune_class(cls) if shipped else stock_class(cls)
    model = cls.from_pretrained(folder, config=config, **kwargs)
    _empty_headless_attention(model)
    return model


def _empty_headless_attention(model: nn.Module) -> None:
    """Give the empty-block forward to a layer saved without heads and without it (BERT-family folders written
    before it existed), whose attention kernel would get zero heads: CUDA's fused SDPA returns None there."""
    plan = (getattr(model.config, CONFIG_KEY, None) or {}).get("plan") or {}
    if not any(len(heads) == 0 for heads in plan.get("heads", [])):
        return
    state = pruning_state(model)
    for layer in state.layers:
        emptied = any(
            EmptyBlock.from_dict(m._gradprune_empty).cache_head_dim is not None
            for m in layer.modules()
            if getattr(m, "_gradprune_empty", None) is not None
        )
        if state.adapter.num_heads(layer) == 0 and not emptied:
            state.adapter.keep_heads(layer, torch.zeros(0, dtype=torch.long), state.geometry.head_dim)
