"""deploy/semi_structured.py on the CPU: every refusal (a CUDA device emulated where the check needs one), each
before any change, and the conversion's wiring with torch's converter replaced by a fake that records its calls.
The real kernels run in ``make gpu-check`` (part semi-structured)."""

from __future__ import annotations

import pytest
import torch
from conftest import batch, make_bert, make_gpt2
from torch import nn

from hf_gradprune.deploy import semi_structured as ss
from hf_gradprune.sparsity import weight_targets


def two_four(model):
    """Zero the two smallest |w| of every group of 4 inputs in each block linear (an independent 2:4 prune)."""
    with torch.no_grad():
        for t in weight_targets(model):
            w = t.matrix
            groups = w.reshape(w.shape[0], -1, 4)
            smallest = groups.abs().argsort(-1)[..., :2]
            groups.scatter_(-1, smallest, 0.0)
    return model


def bert16(**kw):
    return two_four(make_bert(**kw)).half()


@pytest.fixture
def gpu(monkeypatch):
    """An emulated CUDA device: every weight counts as on cuda:0, of the capability and name the test sets."""
    device = {"cc": (8, 0), "name": "NVIDIA A100-SXM4-80GB", "cusparselt": True}
    monkeypatch.setattr(ss, "_cuda_device", lambda w: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: device["cc"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: device["name"])
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: device["cusparselt"])
    return device


@pytest.fixture
def fake_convert(monkeypatch):
    """torch's converter replaced: records each weight it gets, returns a dense copy (which F.linear takes)."""
    calls = []

    def convert(weight):
        calls.append(weight.clone())
        if len(calls) == getattr(convert, "fail_at", None):
            raise RuntimeError("CUDA error: architecture mismatch when calling `cusparseLtInit(&handle)`")
        return weight.clone()

    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", convert)
    return calls


def weights(model):
    return {n: p for n, p in model.named_parameters()}


def unchanged(model, before):
    after = weights(model)
    return after.keys() == before.keys() and all(after[n] is p for n, p in before.items())


def test_shape_rules_are_torchs_own():
    """The shape multiples are torch's (rows, cols) minimums for fp16 and bf16, per backend: this fails if torch
    changes them."""
    classes = {"cusparselt": torch.sparse.SparseSemiStructuredTensorCUSPARSELT}
    classes["cutlass"] = torch.sparse.SparseSemiStructuredTensorCUTLASS
    for backend, cls in classes.items():
        for dtype in ss.DTYPES:
            rule = cls._DTYPE_SHAPE_CONSTRAINTS[dtype]
            assert (rule.sparse_min_rows, rule.sparse_min_cols) == ss.SHAPE_MULTIPLES[backend]


def test_converts_every_block_linear_and_gives_the_dense_zeros_outputs(gpu, fake_convert):
    model = bert16()
    inputs = {k: v for k, v in batch("bert").items() if k != "labels"}
    with torch.no_grad():
        expected = model(**inputs).logits
    targets = weight_targets(model)
    originals = {t.name: t.module.weight.detach().clone() for t in targets}
    classifier = model.classifier.weight
    report = ss.to_semi_structured(model)
    # one conversion per block linear (6 per BERT layer), in order, each given the contiguous weight itself
    assert report.modules == [t.name for t in targets] and len(targets) == 6 * 3
    assert len(fake_convert) == len(targets)
    for got, t in zip(fake_convert, targets):
        assert torch.equal(got, originals[t.name]) and got.dtype == torch.float16
    for t in targets:
        w = t.module.weight
        assert isinstance(w, nn.Parameter) and not w.requires_grad and torch.equal(w.detach(), originals[t.name])
    assert model.classifier.weight is classifier and classifier.requires_grad  # not a block linear: untouched
    assert report.backend == "cusparselt" and report.dtype == "float16" and report.compute_capability == "8.0"
    assert report.device == "NVIDIA A100-SXM4-80GB" and report.notes == []
    assert report.to_dict()["modules"] == report.modules
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, expected)


def test_extra_modules_and_given_targets(gpu, fake_convert):
    model = bert16(num_labels=16)  # a classifier of 16 rows fits cuSPARSELt's multiples
    with torch.no_grad():
        two_four_classifier = model.classifier.weight.reshape(16, -1, 4)
        two_four_classifier.scatter_(-1, two_four_classifier.abs().argsort(-1)[..., :2], 0.0)
    report = ss.to_semi_structured(model, extra_modules=("classifier",))
    assert report.modules[-1] == "classifier" and not model.classifier.weight.requires_grad
    model = bert16()
    few = weight_targets(model)[:2]
    assert ss.to_semi_structured(model, targets=few).modules == [t.name for t in few]


def test_a_conversion_that_fails_leaves_the_model_whole(gpu, fake_convert):
    model = bert16()
    before = weights(model)
    torch.sparse.to_sparse_semi_structured.fail_at = 5
    with pytest.raises(ss.SemiStructuredError, match="could not convert .*architecture mismatch.*model is unchanged"):
        ss.to_semi_structured(model)
    assert len(fake_convert) == 5 and unchanged(model, before)


def test_a_kernel_that_fails_on_the_device_leaves_the_model_whole(gpu, fake_convert, monkeypatch):
    model = bert16()
    before = weights(model)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(nn.functional, "linear", broken)
    with pytest.raises(ss.SemiStructuredError, match="no kernel image.*model is unchanged"):
        ss.to_semi_structured(model)
    assert len(fake_convert) == 1 and unchanged(model, before)  # the probe follows the first conversion


def test_hopper_converts_with_a_warning_that_names_the_issues(gpu, fake_convert):
    gpu.update(cc=(9, 0), name="NVIDIA H200")
    model = bert16()
    with pytest.warns(UserWarning, match=r"compute capability 9\.0 \(NVIDIA H200\).*#132009.*#153825"):
        report = ss.to_semi_structured(model)
    assert report.compute_capability == "9.0" and "make gpu-check" in report.notes[0]


@pytest.mark.parametrize(
    "case, match",
    [
        (
            "cpu",
            r"weights are on cpu \(bert.encoder.layer.0.attention.self.query, .* and 15 more\): "
            r".*CUDA only .*model.to\('cuda'\)",
        ),
        ("fp32", r"are float32: .*float16 or bfloat16.*model.half\(\)"),
        ("mixed", r"are bfloat16, float16: .*of one dtype"),
        ("old-gpu", r"Tesla T4 \(sm_75\).*compute capability 8.0 or newer"),
        ("hopper-cutlass", r"CUTLASS 2:4 kernels .*8.x only, and NVIDIA H100 is sm_90 .*cuSPARSELt"),
        ("shape", r"0\.intermediate\.dense \(40, 64\), .*output\.dense \(64, 40\).*multiple of 16 .*ffn_multiple_of"),
        ("cutlass-shape", r"cutlass 2:4 kernels need .*columns a multiple of 64"),
        ("not-2:4", r"not 2:4 \(.*\): bert.encoder.layer.0.attention.self.query; .*sparsity_pattern='2:4'"),
        ("gpt2", r"not an nn.Linear: transformer.h.0.attn.c_attn \(Conv1D\), .*; .*Conv1D stores \[in, out\]"),
        ("no-prototype", r"has no torch.sparse.to_sparse_semi_structured"),
        ("twice", r"already semi-structured: .*convert a model once"),
    ],
)
def test_refusals_say_what_to_do_and_change_nothing(case, match, gpu, fake_convert, monkeypatch):
    model = bert16()
    if case == "cpu":
        monkeypatch.setattr(ss, "_cuda_device", lambda w: None)
    elif case == "fp32":
        model = two_four(make_bert())
    elif case == "mixed":
        model.bert.encoder.layer[1].to(torch.bfloat16)
    elif case == "old-gpu":
        gpu.update(cc=(7, 5), name="Tesla T4")
    elif case == "hopper-cutlass":
        gpu.update(cc=(9, 0), name="NVIDIA H100", cusparselt=False)
    elif case == "shape":
        model = two_four(make_bert(intermediate_size=40)).half()  # 40 rows: not a multiple of 16
    elif case == "cutlass-shape":
        gpu.update(cusparselt=False)  # the 96-wide FFN input of the output dense: not a multiple of 64
    elif case == "not-2:4":
        with torch.no_grad():
            model.bert.encoder.layer[0].attention.self.query.weight[3, :4] = 1.0
    elif case == "gpt2":
        model = make_gpt2().half()
    elif case == "no-prototype":
        monkeypatch.delattr(torch.sparse, "to_sparse_semi_structured")
    elif case == "twice":
        monkeypatch.setattr(torch.sparse, "SparseSemiStructuredTensor", torch.Tensor)  # every weight "is" one
    before = weights(model)
    with pytest.raises(ss.SemiStructuredError, match=match):
        ss.to_semi_structured(model)
    assert fake_convert == [] and unchanged(model, before)


def test_the_real_converter_refuses_on_the_cpu_and_the_model_stays_whole():
    """Without the emulation, on this machine: the CPU refusal, from the first check that fails."""
    model = bert16()
    before = weights(model)
    with pytest.raises(ss.SemiStructuredError, match="run on CUDA only"):
        ss.to_semi_structured(model)
    assert unchanged(model, before)
