"""ONNX export: ONNX Runtime against torch fp32 for every family and head, uneven and empty layers, both
exporters, int8 and fusions, and the error cases. Tiny models; exports shared where a test only reads them."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import make_bert, uneven_plan  # noqa: E402

from hf_gradprune import prune_model  # noqa: E402
from hf_gradprune.onnx_export import ExportReport, export_onnx  # noqa: E402

ATOL = 1e-4


def run_ort(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: feed[n].numpy() for n in names}), names


def bert_feed(size=5, length=17, seed=3):
    """Another batch and length than the export traced (2 x 8) and its own check (3 x 13)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 97, (size, length), generator=gen)
    mask = torch.ones_like(ids)
    for i in range(size):
        mask[i, length - i :] = 0
    types = torch.zeros_like(ids)
    types[:, length // 2 :] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def torch_logits(model, feed, names=("logits",)):
    with torch.no_grad():
        out = model(**feed)
    return [out[n].numpy() for n in names]


def max_diff(a, b):
    return max(float(abs(x - y).max()) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def pruned_bert():
    """BERT classifier, uneven plan, layer 1 without heads."""
    model = make_bert()
    prune_model(model, uneven_plan(model, zero_layer=1))
    return model


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_bert_classifier_both_exporters(tmp_path, pruned_bert, exporter):
    model = pruned_bert
    model.train()  # the caller's mode must survive the export (the exporters switch modes)
    model.bert.encoder.layer[0].train(False)
    modes = {name: m.training for name, m in model.named_modules()}
    report = export_onnx(model, tmp_path / "onnx", exporter=exporter)
    assert {name: m.training for name, m in model.named_modules()} == modes
    model.eval()

    assert isinstance(report, ExportReport) and report.exporter == exporter
    assert report.task == "sequence-classification" and report.int8_path is None
    assert report.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert report.output_names == ["logits"] and report.max_abs_diff <= ATOL
    assert sorted(os.listdir(tmp_path / "onnx")) == ["config.json", "model.onnx"]  # one self-contained file
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["gradprune"]["plan"]["heads"][1] == []
    assert report.to_dict()["onnx_path"] == str(tmp_path / "onnx" / "model.onnx")

    feed = bert_feed()
    got, names = run_ort(tmp_path / "onnx" / "model.onnx", feed)
    assert names == report.input_names
    expected = torch_logits(model, feed)
    assert max_diff(got, expected) <= ATOL
    again, _ = run_ort(tmp_path / "onnx" / "model.onnx", feed)
    assert max_diff(got, again) == 0.0  # dropout is off in the graph
    # token_type_ids are inputs of the graph, not constants: other segments give other logits
    zeros = {**feed, "token_type_ids": torch.zeros_like(feed["input_ids"])}
    other, _ = run_ort(tmp_path / "onnx" / "model.onnx", zeros)
    assert max_diff(other, got) > 1e-5 and max_diff(other, torch_logits(model, zeros)) <= ATOL


def test_dropout_is_off_in_a_model_with_dropout(tmp_path):
    model = make_bert(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5).train()
    report = export_onnx(model, tmp_path / "onnx", exporter="torchscript")
    assert model.training and report.max_abs_diff <= ATOL
    feed = bert_feed(seed=9)
    got, _ = run_ort(tmp_path / "onnx" / "model.onnx", feed)
    assert max_diff(got, run_ort(tmp_path / "onnx" / "model.onnx", feed)[0]) == 0.0
    assert max_diff(got, torch_logits(model.eval(), feed)) <= ATOL
