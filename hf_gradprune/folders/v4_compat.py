"""Coming from transformers v4: ``prune_heads(model, {layer: [heads]})`` and v4-era pruned folders.

transformers v4 pruned heads with ``model.prune_heads({layer: [heads]})`` and recorded them in
``config.pruned_heads`` (``{"layer": [original head ids]}`` in ``config.json``); on load, v4 rebuilt
the model from the unchanged config (``num_attention_heads`` stays the original count) and pruned the
same heads again before the weights went in. The kept heads keep their original order (BERT: rows of
q/k/v and columns of the output dense; GPT-2: the same head columns in each of the q|k|v thirds of
``c_attn`` and rows of ``c_proj``), which is exactly the layout ``prune_model`` produces. So a v4
folder is read by turning ``pruned_heads`` into a ``PruningPlan``, rebuilding those shapes, and
loading the weights unchanged.

v5 dropped all of this: such a folder fails to load with a size mismatch, or, with
``ignore_mismatched_sizes=True``, silently re-initialises the attention weights.
"""

from __future__ import annotations

import copy
import operator
import os
import shutil
from collections.abc import Mapping

import torch
import transformers
from torch import nn

from ..architectures import Geometry, get_adapter
from ..modeling_gradprune import CONFIG_KEY, gradprune_class, write_folder
from ..planning.plan import PlanError, PruningPlan
from ..surgery import current_plan, prune_model
from .checkpoint import TOKENIZER_FILES, CheckpointError, resolve_model_class, weight_faults

V4_KEY = "pruned_heads"


class V4CheckpointError(CheckpointError):
    """A transformers-v4 pruned folder that cannot be read: bad ``pruned_heads`` or weights that disagree."""


# ---------------------------------------------------------------------- prune_heads
def _parse_heads(heads_to_prune, g: Geometry, what: str, error: type[ValueError]) -> dict[int, set[int]]:
    """``{layer: set(original head ids)}`` from a v4-style mapping, or ``error`` naming what is wrong."""
    if not isinstance(heads_to_prune, Mapping):
        raise error(f"{what} must be a dict {{layer: [head, ...]}}, got {type(heads_to_prune).__name__}")
    parsed: dict[int, set[int]] = {}
    for key, heads in heads_to_prune.items():
        try:
            layer = int(key) if isinstance(key, str) else operator.index(key)
        except (TypeError, ValueError):
            raise error(f"{what}: layer {key!r} is not an integer") from None
        if isinstance(key, bool) or not 0 <= layer < g.num_layers:
            raise error(
                f"{what} names layer {key!r}, which does not exist: the model has {g.num_layers} layers "
                f"(0..{g.num_layers - 1})"
            )
        if isinstance(heads, (str, bytes)) or not hasattr(heads, "__iter__"):
            raise error(f"{what}: layer {layer} must map to a list of head indices, got {heads!r}")
        for head in heads:
            try:
                index = operator.index(head)
            except TypeError:
                raise error(f"{what}: layer {layer}: head {head!r} is not an integer") from None
            if isinstance(head, bool) or not 0 <= index < g.num_heads:
                raise error(
                    f"{what} names head {head!r} of layer {layer}, which does not exist: each layer has "
                    f"{g.num_heads} heads (0..{g.num_heads - 1}), counted in the original, unpruned model"
                )
            parsed.setdefault(layer, set()).add(index)
    return parsed


def prune_heads(model: nn.Module, heads_to_prune: Mapping[int, list[int]]) -> nn.Module:
    """Remove attention heads, with the contract of transformers v4's ``PreTrainedModel.prune_heads``.

    ``heads_to_prune`` maps a layer index to the heads to remove there, e.g. ``{1: [0, 2], 2: [3]}``.
    Indices are those of the model's *original* heads, whatever was pruned before; naming a head that is
    already gone is a no-op, and repeated calls accumulate. Implemented as a ``PruningPlan`` applied with
    ``prune_model``, so the result is recorded in ``config.gradprune`` and saves/reloads like any pruned
    model (``save_pretrained`` then ``load_pruned`` or ``trust_remote_code=True``). A layer may lose all
    its heads. A layer or head that does not exist raises ``PlanError`` (a ``ValueError``) and leaves the
    model unchanged. Every supported family; under grouped-query attention (the Llama family) the heads that
    remain must leave each key/value head they read with equally many query heads (``repeat_kv``), else
    ``PlanError`` says which layer breaks that, before any cut. Returns the same model object.
    """
    plan = current_plan(model)
    remove = _parse_heads(heads_to_prune, plan.geometry, "heads_to_prune", PlanError)
    heads = [[h for h in kept if h not in remove.get(layer, ())] for layer, kept in enumerate(plan.heads)]
    if heads == plan.heads:
        return model  # every named head is already gone (or nothing was named)
    meta = {"method": "prune_heads", "heads_to_prune": {str(layer): sorted(h) for layer, h in sorted(remove.items())}}
    try:
        new_plan = PruningPlan(plan.geometry, heads, plan.neurons, meta)
    except PlanError as e:  # a structure the model cannot run (grouped-query attention): say which call made it
        raise PlanError(f"prune_heads({heads_to_prune!r}) leaves a model that cannot run: {e}") from None
    return prune_model(model, new_plan)


# ---------------------------------------------------------------------- v4 folders
def is_v4_config(config) -> bool:
    """True for a config written by v4 after ``prune_heads``: non-empty ``pruned_heads``, no plan of ours."""
    return not getattr(config, CONFIG_KEY, None) and bool(getattr(config, V4_KEY, None))


def _v4_plan(folder: str, config) -> tuple[PruningPlan, dict[int, set[int]]]:
    g = get_adapter(config).geometry(config)
    pruned = _parse_heads(getattr(config, V4_KEY), g, f"{folder}/config.json 'pruned_heads'", V4CheckpointError)
    heads = [[h for h in range(g.num_heads) if h not in pruned.get(layer, ())] for layer in range(g.num_layers)]
    neurons = [list(range(g.intermediate_size)) for _ in range(g.num_layers)]
    meta = {
        "method": "transformers-v4 prune_heads",
        "pruned_heads": {str(layer): sorted(h) for layer, h in sorted(pruned.items())},
    }
    return PruningPlan(g, heads, neurons, meta), pruned


def _v4_skeleton(folder: str, config, cls, variant: str | None = None) -> nn.Module:
    """A meta-device model with the shapes that ``pruned_heads`` implies, checked against the weights."""
    plan, pruned = _v4_plan(folder, config)
    clean = copy.deepcopy(config)
    delattr(clean, V4_KEY)  # the plan replaces it; v5 ignores the key, and a stale copy would only mislead
    with torch.device("meta"):
        skeleton = cls(clean)
    prune_model(skeleton, plan)

    missing, mismatched = weight_faults(folder, skeleton, config, variant)
    if mismatched:
        listed = {str(layer): sorted(h) for layer, h in sorted(pruned.items())}
        raise V4CheckpointError(
            f"{folder}: the weights do not have the shapes that config.json's pruned_heads {listed} implies "
            f"({len(mismatched)} tensors), e.g. " + "; ".join(mismatched[:3]) + ". The config and the weights "
            "come from different models; restore the config.json that was saved with these weights."
        )
    if missing:
        raise V4CheckpointError(
            f"{folder}: the weights lack {len(missing)} parameter(s) of the model, e.g. {missing[:3]}, which "
            "would be re-initialised at random. The weight files are incomplete or belong to another model; "
            "restore the files v4 saved together."
        )
    return skeleton


def load_v4_folder(folder: str | os.PathLike, model_class=None, config=None, **kwargs) -> nn.Module:
    """Load a folder saved by transformers v4 after ``model.prune_heads(...)``, with its weights unchanged.

    ``config.json``'s ``pruned_heads`` becomes a ``PruningPlan`` (recorded in ``config.gradprune``; the v4
    key is dropped), the model is built with those shapes, and the weights load into it. Nothing loads if
    ``pruned_heads`` names a layer or head that does not exist or the weights' shapes disagree with it
    (``V4CheckpointError``), and a parameter of the base model that the folder lacks is an error, not a
    silent re-initialisation. ``load_pruned`` calls this for v4 folders; ``model_class`` and ``kwargs``
    are as there.
    """
    folder = os.fspath(folder)
    if config is None:
        config = transformers.AutoConfig.from_pretrained(folder)
    if not is_v4_config(config):
        raise V4CheckpointError(f"{folder} is not a transformers-v4 pruned folder (config.json has no pruned_heads)")
    cls = resolve_model_class(config, model_class)
    skeleton = _v4_skeleton(folder, config, cls, kwargs.get("variant"))
    return gradprune_class(cls).from_pretrained(folder, config=skeleton.config, **kwargs)


def _refuse_nested(src: str, dst: str) -> None:
    """Refuse a destination that is, holds or lies inside the source (symlinks resolved)."""
    real_src, real_dst = os.path.realpath(src), os.path.realpath(dst)
    if real_src == real_dst:
        raise ValueError("give a destination other than the source folder; the source is left untouched")
    common = os.path.commonpath([real_src, real_dst])
    if common in (real_src, real_dst):
        where = "inside the source folder" if common == real_src else "a folder that holds the source folder"
        raise ValueError(
            f"{dst} is {where} {src}; give a destination outside it, so that writing one cannot touch the other"
        )


def convert_v4_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, model_class=None, overwrite: bool = False
) -> str:
    """Write a v4 pruned folder ``src`` as an ordinary hf_gradprune folder ``dst``; returns ``dst``.

    ``dst`` gets ``config.json`` (with the plan and ``auto_map``), ``model.safetensors`` and
    ``modeling_gradprune.py``, so it loads anywhere with ``AutoModelFor...from_pretrained(dst,
    trust_remote_code=True)``, without hf_gradprune, and with ``load_pruned``. Tokenizer files in
    ``src`` are copied. Everything is checked before anything is written, and the files are written
    under a temporary name first (``modeling_gradprune.write_folder``): on any error ``dst`` is left as it was.

    ``dst`` may not be ``src``, lie inside it or contain it. An existing, non-empty ``dst`` is refused
    unless ``overwrite=True``; then the files the conversion writes replace theirs and the weight files
    of a previous model there are removed, but nothing else in ``dst`` is deleted: the folder itself and
    files of the user's stay. A ``dst`` that is a file is always refused.
    """
    src, dst = os.fspath(src), os.path.abspath(os.fspath(dst))
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src} is not a folder; give the folder that v4's save_pretrained wrote")
    _refuse_nested(src, dst)
    if os.path.lexists(dst) and not os.path.isdir(dst):
        raise FileExistsError(f"{dst} exists and is not a folder; choose a folder to write")
    if os.path.isdir(dst) and os.listdir(dst) and not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty; choose a new folder or pass overwrite=True")
    config = transformers.AutoConfig.from_pretrained(src)
    if getattr(config, CONFIG_KEY, None):
        raise V4CheckpointError(f"{src} is already an hf_gradprune folder; load it with load_pruned, no conversion")
    if not is_v4_config(config):
        raise V4CheckpointError(
            f"{src}: config.json has no pruned_heads, so this is not a v4 pruned folder and loads in v5 as it is"
        )
    model = load_v4_folder(src, model_class=model_class, config=config)

    def write(folder: str) -> None:
        model.save_pretrained(folder)
        for name in TOKENIZER_FILES:
            path = os.path.join(src, name)
            if os.path.isfile(path) and not os.path.exists(os.path.join(folder, name)):
                shutil.copy2(path, os.path.join(folder, name))

    write_folder(dst, write)
    return dst
