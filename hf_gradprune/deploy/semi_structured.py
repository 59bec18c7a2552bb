"""2:4 weights on NVIDIA's sparse tensor cores: ``to_semi_structured(model)`` swaps the weight of every block
linear layer (2:4 already, e.g. after ``sparsity_pattern="2:4"``) for torch's ``SparseSemiStructuredTensor``
(``torch.sparse.to_sparse_semi_structured``, a torch prototype), for inference in fp16 / bf16 on CUDA.

This is the only place where 2:4 buys time, and only on a GPU: on the CPU a sparse model is as fast as the dense one
(its folder is smaller on disk only). Where it helps: compute capability 8.x (Ampere, Ada), large token counts;
torch reports 1.1-1.4x per linear layer on an A100 and slower than dense at small batches. On Hopper (sm_90) and
newer, pytorch #132009 (cuSPARSELt's "architecture mismatch", CUTLASS kernels built for sm_8x only) and #153825
(slower than dense on H100) say it may fail or lose: the call converts there with a warning that says so (the
conversion and one product are tried before the model changes, so a failure leaves it as it was); measure with
``make gpu-check`` (its ``semi-structured`` part) before relying on it.

Every check runs before the first weight changes: a torch with the prototype, ``nn.Linear`` targets (GPT-2's
``Conv1D`` stores ``[in, out]`` and multiplies ``x @ W``, which the kernels do not take), CUDA, fp16 / bf16, compute
capability >= 8.0, the shapes the backend takes, and 2:4 in every weight (``satisfies_nm``). The converted weights
take no gradient (inference only) and cannot be saved with ``save_pretrained``: save the dense-zeros model, load it,
then convert.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..sparsity import satisfies_nm, weight_targets

DTYPES = (torch.float16, torch.bfloat16)
# A weight's rows and columns must each be a positive multiple of these, per backend, for fp16 and bf16: torch's
# ``_DTYPE_SHAPE_CONSTRAINTS`` (``sparse_min_rows``, ``sparse_min_cols``) in torch/sparse/semi_structured.py;
# tests/test_semi_structured.py checks them against the installed torch. The input's rows are padded by torch.
SHAPE_MULTIPLES = {"cusparselt": (16, 16), "cutlass": (32, 64)}
HOPPER_NOTE = (
    "compute capability {cc} ({name}): pytorch #132009 reports torch's 2:4 kernels unsupported beyond sm_8x "
    "(cuSPARSELt 'architecture mismatch', CUTLASS built for sm_8x only) and #153825 slower than dense on H100; "
    "the conversion and a product ran here, but measure before relying on a speedup (make gpu-check, part "
    "semi-structured)"
)


class SemiStructuredError(ValueError):
    """A model ``to_semi_structured`` cannot convert; the message says what to do, and the model is unchanged."""


@dataclass
class SemiStructuredReport:
    """What ``to_semi_structured`` converted, with what, where."""

    modules: list[str]
    backend: str  # "cusparselt" or "cutlass"
    dtype: str
    device: str
    compute_capability: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _cuda_device(weight: torch.Tensor) -> torch.device | None:
    """The weight's CUDA device, None off CUDA (tests emulate a device by replacing this)."""
    return weight.device if weight.device.type == "cuda" else None


def _backend() -> str:
    """The backend ``to_sparse_semi_structured`` picks: cuSPARSELt unless CUTLASS is forced or cuSPARSELt is
    missing from this torch build (then its own call would fail; CUTLASS is the fallback torch documents)."""
    forced = getattr(torch.sparse.SparseSemiStructuredTensor, "_FORCE_CUTLASS", False)
    cusparselt = getattr(torch.backends, "cusparselt", None)
    available = cusparselt is not None and cusparselt.is_available()
    return "cutlass" if forced or not available else "cusparselt"


def _listed(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_semi_structured(model: nn.Module, targets=None, extra_modules=()) -> tuple[list, SemiStructuredReport]:
    """Every check of ``to_semi_structured``, changing nothing: ``(targets, report)`` or ``SemiStructuredError``."""
    convert = getattr(torch.sparse, "to_sparse_semi_structured", None)
    if convert is None or not hasattr(torch.sparse, "SparseSemiStructuredTensor"):
        raise SemiStructuredError(
            f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured (a prototype since torch 2.1): "
            "install a torch that has it, or keep the dense weights with exact zeros (every runtime loads them)"
        )
    targets = list(targets) if targets is not None else weight_targets(model, extra_modules)
    if not targets:
        raise SemiStructuredError("there are no linear layers to convert: the model's blocks hold none")
    names = [t.name for t in targets]
    not_linear = [f"{t.name} ({type(t.module).__name__})" for t in targets if not isinstance(t.module, nn.Linear)]
    if not_linear:
        raise SemiStructuredError(
            f"not an nn.Linear: {_listed(not_linear)}; torch's 2:4 kernels take nn.Linear's [out, in] weight only "
            "(GPT-2's Conv1D stores [in, out] and multiplies x @ W); leave such a model dense with exact zeros"
        )
    done = [t.name for t in targets if isinstance(t.module.weight, torch.sparse.SparseSemiStructuredTensor)]
    if done:
        raise SemiStructuredError(f"already semi-structured: {_listed(done)}; convert a model once")
    devices = {t.name: _cuda_device(t.module.weight) for t in targets}
    off = [n for n, d in devices.items() if d is None]
    if off:
        where = targets[names.index(off[0])].module.weight.device
        raise SemiStructuredError(
            f"the weights are on {where} ({_listed(off)}): torch's 2:4 kernels run on CUDA only (model.to('cuda')); "
            "on the CPU a 2:4 model is as fast as the dense one, and only its folder is smaller"
        )
    dtypes = {t.module.weight.dtype for t in targets} | {
        t.module.bias.dtype for t in targets if t.module.bias is not None
    }
    if len(dtypes) != 1 or next(iter(dtypes)) not in DTYPES:
        found = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        raise SemiStructuredError(
            f"the layers to convert are {found}: torch's 2:4 kernels take float16 or bfloat16 weights and biases of "
            "one dtype: model.half() or model.to(torch.bfloat16) first"
        )
    capabilities = {}
    for device in dict.fromkeys(devices.values()):
        capabilities[device] = torch.cuda.get_device_capability(device)
    old = [f"{torch.cuda.get_device_name(d)} (sm_{a}{b})" for d, (a, b) in capabilities.items() if (a, b) < (8, 0)]
    if old:
        raise SemiStructuredError(
            f"{_listed(old)}: 2:4 sparse tensor cores need compute capability 8.0 or newer (Ampere, Ada, Hopper); "
            "on this GPU keep the dense weights"
        )
    backend = _backend()
    beyond_8x = [d for d, (major, _) in capabilities.items() if major != 8]
    if backend == "cutlass" and beyond_8x:
        name = torch.cuda.get_device_name(beyond_8x[0])
        raise SemiStructuredError(
            f"this torch would use its CUTLASS 2:4 kernels (cuSPARSELt is missing or CUTLASS is forced), which are "
            f"built for compute capability 8.x only, and {name} is sm_{''.join(map(str, capabilities[beyond_8x[0]]))}"
            " (pytorch #132009): use a torch build with cuSPARSELt"
        )
    rows, cols = SHAPE_MULTIPLES[backend]
    bad_shape = [
        f"{t.name} {tuple(t.module.weight.shape)}"
        for t in targets
        if t.module.weight.shape[0] % rows or t.module.weight.shape[1] % cols or 0 in t.module.weight.shape
    ]
    if bad_shape:
        raise SemiStructuredError(
            f"{_listed(bad_shape)}: torch's {backend} 2:4 kernels need [out, in] weights whose rows are a multiple of "
            f"{rows} and columns a multiple of {cols}; pass targets= without them, or keep pruned widths multiples "
            f"of {max(rows, cols)} (ffn_multiple_of)"
        )
    not_24 = [t.name for t in targets if not satisfies_nm(t.module.weight.detach(), 2, 4)]
    if not_24:
        raise SemiStructuredError(
            f"not 2:4 (more than 2 nonzeros in a group of 4 inputs): {_listed(not_24)}; prune with "
            "sparsity_pattern='2:4' first (and keep its masks through training), or leave it dense"
        )
    first = next(iter(capabilities))
    major, minor = capabilities[first]
    name = torch.cuda.get_device_name(first)
    report = SemiStructuredReport(
        modules=names,
        backend=backend,
        dtype=str(next(iter(dtypes))).replace("torch.", ""),
        device=name,
        compute_capability=f"{major}.{minor}",
    )
    if beyond_8x:
        report.notes.append(HOPPER_NOTE.format(cc=report.compute_capability, name=name))
    return targets, report


def to_semi_structured(model: nn.Module, *, targets=None, extra_modules=()) -> SemiStructuredReport:
    """Swap each block linear's 2:4 weight for ``torch.sparse.to_sparse_semi_structured(weight)``, in place.

    ``targets`` (``WeightTarget`` list) defaults to ``weight_targets(model, extra_modules)``: the blocks' linear
    layers, plus any module named in ``extra_modules``. Every check and every conversion (and one product through
    the first converted weight) runs before the first weight is replaced: on any failure the model is unchanged and
    ``SemiStructuredError`` says what to do. Beyond compute capability 8.x (Hopper) it converts with a
    ``UserWarning`` (see the module's docstring). Returns the report; the weights take no gradient.
    """
    targets, report = check_semi_structured(model, targets, extra_modules)
    if report.notes:
        warnings.warn(report.notes[0], UserWarning, stacklevel=2)
    converted = []
    for t in targets:
        weight = t.module.weight.detach()
        try:
            sparse = torch.sparse.to_sparse_semi_structured(weight.contiguous())
            if not converted:  # a kernel that fails on this device fails here, before anything changed
                probe = torch.zeros(8, weight.shape[1], dtype=weight.dtype, device=weight.device)
                with torch.no_grad():
                    nn.functional.linear(probe, sparse, t.module.bias)
        except Exception as err:  # noqa: BLE001 - whatever the prototype raises, the model must stay whole
            raise SemiStructuredError(
                f"torch could not convert {t.name} on {report.device} (compute capability "
                f"{report.compute_capability}, {report.backend}): {type(err).__name__}: {err}. The model is "
                "unchanged; keep its dense weights on this device"
            ) from err
        converted.append(sparse)
    for t, sparse in zip(targets, converted):
        t.module.weight = nn.Parameter(sparse, requires_grad=False)
    return report
