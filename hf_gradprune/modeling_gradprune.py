"""Rebuild the shapes of a model pruned by hf_gradprune, then load its weights.

This file is copied verbatim into every saved pruned folder and referenced from ``config.json``'s
``auto_map``, so ``AutoModelFor<Task>.from_pretrained(folder, trust_remote_code=True)`` works on a
machine without hf_gradprune. It must therefore import only torch, transformers and the standard library.
It also restores the dense weights of a folder stored as values + bitmask (``save_pruned(sparse_format=
"bitmask")``), reading the safetensors files itself.

One module of about 670 lines because it is the one file a folder ships: whatever a folder needs to load without
hf_gradprune (the format check, the structure, empty blocks, bitmask weights, the atomic writer) must be in it.

It knows nothing of model families: the pruned shapes are stored in ``config.gradprune["structure"]`` as
a diff against the shapes that the config alone would build (parameter shapes and integer module
attributes, keyed by module path relative to the base model). Surgery computes that diff with
``structure_of``; loading re-applies it with ``apply_structure`` inside ``__init__``, before the weights load.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import struct
import types
import uuid
from dataclasses import asdict, dataclass

import torch
import transformers
from torch import nn

CONFIG_KEY = "gradprune"
# What ``config.gradprune`` means. A reader reads every format up to ``READ_FORMAT_VERSION`` and refuses a newer
# one, naming ``requires``: the first hf_gradprune release that reads it. A folder records the lowest format that
# describes it; a new number only where the previous release would misread a folder (keys older readers can
# ignore keep the version). Format 1: every folder with dense weights (exact zeros included).
FORMAT_VERSION = 1
FORMAT_REQUIRES = "0.1.0"
# Format 2: weights stored as values + bitmask. The previous release reads no such weights: it refuses the folder.
BITMASK_FORMAT_VERSION = 2
BITMASK_FORMAT_REQUIRES = "0.2.0"
READ_FORMAT_VERSION = 2
CLASS_PREFIX = "GradPrune"
SPARSITY_KEY = "weight_sparsity"  # config.gradprune's record of zeroed weights (plain data, see sparsity/record.py)
DENSE, BITMASK = "dense", "bitmask"  # how a folder stores its weights: as they are, or values + bitmask
STORAGE_FORMATS = (DENSE, BITMASK)
# A bitmask folder's weights are model.bitmask.safetensors (or its shards and model.safetensors.index.bitmask.json):
# a name plain from_pretrained never reads, so nothing loads it without this file. Each packed parameter P is
# the tensor P (its nonzero values, 1-D: any other reader fails on its shape) and P.bitmask (uint8, bit i of byte
# j set for element 8j + i, row-major, of the parameter); the file's metadata PACKED_KEY maps P to its shape. If
# some zeros are -0.0 (a negative weight times a 0 mask), P.negzero has a bit per zero, in order: set for -0.0.
PACKED_KEY = "gradprune_packed"
NEGZERO = "negzero"


class FolderFormatError(ValueError):
    """A pruning record of a format this copy of hf_gradprune cannot read."""


def check_format(record: dict) -> None:
    """Refuse a ``config.gradprune`` record of a newer (or no valid) format, before anything reads it."""
    if not isinstance(record, dict):
        raise FolderFormatError(
            f"config.json's {CONFIG_KEY} is a {type(record).__name__}, not a pruning record: the config was edited "
            "or damaged; restore it or re-save the folder from the pruned model"
        )
    version = record.get("format_version", 1)  # folders of the first release may lack it
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FolderFormatError(
            f"config.json's {CONFIG_KEY}.format_version is {version!r}, not a format number: the config was "
            "edited or damaged; restore it or re-save the folder from the pruned model"
        )
    if version > READ_FORMAT_VERSION:
        needs = f"hf_gradprune >= {record['requires']}" if record.get("requires") else "a newer hf_gradprune"
        try:  # the package's version, when installed (this file may run as remote code without it)
            from importlib.metadata import version as installed

            reader = f"hf_gradprune {installed('hf-gradprune')}"
        except Exception:
            reader = "this copy of modeling_gradprune.py"
        raise FolderFormatError(
            f"this folder needs {needs} (format {version}); {reader} reads "
            f"format {READ_FORMAT_VERSION} at most: pip install -U hf-gradprune"
        )
    storage_format(record)


def storage_format(record: dict) -> str:
    """How the folder of this ``config.gradprune`` record stores its weights: ``"dense"`` or ``"bitmask"``."""
    info = record.get(SPARSITY_KEY) if isinstance(record, dict) else None
    if info is None:
        return DENSE
    storage = info.get("storage", DENSE) if isinstance(info, dict) else None
    if storage not in STORAGE_FORMATS:
        raise FolderFormatError(
            f"config.json's {CONFIG_KEY}.{SPARSITY_KEY} gives the weights' storage as "
            f"{storage if isinstance(info, dict) else info!r}, not one of {', '.join(STORAGE_FORMATS)}: the config "
            "was edited or damaged; restore it or re-save the folder from the model"
        )
    if storage == BITMASK and record.get("format_version", 1) < BITMASK_FORMAT_VERSION:
        raise FolderFormatError(
            f"config.json's {CONFIG_KEY} says format {record.get('format_version', 1)} but bitmask weights (format "
            f"{BITMASK_FORMAT_VERSION}): the config was edited or damaged; restore it or re-save the folder"
        )
    return storage


# Which auto class loads which head class (names in transformers.models.auto.modeling_auto).
_AUTO_MAPPINGS = {
    "AutoModel": "MODEL_MAPPING_NAMES",
    "AutoModelForPreTraining": "MODEL_FOR_PRETRAINING_MAPPING_NAMES",
    "AutoModelForMaskedLM": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForTokenClassification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForQuestionAnswering": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "AutoModelForMultipleChoice": "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES",
    "AutoModelForNextSentencePrediction": "MODEL_FOR_NEXT_SENTENCE_PREDICTION_MAPPING_NAMES",
}


def auto_classes(model_type: str) -> dict[str, str]:
    """``{auto class name: transformers head class name}`` for every auto class that knows ``model_type``."""
    from transformers.models.auto import modeling_auto

    found = {}
    for auto_name, mapping_name in _AUTO_MAPPINGS.items():
        cls_name = getattr(modeling_auto, mapping_name, {}).get(model_type)
        if isinstance(cls_name, str):
            found[auto_name] = cls_name
    return found


def auto_map_for(model_type: str) -> dict[str, str]:
    """The ``auto_map`` a pruned folder carries: every head class of the family, through this file."""
    return {auto: f"modeling_gradprune.{CLASS_PREFIX}{name}" for auto, name in auto_classes(model_type).items()}


# --------------------------------------------------------------------------- empty blocks
@dataclass(frozen=True)
class EmptyBlock:
    """What a block that lost all its units still computes; its family's adapter fills this in.

    At width 0 the block's output no longer depends on its input: it is the parameter named ``output``
    (dotted, relative to the block: its output projection's bias) broadcast over the tokens, or zeros
    shaped like the input when ``output`` is None (a residual block's output is as wide as its input),
    then the module named ``dropout``, if any. ``zero_width`` (with ``output`` None) makes it a tensor of no
    features instead: the context of an attention whose output projection sits outside it (BERT), which that
    projection turns into its bias. No attention kernel runs: CUDA's fused SDPA returns None for zero heads.
    ``extra_outputs`` Nones follow the tensor in a tuple (0: the tensor alone). ``cache_head_dim`` (the head
    size it had) marks an attention block: it gives a KV cache a one-value placeholder per token, so the
    cache's length stays right during generation.
    """

    output: str | None
    dropout: str | None = None
    extra_outputs: int = 0
    cache_head_dim: int | None = None
    zero_width: bool = False

    @classmethod
    def from_dict(cls, spec: dict) -> EmptyBlock:
        if "proj" in spec:  # the first spelling (folders saved before this class): always a biased projection
            return cls(f"{spec['proj']}.bias", spec.get("dropout"), 1 if spec.get("tuple") else 0, spec.get("head_dim"))
        return cls(**spec)

    def to_dict(self) -> dict:
        out = asdict(self)
        if not self.zero_width:  # folders without it read as before, by any copy of this file
            del out["zero_width"]
        return out


def _empty_block_forward(self, hidden_states, *args, **kwargs):
    """Forward of a block that lost all its units (see ``EmptyBlock``).

    Used where the stock forward cannot run at width 0 (e.g. GPT-2's ``Conv1D`` cannot reshape an empty
    input, and its attention splits the fused projection by ``split_size``).
    """
    spec = EmptyBlock.from_dict(self._gradprune_empty)
    if spec.cache_head_dim is not None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and getattr(self, "layer_idx", None) is not None and hasattr(cache, "update"):
            # One value per token, not zero heads: ``DynamicCache`` reads the sequence length from layer 0's
            # keys and counts an empty tensor as no tokens, which would restart positions during generation.
            b, t = hidden_states.shape[:2]
            placeholder = hidden_states.new_zeros(b, 1, t, 1)
            target = getattr(cache, "self_attention_cache", cache)
            target.update(placeholder, placeholder.clone(), self.layer_idx)
    if spec.zero_width:
        out = hidden_states[..., :0]  # a view: no allocation, and its shape follows the input in traced graphs
    elif spec.output is None:
        out = torch.zeros_like(hidden_states)
    else:
        value = self.get_parameter(spec.output)
        out = value.to(hidden_states.dtype).expand(*hidden_states.shape[:-1], value.shape[-1])
    if spec.dropout:
        out = self.get_submodule(spec.dropout)(out)
    return (out, *[None] * spec.extra_outputs) if spec.extra_outputs else out


def make_block_empty(module: nn.Module, spec: EmptyBlock | dict) -> None:
    """Give ``module`` the width-0 forward that ``spec`` (an ``EmptyBlock`` or its saved dict) describes."""
    spec = spec if isinstance(spec, EmptyBlock) else EmptyBlock.from_dict(spec)
    # Resolve the names now, so a wrong spec fails at surgery or load time rather than at the first forward.
    if spec.output is not None:
        module.get_parameter(spec.output)
    if spec.dropout:
        module.get_submodule(spec.dropout)
    module._gradprune_empty = spec.to_dict()
    module.forward = types.MethodType(_empty_block_forward, module)
    freeze_empty_block(module)


def freeze_empty_block(module: nn.Module) -> None:
    """Freeze the parameters an empty block no longer reads (all but ``output``): no gradient reaches them, and
    DDP without ``find_unused_parameters`` fails on a trainable parameter that gets none, even an empty one
    (Qwen3's q/k norms are not empty). Loading replaces parameters, so loaders call this again."""
    output = EmptyBlock.from_dict(module._gradprune_empty).output
    for name, p in module.named_parameters():
        if name != output:
            p.requires_grad_(False)


# --------------------------------------------------------------------------- structure diff
def transformers_class(cls: type) -> type:
    """The transformers class under a pruned-model class (by name, so copies of this file agree)."""
    for klass in cls.__mro__:
        if not klass.__name__.startswith((CLASS_PREFIX, "_GradPrune")) and "_gradprune_stock" not in vars(klass):
            return klass
    return cls


def structure_of(model: nn.Module) -> dict:
    """Diff of ``model``'s base model against a fresh one built (on the meta device) from its config.

    Returns ``{module path: {"params": {name: shape}, "attrs": {name: int}, "empty": spec}}`` for every
    module whose parameter shapes or integer attributes differ, or whose attention is empty.
    """
    base = model.base_model
    base_cls = transformers_class(type(base))
    with torch.device("meta"):
        reference = base_cls(copy.deepcopy(base.config))
    ref_modules = dict(reference.named_modules())
    structure: dict[str, dict] = {}
    for path, module in base.named_modules():
        ref = ref_modules.get(path)
        if ref is None:
            raise ValueError(f"module {path!r} is not in a freshly built {base_cls.__name__}; cannot describe it")
        entry: dict = {}
        params = {
            name: list(p.shape)
            for name, p in module.named_parameters(recurse=False)
            if tuple(p.shape) != tuple(getattr(ref, name).shape)
        }
        attrs = {
            k: v
            for k, v in vars(module).items()
            if type(v) is int and type(vars(ref).get(k)) is int and vars(ref)[k] != v
        }
        if params:
            entry["params"] = params
        if attrs:
            entry["attrs"] = attrs
        if getattr(module, "_gradprune_empty", None) is not None:
            entry["empty"] = dict(module._gradprune_empty)
        if getattr(module, "_gradprune_frozen", False):
            entry["frozen"] = True
        if entry:
            structure[path] = entry
    return structure


@torch.no_grad()
def apply_structure(model: nn.Module, structure: dict) -> None:
    """Reshape ``model``'s base model in place to ``structure`` (values kept where shapes shrink)."""
    base = model.base_model
    for path, entry in structure.items():
        module = base.get_submodule(path)
        for name, shape in entry.get("params", {}).items():
            old = getattr(module, name)
            if len(shape) != old.dim() or any(s > o for s, o in zip(shape, old.shape)):
                raise ValueError(
                    f"structure asks {path}.{name} for shape {tuple(shape)}, which does not fit inside "
                    f"{tuple(old.shape)}; the folder's config.json does not describe this model"
                )
            narrowed = old[tuple(slice(0, s) for s in shape)].clone()
            setattr(module, name, nn.Parameter(narrowed, requires_grad=old.requires_grad))
        for name, value in entry.get("attrs", {}).items():
            setattr(module, name, value)
        if "empty" in entry:
            make_block_empty(module, entry["empty"])
        if entry.get("frozen"):  # feeds only emptied blocks: no gradient can reach it
            module._gradprune_frozen = True
            for p in module.parameters():
                p.requires_grad_(False)


# --------------------------------------------------------------------------- saving
# A weight file or index of a save, with its variant: model.safetensors, model-00001-of-00002.safetensors,
# pytorch_model.bin, model.fp16.safetensors, model.safetensors.index.json, model.safetensors.index.fp16.json...
# Each stem with its own extension only: transformers writes no ``model.bin`` or ``pytorch_model.safetensors``,
# so a file of that name is someone else's (e.g. another runtime's export) and must never be removed.
_WEIGHT_FILE = re.compile(
    r"model(?:\.(?P<st_variant>\w+))?(?:-\d{5}-of-\d{5})?\.safetensors"
    r"|pytorch_model(?:\.(?P<bin_variant>\w+))?(?:-\d{5}-of-\d{5})?\.bin"
    r"|(?:model\.safetensors|pytorch_model\.bin)\.index(?:\.(?P<index_variant>\w+))?\.json"
)


def _weights_variant(name: str) -> str | None:
    """The variant of a weight file or index (``""`` for none); None for any other file."""
    match = _WEIGHT_FILE.fullmatch(name)
    if match is None:
        return None
    return match["st_variant"] or match["bin_variant"] or match["index_variant"] or ""


def _move_into(new: str, folder: str, replace_weights: bool) -> None:
    names = os.listdir(new)
    for name in names:  # a file where a folder is (or the reverse) would fail halfway: refuse it first
        target = os.path.join(folder, name)
        if os.path.lexists(target) and os.path.isdir(target) != os.path.isdir(os.path.join(new, name)):
            kind = "folder" if os.path.isdir(target) else "file"
            raise IsADirectoryError(f"cannot save {name} into {folder}: a {kind} of that name is in the way")
    if replace_weights:
        variants = {_weights_variant(name) for name in names} - {None}
        if variants & {"", BITMASK}:  # dense and bitmask weights of one save never stay side by side
            variants |= {"", BITMASK}
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if name not in names and _weights_variant(name) in variants and os.path.isfile(path):
                os.remove(path)
    for name in sorted(names, key=lambda n: n == "config.json"):  # the config, naming the model, goes last
        source, target = os.path.join(new, name), os.path.join(folder, name)
        if os.path.isdir(source) and os.path.isdir(target):
            _move_into(source, target, replace_weights=False)
        else:
            os.replace(source, target)


def write_folder(folder: str | os.PathLike, write) -> None:
    """Run ``write(tmp)`` on a new, empty folder, then make what it wrote the content of ``folder``.

    No file already in ``folder`` changes until ``write`` returns, so a save that fails (a full disk,
    an exception) leaves the previous one whole; the temporary folder is removed either way. A new
    ``folder`` appears complete, by one rename of a hidden sibling. An existing one may be a mount point
    or hold files that are not the model's (a Trainer's optimizer state, a tokenizer, the user's own), so
    it is not swapped: the files are written in a hidden folder inside it (same filesystem), then the
    previous save's weight files and indexes (of the variants now written) are removed, so that no stale
    shard, index or ``pytorch_model.bin`` remains beside the new weights, and the new files move in by
    renames, ``config.json`` last. Every other file stays.
    """
    folder = os.path.abspath(os.fspath(folder))
    if os.path.isdir(folder):
        parent = folder
    elif os.path.lexists(folder):
        raise NotADirectoryError(f"{folder} exists and is not a folder; give a folder to save into")
    else:
        parent = os.path.dirname(folder)
        os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(folder)}.saving-{uuid.uuid4().hex[:12]}")
    os.mkdir(tmp)  # not tempfile.mkdtemp: its mode 0o700 would become the new folder's
    try:
        write(tmp)
        if parent == folder:
            _move_into(tmp, folder, replace_weights=True)
        else:
            os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def push_kwargs(folder: str | os.PathLike, kwargs: dict) -> dict:
    """``save_pretrained`` kwargs for a save through a temporary folder: ``push_to_hub`` keeps the real name."""
    if kwargs.get("push_to_hub") and not kwargs.get("repo_id"):
        return {**kwargs, "repo_id": os.path.basename(os.path.normpath(os.fspath(folder)))}
    return kwargs


# --------------------------------------------------------------------------- bitmask weights
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
# What from_pretrained takes to find a folder's files (the rest goes to the model).
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, metadata)`` of a safetensors file, read with the standard library (the format is a JSON header
    of dtypes, shapes and byte offsets; this file may import nothing but torch and transformers)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        (size,) = struct.unpack_from("<Q", data)
        header = json.loads(data[8 : 8 + size])
        metadata = header.pop("__metadata__", None) or {}
        tensors = {}
        for name, spec in header.items():
            dtype, shape, (start, end) = (
                _ST_DTYPES[spec["dtype"]],
                [int(n) for n in spec["shape"]],
                spec["data_offsets"],
            )
            count = math.prod(shape)
            if end - start != count * dtype.itemsize or 8 + size + end > len(data) or min(shape, default=0) < 0:
                raise ValueError(f"{name}: {end - start} bytes for shape {shape} of {spec['dtype']}")
            raw = bytearray(data[8 + size + start : 8 + size + end])  # a copy: aligned and writable
            tensors[name] = (
                torch.frombuffer(raw, dtype=dtype).reshape(shape) if count else torch.empty(shape, dtype=dtype)
            )
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as err:
        raise FolderFormatError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); it is truncated or corrupt: "
            "copy or download it again, or re-save the model"
        ) from None
    return tensors, metadata


def packed_shapes(metadata: dict, where: str = "the weights") -> dict[str, list[int]]:
    """``{parameter name: shape}`` of the parameters a bitmask file packs (its metadata ``PACKED_KEY``), checked."""
    try:
        packed = json.loads(metadata.get(PACKED_KEY, "{}"))
        if not isinstance(packed, dict) or not all(
            isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape) for shape in packed.values()
        ):
            raise ValueError("not a mapping of names to shapes")
    except (ValueError, TypeError, AttributeError) as err:
        raise FolderFormatError(f"{where}: the list of packed weights is damaged ({err}); re-save the model") from None
    return packed


_BIT_VALUES = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)
_BITS_OF = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # a float's bits, by its width


def _unpack_bits(bits: torch.Tensor, count: int, what: str) -> torch.Tensor:
    """``count`` bools from packed bytes (bit i of byte j is element 8j + i); the padding bits must be clear."""
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != (count + 7) // 8:
        raise ValueError(f"a {what} of {tuple(bits.shape)} {bits.dtype} does not cover {count} elements")
    flags = (bits.unsqueeze(1) & _BIT_VALUES).bool().reshape(-1)
    if flags[count:].any():
        raise ValueError(f"the {what} sets bits past its {count} elements")
    return flags[:count]


def unpack_bitmask(values: torch.Tensor, bits: torch.Tensor, shape, negzero: torch.Tensor | None = None):
    """The dense tensor of ``shape`` whose nonzero elements are ``values``, at the set bits of ``bits``; every other
    element is 0, or -0.0 where ``negzero`` (one bit per zero, in order) is set: the weights come back bit for bit.
    Raises ``ValueError`` if these do not agree."""
    count = math.prod(shape)
    keep = _unpack_bits(bits, count, "bitmask")
    kept = int(keep.sum())
    if values.dim() != 1 or kept != values.numel() or not values.is_floating_point():
        raise ValueError(f"the bitmask sets {kept} bits for {values.numel()} stored values")
    as_bits = _BITS_OF[values.element_size()]  # copied as bit patterns: exact whatever the values (NaN included)
    dense = torch.zeros(count, dtype=as_bits).masked_scatter_(keep, values.view(as_bits))
    if negzero is not None:
        signs = _unpack_bits(negzero, count - kept, "sign bitmask of the zeros")
        negative = torch.zeros(count, dtype=torch.bool).masked_scatter_(~keep, signs)
        dense.masked_fill_(negative, torch.tensor(-0.0, dtype=values.dtype).view(as_bits).item())
    return dense.view(values.dtype).reshape(shape)


def _bitmask_files(where: str, hub: dict) -> list[str]:
    """The bitmask weight files of a local folder or Hub repository (one file, or an index's shards)."""

    def find(name: str) -> str | None:
        if os.path.isdir(where):
            path = os.path.join(where, hub.get("subfolder") or "", name)
            return path if os.path.isfile(path) else None
        from transformers.utils import cached_file

        return cached_file(where, name, _raise_exceptions_for_missing_entries=False, **hub)

    single, index = f"model.{BITMASK}.safetensors", f"model.safetensors.index.{BITMASK}.json"
    path = find(single)
    if path:
        return [path]
    path = find(index)
    if path is None:
        raise FolderFormatError(
            f"{where} has no {single} (or {index}), though its config.json records weights stored as values + "
            "bitmask: the folder is incomplete; copy it again or re-save it from the model"
        )
    with open(path) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    found = [find(shard) for shard in shards]
    if None in found:
        raise FolderFormatError(f"{path} lists shards that {where} lacks, e.g. {shards[found.index(None)]}")
    return found


def load_bitmask_weights(where: str, hub: dict | None = None) -> dict[str, torch.Tensor]:
    """The dense state dict of a bitmask folder (local, or a Hub repository through ``hub`` kwargs), bit-exact."""
    state = {}
    for path in _bitmask_files(os.fspath(where), hub or {}):
        tensors, metadata = read_safetensors(path)
        for name, shape in packed_shapes(metadata, path).items():
            values, bits = tensors.pop(name, None), tensors.pop(f"{name}.{BITMASK}", None)
            try:
                if values is None or bits is None:
                    raise ValueError("its values or bitmask are missing")
                tensors[name] = unpack_bitmask(values, bits, shape, tensors.pop(f"{name}.{NEGZERO}", None))
            except ValueError as err:
                raise FolderFormatError(f"{path}: {name} cannot be restored ({err}); re-save the model") from None
        state.update(tensors)
    return state


def _stored_dense(model: nn.Module) -> None:
    """A model read from a bitmask folder holds dense weights: its record says so (a plain save writes them dense,
    in format 1), and one whose config alone describes it is stock again (no ``auto_map``, no remote code)."""
    record = dict(getattr(model.config, CONFIG_KEY))
    record[SPARSITY_KEY] = {**record[SPARSITY_KEY], "storage": DENSE}
    record["format_version"], record["requires"] = FORMAT_VERSION, FORMAT_REQUIRES
    setattr(model.config, CONFIG_KEY, record)
    if not record.get("structure"):
        model.__class__ = stock_class(type(model))
        if getattr(model.config, "auto_map", None) == auto_map_for(model.config.model_type):
            del model.config.auto_map


# --------------------------------------------------------------------------- pruned classes
def _writer_base_keys(config) -> set[str] | None:
    """Base-model tensor names of the class that wrote the folder (``config.architectures``), if known."""
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0].removeprefix(CLASS_PREFIX), None) if names else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        return None
    with torch.device("meta"):  # names only: no memory, and the pruned shapes do not matter here
        writer = cls(copy.deepcopy(config))
    prefix = writer.base_model_prefix
    return {k.removeprefix(prefix + ".") for k in writer.state_dict()}


class _GradPruneAtomicSave:
    """Mixed in front of a transformers head class: ``save_pretrained`` becomes atomic."""

    def save_pretrained(self, save_directory, is_main_process: bool = True, *args, **kwargs):
        """``PreTrainedModel.save_pretrained``, made atomic by ``write_folder`` on the process that writes.

        Other ranks, distributed checkpoints and a path that is a file go to transformers unchanged.
        """
        save = super().save_pretrained
        should_save = getattr(self, "should_save_on_this_rank", lambda main: main)(is_main_process)
        if not should_save or kwargs.get("distributed_checkpoint") or os.path.isfile(save_directory):
            return save(save_directory, is_main_process, *args, **kwargs)
        kwargs = push_kwargs(save_directory, kwargs)
        write_folder(save_directory, lambda folder: save(folder, is_main_process, *args, **kwargs))


class _GradPruneMixin(_GradPruneAtomicSave):
    """Applies the recorded structure at construction (and saves atomically)."""

    def __init__(self, config, *args, **kwargs):
        record = getattr(config, CONFIG_KEY, None)
        if record:
            check_format(record)
        super().__init__(config, *args, **kwargs)
        if record:
            apply_structure(self, record.get("structure", {}))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        want_info = kwargs.pop("output_loading_info", False)
        where, config = pretrained_model_name_or_path, kwargs.get("config")
        hub = {k: kwargs[k] for k in _HUB_KWARGS if kwargs.get(k) is not None}
        if where is not None and not isinstance(config, transformers.PretrainedConfig):
            config = transformers.AutoConfig.from_pretrained(config or where, **hub)  # only to read the record
        record = getattr(config, CONFIG_KEY, None)
        if record and storage_format(record) == BITMASK and where is not None:
            if kwargs.get("variant"):
                raise ValueError("a folder stored as values + bitmask has no variants: leave variant out")
            # Nothing else reads these files: the dense weights are restored here and handed over as a state dict.
            state = load_bitmask_weights(where, hub)
            rest = {k: v for k, v in kwargs.items() if k not in _HUB_KWARGS} | {"config": config}
            model, info = super().from_pretrained(None, *args, state_dict=state, output_loading_info=True, **rest)
            model.name_or_path = os.fspath(where)
            if model.can_generate():  # from_pretrained reads it from the folder, which it was not given
                try:
                    model.generation_config = transformers.GenerationConfig.from_pretrained(where, **hub)
                except OSError:
                    pass
        else:
            model, info = super().from_pretrained(where, *args, output_loading_info=True, **kwargs)
        if getattr(model.config, CONFIG_KEY, None):
            # transformers only warns about missing weights and initialises them at random; for a pruned
            # folder loaded through remote code (no check_folder ran) that would be a silently wrong model.
            # A task head absent from the folder (e.g. an encoder folder read as a classifier) stays allowed.
            prefix = model.base_model_prefix
            missing = sorted(
                k for k in info.get("missing_keys", ()) if model.base_model is model or k.startswith(prefix + ".")
            )
            written = _writer_base_keys(model.config) if missing else None
            if written is not None:  # read as another head, the parts only that head has (a pooler) are new
                missing = [k for k in missing if k.removeprefix(prefix + ".") in written]
            if missing:
                raise ValueError(
                    f"the folder's weights lack {len(missing)} tensor(s) of the pruned model, e.g. {missing[:3]}; "
                    "they would be initialised at random. The weight files are incomplete or belong to another "
                    "model: re-save the folder from the pruned model."
                )
        # Loading replaces parameters after __init__: freeze again what feeds only emptied blocks, and what
        # emptied blocks no longer read.
        for module in model.modules():
            if getattr(module, "_gradprune_frozen", False):
                for p in module.parameters():
                    p.requires_grad_(False)
            if getattr(module, "_gradprune_empty", None) is not None:
                freeze_empty_block(module)
        if record and storage_format(record) == BITMASK:
            _stored_dense(model)
        return (model, info) if want_info else model


_CLASSES: dict[str, type] = {}
_STOCK_CLASSES: dict[str, type] = {}


def stock_class(base_cls: type) -> type:
    """The class of a pruned model that its config alone describes: the transformers class, under the same
    name, with only an atomic ``save_pretrained`` added (transformers' own writer is not atomic). Saves stay
    stock (``architectures`` is the name; no ``auto_map``, no modeling file). Cached, and reachable as an
    attribute of this module, so pickling finds it."""
    base_cls = transformers_class(base_cls)
    name = base_cls.__name__
    if name not in _STOCK_CLASSES:
        _STOCK_CLASSES[name] = type(
            name,
            (_GradPruneAtomicSave, base_cls),
            {"__module__": __name__, "__qualname__": name, "__doc__": base_cls.__doc__, "_gradprune_stock": True},
        )
    return _STOCK_CLASSES[name]


def gradprune_class(base_cls: type) -> type:
    """The pruned-model class for a transformers class (``BertModel`` -> ``GradPruneBertModel``), cached."""
    base_cls = transformers_class(base_cls)
    name = CLASS_PREFIX + base_cls.__name__
    if name not in _CLASSES:
        auto = {cls: auto for auto, cls in auto_classes(base_cls.config_class.model_type).items()}
        _CLASSES[name] = type(
            name,
            (_GradPruneMixin, base_cls),
            {
                "__module__": __name__,
                "__qualname__": name,
                "__doc__": f"{base_cls.__name__} with the pruned shapes recorded in its config.",
                "_auto_class": auto.get(base_cls.__name__),
            },
        )
    return _CLASSES[name]


def __getattr__(name: str):
    # transformers resolves ``auto_map`` entries with getattr(module, class_name), and pickle the stock classes'
    # names: build them on demand.
    stock = not name.startswith(CLASS_PREFIX)
    base_name = name if stock else name[len(CLASS_PREFIX) :]
    base_cls = None if name.startswith("_") else getattr(transformers, base_name, None)
    if isinstance(base_cls, type) and issubclass(base_cls, transformers.PreTrainedModel):
        return stock_class(base_cls) if stock else gradprune_class(base_cls)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
