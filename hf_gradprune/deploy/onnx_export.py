"""ONNX export of pruned (or dense) transformers models, checked against ONNX Runtime, with an int8 option.

``export_onnx`` writes a folder an ONNX Runtime user needs nothing else from: ``model.onnx`` (fp32),
optionally ``model_optimized.onnx`` (ONNX Runtime's transformer fusions) and ``model_quantized.onnx`` (dynamic
int8 weights, the name optimum uses), ``config.json``, the tokenizer files and ``onnx_export.json`` (what the export
wrote, so that an overwrite replaces only that). Uneven plans export as they are: every layer's shapes are in its
weights, so the graph needs no per-layer head counts.

One module of about 650 lines because it is one path with no other caller: export, check against torch,
optimize, check, quantize, then move into place, each step on the one scratch folder and the one report.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

TASKS = ("sequence-classification", "token-classification", "question-answering", "masked-lm", "causal-lm")
EXPORTERS = ("dynamo", "torchscript")
MODEL_FILE = "model.onnx"
OPTIMIZED_FILE = "model_optimized.onnx"
QUANTIZED_FILE = "model_quantized.onnx"
# what an export may write beside the graphs' own names (external weights): removed before an overwrite
_ONNX_FILES = {name + end for name in (MODEL_FILE, OPTIMIZED_FILE, QUANTIZED_FILE) for end in ("", ".data", "_data")}
# the files an export wrote beside its graphs (config, tokenizer), with their SHA-256: an overwrite replaces such a
# file only while it is still the export's own, never a config.json or tokenizer that a save put there
MANIFEST_FILE = "onnx_export.json"
# transformers' auto-class tables say which class does which task for each model_type
_TASK_TABLES = {
    "sequence-classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "token-classification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "question-answering": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "masked-lm": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
}
_OUTPUTS = {"question-answering": ("start_logits", "end_logits")}
_TWO_GB = 2**31 - 2**26  # protobuf's limit, less headroom for the graph itself
_PIP_HINT = 'pip install "hf_gradprune[onnx]"'
_CHECK_SHAPE, _EXPORT_SHAPE = (3, 13), (2, 8)  # the check runs another batch and length than the export traced


class OnnxExportError(RuntimeError):
    """The model cannot be exported as asked, or the exported graph does not compute what torch computes."""


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how close ONNX Runtime came to torch (max abs difference of the outputs)."""

    out_dir: str
    onnx_path: str
    int8_path: str | None
    task: str
    exporter: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    max_abs_diff: float | None
    int8_max_abs_diff: float | None
    seconds: float
    optimized_path: str | None = None
    optimized_max_abs_diff: float | None = None
    fused_operators: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _require_onnx():
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}, which are not installed: {_PIP_HINT}")


def _require_onnxscript():
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise ImportError(f'exporter="dynamo" needs onnxscript, which is not installed: {_PIP_HINT}') from None


def _load(model_or_folder) -> tuple[nn.Module, str | None]:
    if isinstance(model_or_folder, (str, os.PathLike)):
        folder = os.fspath(model_or_folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"{folder} is not a folder; export_onnx takes a model or a folder saved by save_pretrained"
            )
        from ..folders.hub import load_pruned

        return load_pruned(folder, dtype=torch.float32), folder  # the export is fp32 whatever the weights are
    if not isinstance(model_or_folder, nn.Module):
        raise TypeError(
            f"export_onnx takes a transformers model or a saved folder, got {type(model_or_folder).__name__}"
        )
    from ..state import unwrap_model

    return unwrap_model(model_or_folder), None


def tasks_of(model: nn.Module) -> list[str]:
    """The export tasks the model's class does (by transformers' auto-class tables for its model_type)."""
    from transformers.models.auto import modeling_auto

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    names = {cls.__name__ for cls in type(model).__mro__}
    return [t for t, table in _TASK_TABLES.items() if getattr(modeling_auto, table).get(model_type) in names]


def _resolve_task(model: nn.Module, task: str | None) -> str:
    can = tasks_of(model)
    if task is None:
        if not can:
            raise OnnxExportError(
                f"cannot tell the task of {type(model).__name__}: it is none of transformers' task classes for "
                f"model_type {model.config.model_type!r}. Load the model with a task head (e.g. "
                "AutoModelForSequenceClassification) or pass task=... (one of " + ", ".join(TASKS) + ")"
            )
        return can[0]
    if task not in can:
        does = f"it does {', '.join(can)}" if can else "it has no task head"
        raise OnnxExportError(
            f"{type(model).__name__} cannot do task {task!r} ({does}); load the model with the head for {task!r}"
        )
    return task


def _input_names(model: nn.Module) -> list[str]:
    names = ["input_ids", "attention_mask"]
    takes = inspect.signature(model.forward).parameters
    # Only where segments mean something (BERT's type_vocab_size 2): GPT-2's forward takes token_type_ids
    # too, and RoBERTa's (type_vocab_size 1) tokenizers do not return them.
    if "token_type_ids" in takes and getattr(model.config, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    return names


def _random_inputs(model: nn.Module, names: list[str], shape: tuple[int, int], seed: int) -> dict[str, torch.Tensor]:
    """Token ids with right padding (every row keeps its first tokens, so no query attends to nothing)."""
    gen = torch.Generator().manual_seed(seed)
    batch, length = shape
    ids = torch.randint(0, model.config.vocab_size, shape, generator=gen)
    mask = torch.ones(shape, dtype=torch.long)
    for row in range(1, batch):
        mask[row, length - 2 * row :] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        inputs["token_type_ids"] = (torch.arange(length) >= length // 2).long().expand(shape).contiguous()
    return inputs


def _torch_outputs(model, inputs, output_names) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(**inputs, **_forward_kwargs(model))
    return [out[name].float() for name in output_names]


def _forward_kwargs(model) -> dict:
    takes = inspect.signature(model.forward).parameters
    kw = {"return_dict": True}
    if "use_cache" in takes:
        kw["use_cache"] = False  # logits only: no past key values in the graph
    return kw


class _Wrapper(nn.Module):
    """The model as a function of its input tensors to a tuple of its output tensors (what the exporters want)."""

    def __init__(self, model, names, output_names):
        super().__init__()
        self.model, self.names, self.output_names = model, names, output_names

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        out = self.model(**{n: inputs[n] for n in self.names}, **_forward_kwargs(self.model))
        return tuple(out[name] for name in self.output_names)


def _num_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _export(model, path, task, names, output_names, opset, exporter, notes) -> None:
    example = _random_inputs(model, names, _EXPORT_SHAPE, seed=0)
    args = tuple(example[n] for n in names)
    wrapper = _Wrapper(model, names, output_names).eval()
    external = _num_bytes(model) >= _TWO_GB
    if exporter == "dynamo":
        dim = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
        # A layer without heads never reaches SDPA (its empty-block forward): torch.onnx's SDPA translation
        # reshapes keys to [batch, heads, ...] without allowzero, so zero heads would fail at run time.
        program = torch.onnx.export(
            wrapper,
            args,
            input_names=names,
            output_names=list(output_names),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={n: dim for n in names},
            verbose=False,
        )
        program.save(path, external_data=external)
    else:
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        per_token = task != "sequence-classification"
        axes.update({n: {0: "batch", 1: "sequence"} if per_token else {0: "batch"} for n in output_names})
        torch.onnx.export(
            wrapper,
            args,
            path,
            input_names=names,
            output_names=list(output_names),
            opset_version=opset,
            dynamo=False,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
        if external:
            import onnx

            onnx.save_model(onnx.load(path), path, save_as_external_data=True, location=MODEL_FILE + "_data")


def _ort_outputs(path, inputs) -> list:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    return [torch.from_numpy(x) for x in session.run(None, feed)]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))


def _check(path, model, inputs, expected, atol, what) -> float:
    try:
        got = _ort_outputs(path, inputs)
        again = _ort_outputs(path, inputs)
    except Exception as err:  # onnxruntime raises its own types; say which file and why
        raise OnnxExportError(f"ONNX Runtime cannot run the exported {what}: {err}") from err
    if _max_diff(got, again) != 0.0:
        raise OnnxExportError(f"the exported {what} is not deterministic (dropout or sampling left in the graph)")
    diff = _max_diff(got, expected)
    if not diff <= atol:  # also catches NaN
        raise OnnxExportError(
            f"the exported {what} differs from torch fp32 by {diff:.3g} > atol={atol:g} on random inputs of "
            f"shape {tuple(inputs['input_ids'].shape)}. Nothing was written. Try the other exporter "
            "(exporter='torchscript' / 'dynamo'), or a larger atol if the difference is rounding"
        )
    return diff


def _optimizer_type(model, notes) -> str | None:
    """ONNX Runtime's transformer-optimizer name for the model: its own name for the model_type (e.g. qwen3),
    else what the family's adapter says fits; None (with a note) where it has none."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    from ..architectures import UnsupportedModelError, get_adapter

    model_type = model.config.model_type
    try:
        ort_type = model_type if model_type in MODEL_TYPES else get_adapter(model_type).onnx_optimizer_model_type
    except UnsupportedModelError:
        ort_type = None
    if ort_type is None:
        notes.append(f"optimize: no ONNX Runtime fusions known to fit model_type {model_type!r}; skipped")
    return ort_type


def _fusable_graph(model, tmp, task, names, output_names, opset) -> str:
    """A TorchScript export with eager attention: the only graph in which ONNX Runtime's optimizer finds the
    attention pattern (it matches neither dynamo graphs nor SDPA; measured on transformers 5.24 / ORT 1.32)."""
    path = os.path.join(tmp, ".fusable.onnx")
    with _eager_attention(model):
        _export(model, path, task, names, output_names, opset, "torchscript", [])
    return path


@contextlib.contextmanager
def _eager_attention(model, switch: bool = True):
    """The model with eager attention for the block (when ``switch``), its own implementation back after."""
    attn = getattr(model.config, "_attn_implementation", None)
    switch = switch and attn not in (None, "eager")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(attn)


def _optimize(src, dst, model, ort_type, fused, attention: bool = True) -> None:
    """ONNX Runtime's transformer fusions (attention, skip layer norm, bias GeLU) of ``src`` into ``dst``.

    The optimizer needs a head count to fuse attention at all (v5 graphs reshape with -1 heads, so it cannot
    read one), and gives every fused layer that one count; a pruned layer keeps its own, so each fused
    ``Attention`` node's ``num_heads`` is set back from its own query width. The parity check that follows
    catches any fusion that still computes something else. ``attention=False`` keeps the other fusions only
    (head count 0: the optimizer then finds none to fuse)."""
    from onnxruntime.transformers.optimizer import optimize_model

    from ..state import pruning_state

    num_heads, hidden_size, head_dim = 0, 0, None
    if attention:
        try:
            g = pruning_state(model).geometry
            num_heads, hidden_size, head_dim = g.num_heads, g.hidden_size, g.head_dim
        except (ValueError, TypeError):  # a family without an adapter: let the optimizer guess
            pass
    optimized = optimize_model(src, model_type=ort_type, num_heads=num_heads, hidden_size=hidden_size, opt_level=0)
    if head_dim:
        shapes = {init.name: list(init.dims) for init in optimized.model.graph.initializer}
        for node in optimized.model.graph.node:
            if node.op_type != "Attention":
                continue
            sizes = next((list(a.ints) for a in node.attribute if a.name == "qkv_hidden_sizes"), None)
            q_width = sizes[0] if sizes else shapes[node.input[1]][-1] // 3
            for attr in node.attribute:
                if attr.name == "num_heads":
                    attr.i = q_width // head_dim
    fused.update({k: v for k, v in optimized.get_fused_operator_statistics().items() if v})
    optimized.save_model_to_file(dst, use_external_data_format=_num_bytes(model) >= _TWO_GB)


def _optimized(src, dst, model, inputs, expected, atol, report, export_args) -> bool:
    """Write the fused graph to ``dst`` if ONNX Runtime can fuse the family and the result is still right:
    first with attention fused (from a TorchScript export with eager attention, the only graph where ONNX
    Runtime finds it), else, e.g. for a layer without heads, which a fused Attention cannot express, with the
    other fusions only (on ``src``)."""
    folder = os.path.dirname(dst)
    ort_type = _optimizer_type(model, report.notes)
    if ort_type is None:
        return False

    def attempt(source, attention):
        try:
            with _in_scratch_dir(folder):
                _optimize(source, dst, model, ort_type, report.fused_operators, attention)
            report.optimized_max_abs_diff = _check(dst, model, inputs, expected, atol, OPTIMIZED_FILE)
            return None
        except Exception as err:  # correctness first: the plain graph stays the one to use
            for name in os.listdir(folder):
                if name.startswith(OPTIMIZED_FILE):
                    os.remove(os.path.join(folder, name))
            report.fused_operators.clear()
            return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"

    fusable = src
    try:
        if report.exporter != "torchscript" or getattr(model.config, "_attn_implementation", None) != "eager":
            fusable = _fusable_graph(model, folder, *export_args)
        failed = attempt(fusable, attention=True)
        if failed is None:
            if fusable != src:
                report.notes.append("optimize: fused a TorchScript export with eager attention (the same math)")
            return True
        report.notes.append(f"optimize: attention not fused ({failed}); the other fusions only")
    except Exception as err:  # the TorchScript export itself failed: the other fusions on the plain graph
        report.notes.append(f"optimize: attention not fused ({type(err).__name__}: {err}); the other fusions only")
    finally:
        for name in os.listdir(folder):
            if name.startswith(".fusable.onnx"):
                os.remove(os.path.join(folder, name))
    failed = attempt(src, attention=False)
    if failed is not None:
        report.notes.append(f"optimize: fusions skipped: {failed}")
        return False
    return True


def _quantize(src, dst, model, preprocess, notes) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    external = _num_bytes(model) // 4 >= _TWO_GB
    if preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = os.path.join(os.path.dirname(dst), "preprocessed.onnx")
        try:
            quant_pre_process(src, pre, save_as_external_data=external)
        except Exception as err:  # ONNX Runtime raises a bare Exception when its symbolic inference gives up
            quant_pre_process(src, pre, skip_symbolic_shape=True, save_as_external_data=external)
            notes.append(f"quant_preprocess: ran without symbolic shape inference, which failed on this graph ({err})")
        src = pre
    # fused operators (com.microsoft) have no ONNX shape inference: their outputs are fp32 like everything here
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    empty = _empty_weight_nodes(src)
    if empty:
        notes.append(f"int8: {len(empty)} operator(s) with an empty weight (a layer cut to width 0) stay fp32")
    quantize_dynamic(
        src,
        dst,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=empty,
        use_external_data_format=external,
        extra_options=extra,
    )
    if preprocess:
        os.remove(src)


def _empty_weight_nodes(path) -> list[str]:
    """Names of the nodes with a zero-size weight (an FFN cut to width 0 is a MatMul with a [hidden, 0] weight).

    Dynamic quantization of such a node computes its scale from an empty tensor, and the quantized graph then
    gives wrong numbers (measured: a MiniLM whose last FFN has no neurons fell from 0.84 to 0.63 accuracy); its
    fp32 result is exact and free."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    empty = {init.name for init in graph.initializer if 0 in init.dims}
    return [node.name for node in graph.node if node.name and any(name in empty for name in node.input)]


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"{out_dir} exists and is not a folder; give a folder to export into")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True to replace its export")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _manifest(folder: str, names) -> dict:
    """What an export wrote: every file by name, each non-graph file with its SHA-256 (graphs are ours by name)."""
    files = {n: None if n in _ONNX_FILES else _sha256(os.path.join(folder, n)) for n in sorted(names)}
    return {"written_by": "hf_gradprune.deploy.onnx_export.export_onnx", "files": files}


def _write_manifest(folder: str, manifest: dict) -> None:
    tmp = os.path.join(folder, f".{MANIFEST_FILE}.{uuid.uuid4().hex[:12]}.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(folder, MANIFEST_FILE))


def _previous_export(out_dir: str) -> set[str]:
    """The files of ``out_dir`` a previous export wrote and nobody changed since: the graphs, and what its
    manifest lists with the SHA-256 the file still has."""
    owned = {n for n in _ONNX_FILES if os.path.isfile(os.path.join(out_dir, n))}
    try:
        with open(os.path.join(out_dir, MANIFEST_FILE)) as f:
            files = json.load(f)["files"]
        listed = {n: h for n, h in files.items() if n == os.path.basename(n)}  # names in the folder only
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none, or not ours to trust: keep it all
        return owned
    for name, digest in listed.items():
        path = os.path.join(out_dir, name)
        if name not in owned and name != MANIFEST_FILE and os.path.isfile(path) and digest == _sha256(path):
            owned.add(name)
    return owned


def _move_into(tmp: str, out_dir: str, notes: list[str]) -> None:
    """Move an export into an existing folder. The previous export's files go (``_previous_export``); every other
    file stays, also one this export would write under the same name (the ``config.json`` and tokenizer of a
    model saved there): the export's copy of it is left out, with a note."""
    owned = _previous_export(out_dir)
    new = set(os.listdir(tmp)) - {MANIFEST_FILE}
    kept = sorted(n for n in new if n not in owned and os.path.lexists(os.path.join(out_dir, n)))
    written = new - set(kept)
    if kept:
        notes.append(
            f"kept the folder's own {', '.join(kept)} (not written by an export); the export's copies left out"
        )
    # the manifest first, listing both exports' files: stopped half way, the next overwrite still knows them all
    both = _manifest(tmp, written)
    both["files"] = _manifest(out_dir, owned)["files"] | both["files"]
    _write_manifest(out_dir, both)
    for name in owned - written:
        os.remove(os.path.join(out_dir, name))
    for name in sorted(written, key=lambda n: n == "config.json"):  # config.json last
        os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    _write_manifest(out_dir, _manifest(out_dir, written))


@contextlib.contextmanager
def _modes_kept(model: nn.Module):
    """Eval mode for the export; afterwards every module's own mode back (an exporter may call ``train()``)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def export_onnx(
    model_or_folder,
    out_dir,
    *,
    task: str | None = None,
    tokenizer=None,
    opset: int = 18,
    exporter: str = "dynamo",
    int8: bool = False,
    optimize: bool = False,
    quant_preprocess: bool = False,
    check: bool = True,
    atol: float = 1e-4,
    overwrite: bool = False,
) -> ExportReport:
    """Export a (pruned or dense) model, or a saved folder, to ONNX in ``out_dir``; see the module docstring.

    The graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` for BERT-style models) with
    dynamic batch and sequence axes and returns the task's logits in fp32 (causal LM: no KV cache). With
    ``check``, ONNX Runtime (CPU) runs ``model.onnx`` twice on random inputs of another shape than the export
    used; outputs that differ between the runs or further than ``atol`` from torch's raise
    ``OnnxExportError``, and nothing is written. ``optimize`` adds ``model_optimized.onnx`` where ONNX
    Runtime has fusions for the family; it is always checked, and a fusion that fails or changes the outputs
    is dropped with a note in ``report.notes``. ``int8`` adds ``model_quantized.onnx`` (dynamic QInt8
    weights, from the optimized graph if kept); its difference is reported, not checked. An existing
    non-empty ``out_dir`` is refused unless ``overwrite``, which replaces the previous export's files (its ONNX
    graphs, and what its ``onnx_export.json`` lists, unchanged since) and keeps every other file, also a
    ``config.json`` or tokenizer saved there (exporting into a model's own folder leaves the model as it was).
    """
    start = time.perf_counter()
    _require_onnx()
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)} (or None to infer it from the model)")
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; use 'dynamo' (the default) or 'torchscript'")
    if exporter == "dynamo":
        _require_onnxscript()
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 14:
        raise ValueError(f"opset must be an int >= 14, got {opset!r}")
    if not (isinstance(atol, (int, float)) and atol >= 0):
        raise ValueError(f"atol must be a number >= 0, got {atol!r}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    _check_out_dir(out_dir, overwrite)
    model, folder = _load(model_or_folder)
    task = _resolve_task(model, task)
    names, output_names = _input_names(model), list(_OUTPUTS.get(task, ("logits",)))
    notes: list[str] = []
    params = list(model.parameters())
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        # the export is fp32 on CPU; the caller's model stays where and what it is
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
        notes.append("exported an fp32 CPU copy of the model")

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.exporting-{uuid.uuid4().hex[:12]}")
    os.mkdir(tmp)
    report = ExportReport(
        out_dir=out_dir,
        onnx_path=os.path.join(out_dir, MODEL_FILE),
        int8_path=None,
        task=task,
        exporter=exporter,
        opset=opset,
        input_names=names,
        output_names=output_names,
        max_abs_diff=None,
        int8_max_abs_diff=None,
        seconds=0.0,
        notes=notes,
    )
    try:
        path = os.path.join(tmp, MODEL_FILE)
        with _modes_kept(model):
            try:
                _export(model, path, task, names, output_names, opset, exporter, notes)
            except Exception as err:
                raise OnnxExportError(
                    f"torch.onnx.export (exporter={exporter!r}) failed for {type(model).__name__}: "
                    f"{type(err).__name__}: {err}. Try exporter="
                    f"{'torchscript' if exporter == 'dynamo' else 'dynamo'!r}"
                ) from err
            model.eval()  # the reference too: an exporter may have left its wrapper (and the model) training
            inputs = _random_inputs(model, names, _CHECK_SHAPE, seed=1)
            expected = _torch_outputs(model, inputs, output_names)
        if check:
            report.max_abs_diff = _check(path, model, inputs, expected, atol, MODEL_FILE)
        source = path
        if optimize:
            optimized = os.path.join(tmp, OPTIMIZED_FILE)
            with _modes_kept(model):
                kept = _optimized(
                    path, optimized, model, inputs, expected, atol, report, (task, names, output_names, opset)
                )
            if kept:
                report.optimized_path, source = os.path.join(out_dir, OPTIMIZED_FILE), optimized
        if int8:
            quantized = os.path.join(tmp, QUANTIZED_FILE)
            try:
                with _in_scratch_dir(tmp):
                    _quantize(source, quantized, model, quant_preprocess, notes)
                report.int8_max_abs_diff = _max_diff(_ort_outputs(quantized, inputs), expected)
            except Exception as err:  # ONNX Runtime's tools raise all kinds; nothing is written either way
                raise OnnxExportError(
                    f"int8 quantization of {os.path.basename(source)} failed: {type(err).__name__}: {err}. "
                    "Nothing was written; export without int8=True (or without quant_preprocess/optimize)"
                ) from err
            report.int8_path = os.path.join(out_dir, QUANTIZED_FILE)
        model.config.save_pretrained(tmp)
        if task == "causal-lm" and getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        elif folder is not None:
            from ..folders.checkpoint import TOKENIZER_FILES

            for name in TOKENIZER_FILES:
                if os.path.isfile(os.path.join(folder, name)):
                    shutil.copy2(os.path.join(folder, name), os.path.join(tmp, name))
        _check_out_dir(out_dir, overwrite)  # again: another writer may have got there meanwhile
        if os.path.isdir(out_dir):
            _move_into(tmp, out_dir, notes)
        else:
            _write_manifest(tmp, _manifest(tmp, os.listdir(tmp)))
            os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.seconds = time.perf_counter() - start
    return report


@contextlib.contextmanager
def _in_scratch_dir(folder):
    # ONNX Runtime's symbolic shape inference dumps sym_shape_infer_temp.onnx into the working directory
    # when it gives up; keep such files in our temporary folder.
    scratch = tempfile.mkdtemp(dir=folder, prefix=".scratch-")
    with contextlib.chdir(scratch):
        yield
    shutil.rmtree(scratch, ignore_errors=True)
