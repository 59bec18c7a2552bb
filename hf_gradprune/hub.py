"""Saving and loading pruned Hub folders without remote code.

Imports only the shipped modeling file (never scoring, plans or surgery), so loading stays light.
"""

from __future__ import annotations

import json
import os

import torch
import transformers
from torch import nn

from .modeling_gradprune import CLASS_PREFIX, CONFIG_KEY, gradprune_class


class FolderMismatchError(ValueError):
    """The folder's weights do not have the shapes its config's plan describes."""


def save_pruned(model: nn.Module, save_directory: str | os.PathLike, tokenizer=None, **kwargs) -> None:
    """``model.save_pretrained`` plus the tokenizer, when given, in the same folder."""
    model.save_pretrained(save_directory, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(save_directory)


def _model_class(config, model_class):
    if model_class is not None:
        return model_class
    names = getattr(config, "architectures", None) or []
    if not names:
        raise ValueError("config.json names no architecture; pass model_class=... (e.g. BertForSequenceClassification)")
    name = names[0].removeprefix(CLASS_PREFIX)
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"transformers has no class {name!r} (from config.json 'architectures'); pass model_class=...")
    return cls


def _checkpoint_shapes(folder: str) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        return {}
    shapes = {}
    for name in files:
        with safe_open(os.path.join(folder, name), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def check_folder(folder: str | os.PathLike, model_class=None) -> None:
    """Raise ``FolderMismatchError`` if the folder's weights disagree with the shapes its plan rebuilds."""
    folder = os.fspath(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = gradprune_class(_model_class(config, model_class))
    with torch.device("meta"):
        skeleton = cls(config)
    shapes = _checkpoint_shapes(folder)
    if not shapes:
        return
    prefix = skeleton.base_model_prefix
    bad = []
    for key, param in skeleton.state_dict().items():
        found = shapes.get(key, shapes.get(f"{prefix}.{key}"))
        if found is None and key.startswith(prefix + "."):
            found = shapes.get(key[len(prefix) + 1 :])
        if found is not None and found != tuple(param.shape):
            bad.append(f"{key}: file {found}, plan {tuple(param.shape)}")
    if bad:
        raise FolderMismatchError(
            f"{folder}: the weights do not match the pruning plan in config.json ({len(bad)} tensors), e.g. "
            + "; ".join(bad[:3])
            + ". The folder was edited or mixed with another model's files; re-save it from the pruned model."
        )


def load_pruned(folder: str | os.PathLike, model_class=None, **kwargs) -> nn.Module:
    """Load a pruned folder with hf_gradprune's classes, no ``trust_remote_code`` needed.

    ``model_class`` picks the head (default: the folder's ``architectures``), e.g. ``BertModel`` to get
    the encoder of a classifier. ``kwargs`` go to ``from_pretrained`` (``dtype``, ``device_map``...).
    The folder is checked against its plan first; nothing is loaded if they disagree. A folder saved by
    transformers v4 after ``prune_heads`` (``pruned_heads`` in config.json) loads too (``v4_compat``).
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder; load_pruned takes a directory saved by save_pretrained")
    config = transformers.AutoConfig.from_pretrained(folder)
    if not getattr(config, CONFIG_KEY, None) and getattr(config, "pruned_heads", None):
        from .v4_compat import load_v4_folder  # a transformers-v4 pruned folder (needs surgery: imported here)

        return load_v4_folder(folder, model_class=model_class, config=config, **kwargs)
    cls = _model_class(config, model_class)
    if getattr(config, CONFIG_KEY, None):
        check_folder(folder, cls)
        cls = gradprune_class(cls)
    return cls.from_pretrained(folder, config=config, **kwargs)
