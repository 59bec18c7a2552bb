"""What a saved model folder holds, read without loading it: the class its config names, its tensors' shapes.

Shared by ``hub`` (folders of ours) and ``v4_compat`` (folders of transformers v4), so that both read weight
files the same way and refuse the same faults: no weights, an unreadable file, a missing tensor, a wrong shape.
"""

from __future__ import annotations

import json
import math
import os

import torch
import transformers
from safetensors import safe_open
from torch import nn
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

from ..modeling_gradprune import BITMASK, CLASS_PREFIX, NEGZERO, PACKED_KEY, FolderFormatError, packed_shapes

# A folder's tokenizer files (whatever of these it has): copied as they are by ``convert_v4_checkpoint`` and
# ``export_onnx``.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)

# The order in which ``from_pretrained`` looks for weights in a folder: what it would load is what we read.
_WEIGHTS_IN_LOAD_ORDER = (
    (SAFE_WEIGHTS_NAME, False),
    (SAFE_WEIGHTS_INDEX_NAME, True),
    (WEIGHTS_NAME, False),
    (WEIGHTS_INDEX_NAME, True),
)


class CheckpointError(ValueError):
    """A folder's weights are absent, unreadable, or do not fit the model its config describes."""


def resolve_model_class(config, model_class=None) -> type:
    """``model_class`` if given (refused unless a model class of the config's family), else the transformers
    class named by ``config.architectures``."""
    if model_class is not None:
        if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
            raise TypeError(f"model_class must be a transformers model class (e.g. BertModel), got {model_class!r}")
        family = getattr(model_class.config_class, "model_type", None)
        if not isinstance(config, model_class.config_class or transformers.PretrainedConfig):
            raise CheckpointError(
                f"the folder holds a {config.model_type!r} model (config.json model_type), but model_class "
                f"{model_class.__name__} is for {family!r} models: pass a {config.model_type} class (e.g. "
                f"{(getattr(config, 'architectures', None) or ['its AutoModel class'])[0]}), or leave model_class out"
            )
        return model_class
    names = getattr(config, "architectures", None) or []
    if not names:
        raise ValueError("config.json names no architecture; pass model_class=... (e.g. BertForSequenceClassification)")
    name = names[0].removeprefix(CLASS_PREFIX)
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"transformers has no class {name!r} (from config.json 'architectures'); pass model_class=...")
    return cls


def with_variant(name: str, variant: str | None) -> str:
    """``model.safetensors`` -> ``model.fp16.safetensors`` (the naming ``save_pretrained(variant=...)`` uses)."""
    if not variant:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def weight_files(folder: str | os.PathLike, variant: str | None = None) -> list[str]:
    """Paths of the weight files ``from_pretrained(variant=variant)`` would read in ``folder`` (one, or an
    index's shards)."""
    folder = os.fspath(folder)
    for name, is_index in _WEIGHTS_IN_LOAD_ORDER:
        name = with_variant(name, variant)
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if not is_index:
            return [path]
        try:
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{path} is not a valid weight index ({err!r}); re-save the model") from None
        absent = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if absent:
            raise CheckpointError(
                f"{path} lists {len(absent)} shard(s) that the folder lacks, e.g. {absent[0]}; "
                "the folder is incomplete (an interrupted copy or download?)"
            )
        return [os.path.join(folder, s) for s in shards]
    names = ", ".join(with_variant(n, variant) for n in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME))
    raise CheckpointError(f"{folder} has no weights: no {names} or sharded index; nothing to load")


def _file_shapes(path: str) -> dict[str, tuple[int, ...]]:
    if path.endswith(".safetensors"):
        with safe_open(path, framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}
            metadata = f.metadata() or {}
        return _dense_shapes(path, shapes, dtypes, metadata) if PACKED_KEY in metadata else shapes
    try:
        state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    except RuntimeError:  # the pre-zip serialization format cannot be memory-mapped
        state = torch.load(path, map_location="meta", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"holds a {type(state).__name__}, not a state dict")
    return {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}


def _dense_shapes(path: str, shapes: dict, dtypes: dict, metadata: dict) -> dict[str, tuple[int, ...]]:
    """The shapes a bitmask file restores: each packed parameter at its recorded shape, its values and bitmask
    checked against it from the header (counts; the bits themselves are checked when the weights load)."""
    for name, shape in packed_shapes(metadata, path).items():
        values, bits = shapes.pop(name, None), shapes.pop(f"{name}.{BITMASK}", None)
        count = math.prod(shape)
        if values is None or bits is None:
            raise CheckpointError(f"{path}: the values or the bitmask of the packed {name} are missing; re-save it")
        if len(values) != 1 or values[0] > count or bits != ((count + 7) // 8,) or dtypes[f"{name}.{BITMASK}"] != "U8":
            raise CheckpointError(
                f"{path}: {name} packs {values} values and a {bits} {dtypes[f'{name}.{BITMASK}']} bitmask, which "
                f"do not describe a tensor of shape {tuple(shape)}; the file is damaged: re-save the model"
            )
        negzero = shapes.pop(f"{name}.{NEGZERO}", None)
        if negzero is not None and negzero != ((count - values[0] + 7) // 8,):
            raise CheckpointError(f"{path}: the sign bits of {name}'s zeros do not fit its shape; re-save the model")
        shapes[name] = tuple(shape)
    return shapes


def checkpoint_shapes(folder: str | os.PathLike, variant: str | None = None) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` over the folder's weights (safetensors or ``pytorch_model.bin``, sharded or not).

    Reads headers only (``.bin`` files are memory-mapped on the meta device). Raises ``CheckpointError``
    for a folder without weights, an index naming absent shards, or a file that cannot be read.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for path in weight_files(folder, variant):
        try:
            shapes.update(_file_shapes(path))
        except (PermissionError, FileNotFoundError, CheckpointError, FolderFormatError):
            raise  # clear as they are (the first two not a fault of the file's content)
        except Exception as err:  # safetensors, zip, mmap and pickle readers each raise their own types
            raise CheckpointError(
                f"{path} cannot be read ({type(err).__name__}: {err}); the file is truncated or corrupt: "
                "copy or download it again, or re-save the model"
            ) from err
    return shapes


def compare_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> tuple[list[str], list[str]]:
    """``(missing, mismatched)``: the model's tensors that ``shapes`` lacks, and those it has at another shape.

    Keys may carry the base-model prefix or not (a classifier's folder loaded as its encoder, or the
    reverse), as ``from_pretrained`` allows. Only tensors of the base model count as missing: a task head
    absent from the file is a new head, which transformers initialises on purpose (and says so).
    """
    prefix = getattr(model, "base_model_prefix", "")
    whole_base = getattr(model, "base_model", model) is model
    missing, mismatched = [], []
    for key, tensor in model.state_dict().items():
        found = shapes.get(key, shapes.get(f"{prefix}.{key}"))
        if found is None and key.startswith(prefix + "."):
            found = shapes.get(key[len(prefix) + 1 :])
        if found is None:
            if whole_base or key.startswith(prefix + "."):
                missing.append(key)
        elif found != tuple(tensor.shape):
            mismatched.append(f"{key}: file {found}, expected {tuple(tensor.shape)}")
    return missing, mismatched


def weight_faults(
    folder: str | os.PathLike, model: nn.Module, config, variant: str | None = None
) -> tuple[list[str], list[str]]:
    """``(missing, mismatched)`` of ``model`` (a meta-device skeleton) against the weights in ``folder``.

    Only a tensor of the class that wrote the folder (``config.architectures``) can be missing: read as
    another class (a masked-LM folder as a classifier or an encoder), the parts that class adds, such as
    a pooler, are new, and transformers initialises them as it always does.
    """
    shapes = checkpoint_shapes(folder, variant)
    missing, mismatched = compare_shapes(model, shapes)
    if missing and getattr(config, "architectures", None):
        try:
            saved_cls = resolve_model_class(config)
        except ValueError:  # a class this transformers lacks: the requested one is all there is to go by
            return missing, mismatched
        if saved_cls.__name__ != type(model).__name__.removeprefix(CLASS_PREFIX):
            with torch.device("meta"):
                missing = compare_shapes(saved_cls(config), shapes)[0]
    return missing, mismatched
