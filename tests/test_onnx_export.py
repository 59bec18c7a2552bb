"""ONNX export: ONNX Runtime against torch fp32 for every family and head, uneven and empty layers, both
exporters, int8 and fusions, and the error cases. Tiny models; every check runs ORT on another batch size
and length than the export traced (2 x 8) and than export_onnx's own check (3 x 13)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import transformers  # noqa: E402
from conftest import VOCAB, _perturb, make_bert, make_gpt2, tiny_bert_config, tiny_gpt2_config  # noqa: E402
from conftest import uneven_plan as mha_plan  # noqa: E402

from hf_gradprune import PruningPlan, prune_model, save_pruned  # noqa: E402
from hf_gradprune.deploy import onnx_export as onnx_export_module  # noqa: E402
from hf_gradprune.deploy.onnx_export import ExportReport, OnnxExportError, export_onnx  # noqa: E402
from hf_gradprune.state import pruning_state  # noqa: E402
from hf_gradprune.testing import save_tiny_tokenizer  # noqa: E402

ATOL = 1e-4


def run_ort(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: feed[n].numpy() for n in names}), names


def make_feed(size=5, length=17, seed=3, types=True):
    """Right padding of different lengths, both segments when the model has them."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (size, length), generator=gen)
    mask = torch.ones_like(ids)
    for i in range(size):
        mask[i, length - i :] = 0
    feed = {"input_ids": ids, "attention_mask": mask}
    if types:
        feed["token_type_ids"] = (torch.arange(length) >= length // 2).long().expand(size, length).contiguous()
    return feed


def torch_outputs(model, feed, report):
    with torch.no_grad():
        out = model(**{n: feed[n] for n in report.input_names}, use_cache=False)
    return [out[n].numpy() for n in report.output_names]


def max_diff(a, b):
    return max(float(abs(x - y).max()) for x, y in zip(a, b))


def assert_matches_torch(model, report, feed, file="model.onnx"):
    got, names = run_ort(os.path.join(report.out_dir, file), feed)
    assert names == report.input_names
    expected = torch_outputs(model, feed, report)
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert max_diff(got, expected) <= ATOL
    return got


def empty_layers_plan(model):
    """Uneven heads and neurons; layer 1 keeps no head, layer 2 no FFN neuron."""
    g = pruning_state(model).geometry
    ffn = g.intermediate_size
    return PruningPlan(g, [[0, 2, 3], [], [1, 2]], [list(range(0, ffn, 2)), list(range(5, 40)), []])


def make_llama(attn, seed=0):
    """Grouped-query Llama: 8 query heads over 2 key/value heads, head_dim 8 != hidden / heads."""
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM._from_config(config, attn_implementation=attn).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def llama_plan(model):
    """Layer 0 keeps 2 of 4 heads in each group, layer 1 no head, layer 2 one whole group; layer 1 no neuron."""
    g = pruning_state(model).geometry
    return PruningPlan(g, [[0, 2, 5, 7], [], [4, 5, 6, 7]], [list(range(0, 40, 2)), [], [1, 5, 9, 13, 38]])


# ---------------------------------------------------------------------------------------------- BERT
@pytest.fixture(scope="module")
def pruned_bert():
    """BERT classifier (sdpa attention), uneven plan, layer 1 without heads."""
    model = make_bert()
    prune_model(model, mha_plan(model, zero_layer=1))
    return model


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_bert_classifier_both_exporters(tmp_path, pruned_bert, exporter):
    model = pruned_bert
    model.train()  # the caller's modes must survive the export (an exporter may call train())
    model.bert.encoder.layer[0].train(False)
    modes = {name: m.training for name, m in model.named_modules()}
    report = export_onnx(model, tmp_path / "onnx", exporter=exporter)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert model.config._attn_implementation == "sdpa"  # put back after an eager export (see notes)
    model.eval()

    assert isinstance(report, ExportReport) and report.exporter == exporter and report.opset == 18
    assert report.task == "sequence-classification" and report.int8_path is None
    assert report.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert report.output_names == ["logits"] and report.max_abs_diff <= ATOL
    assert sorted(os.listdir(tmp_path / "onnx")) == [
        "config.json",
        "model.onnx",
        "onnx_export.json",
    ]  # one self-contained graph
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["gradprune"]["plan"]["heads"][1] == []
    assert report.to_dict()["onnx_path"] == str(tmp_path / "onnx" / "model.onnx")
    assert os.listdir(tmp_path) == ["onnx"]  # no temporary folder left

    session = ort.InferenceSession(report.onnx_path, providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", "sequence"]] * 3
    assert_matches_torch(model, report, make_feed(size=1, length=1))
    feed = make_feed()
    got = assert_matches_torch(model, report, feed)
    again, _ = run_ort(tmp_path / "onnx" / "model.onnx", feed)
    assert max_diff(got, again) == 0.0  # dropout is off in the graph
    # token_type_ids are an input of the graph, not a constant: other segments, other logits
    zeros = {**feed, "token_type_ids": torch.zeros_like(feed["input_ids"])}
    assert max_diff(assert_matches_torch(model, report, zeros), got) > 1e-5


def test_dropout_is_off_in_a_model_with_dropout(tmp_path):
    model = make_bert(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5).train()
    report = export_onnx(model, tmp_path / "onnx", exporter="torchscript")
    assert model.training and report.max_abs_diff <= ATOL
    feed = make_feed(seed=9)
    got, _ = run_ort(tmp_path / "onnx" / "model.onnx", feed)
    assert max_diff(got, run_ort(tmp_path / "onnx" / "model.onnx", feed)[0]) == 0.0
    assert max_diff(got, torch_outputs(model.eval(), feed, report)) <= ATOL


def test_a_float64_model_exports_as_an_fp32_copy(tmp_path):
    model = make_bert(seed=2).to(torch.float64)
    report = export_onnx(model, tmp_path / "onnx", exporter="torchscript")
    assert next(model.parameters()).dtype == torch.float64  # the caller's model is left as it was
    assert report.max_abs_diff <= ATOL and any("fp32 CPU copy" in n for n in report.notes)
    got, _ = run_ort(report.onnx_path, make_feed())
    assert got[0].dtype == "float32"


@pytest.mark.parametrize(
    "cls,task,outputs,exporter",  # one dynamo export here: each takes seconds
    [
        (transformers.BertForTokenClassification, "token-classification", ["logits"], "torchscript"),
        (transformers.BertForQuestionAnswering, "question-answering", ["start_logits", "end_logits"], "dynamo"),
        (transformers.BertForMaskedLM, "masked-lm", ["logits"], "torchscript"),
    ],
)
def test_bert_heads_with_empty_layers_eager_attention(tmp_path, cls, task, outputs, exporter):
    torch.manual_seed(0)
    model = cls._from_config(tiny_bert_config(num_labels=2), attn_implementation="eager").eval()
    _perturb(model)
    prune_model(model, empty_layers_plan(model))
    report = export_onnx(model, tmp_path / "onnx", exporter=exporter)  # the task is read from the class
    assert (report.task, report.output_names, report.notes) == (task, outputs, [])
    assert_matches_torch(model, report, make_feed(size=4, length=19))


# ---------------------------------------------------------------------------------------------- GPT-2
def test_gpt2_causal_lm_with_empty_blocks_and_int8(tmp_path):
    model = make_gpt2()
    prune_model(model, empty_layers_plan(model))  # both empty kinds run EmptyBlock forwards in GPT-2
    report = export_onnx(model, tmp_path / "onnx", int8=True)
    assert report.task == "causal-lm" and report.input_names == ["input_ids", "attention_mask"]
    assert {"model.onnx", "model_quantized.onnx", "config.json", "generation_config.json", "onnx_export.json"} == set(
        os.listdir(tmp_path / "onnx")
    )
    feed = make_feed(size=3, length=21, types=False)
    assert_matches_torch(model, report, feed)
    int8, _ = run_ort(report.int8_path, feed)
    expected = torch_outputs(model, feed, report)[0]
    assert int8[0].shape == expected.shape
    assert float(abs(int8[0] - expected).max()) < 0.2 * float(expected.max() - expected.min())


def test_gpt2_sequence_classification(tmp_path):
    torch.manual_seed(0)
    model = transformers.GPT2ForSequenceClassification(tiny_gpt2_config(num_labels=3)).eval()
    _perturb(model)
    prune_model(model, mha_plan(model, zero_layer=2))
    report = export_onnx(model, tmp_path / "onnx", exporter="torchscript")
    assert report.task == "sequence-classification"
    assert_matches_torch(model, report, make_feed(size=4, length=15, types=False))


# ---------------------------------------------------------------------------------------------- Llama
@pytest.mark.parametrize("attn,exporter", [("eager", "torchscript"), ("sdpa", "dynamo")])
def test_llama_grouped_query_with_empty_layers(tmp_path, attn, exporter):
    model = make_llama(attn)
    prune_model(model, llama_plan(model))
    report = export_onnx(model, tmp_path / "onnx", exporter=exporter)
    assert report.task == "causal-lm" and report.max_abs_diff <= ATOL
    assert model.config._attn_implementation == attn
    assert_matches_torch(model, report, make_feed(size=4, length=23, types=False))


# ---------------------------------------------------------------------------------------------- int8, fusions
def test_int8_with_fusions_and_preprocessing_on_an_uneven_bert(tmp_path, pruned_bert):
    model = pruned_bert.eval()
    report = export_onnx(
        model, tmp_path / "onnx", exporter="torchscript", int8=True, optimize=True, quant_preprocess=True
    )
    names = set(os.listdir(tmp_path / "onnx"))
    assert names == {"config.json", "model.onnx", "model_optimized.onnx", "model_quantized.onnx", "onnx_export.json"}
    assert report.optimized_max_abs_diff <= ATOL and report.fused_operators  # some fusion happened
    # the layer without heads has no attention left to fuse (its empty-block forward); the two others fuse theirs
    assert report.fused_operators["Attention"] == 2
    assert not any("attention not fused" in n for n in report.notes)
    feed = make_feed(size=16, length=12, seed=5)
    # Rows with tokens match; a row of padding only has no meaningful output, and a fused Attention (mask -10000)
    # gives it another one than torch (mask finfo.min): 6e-4 here.
    fused, _ = run_ort(os.path.join(report.out_dir, "model_optimized.onnx"), feed)
    has_tokens = feed["attention_mask"].sum(1) > 0
    assert not has_tokens.all()  # the feed has such a row
    torch.testing.assert_close(
        torch.from_numpy(fused[0])[has_tokens],
        torch.from_numpy(torch_outputs(model, feed, report)[0])[has_tokens],
        atol=ATOL,
        rtol=0,
    )
    int8, _ = run_ort(report.int8_path, feed)
    expected = torch_outputs(model, feed, report)[0]
    spread = float(expected.max() - expected.min())
    assert 0 < report.int8_max_abs_diff < 0.5 * spread
    assert float(abs(int8[0] - expected).max()) < 0.5 * spread
    assert (
        torch.corrcoef(torch.stack([torch.from_numpy(int8[0]).flatten(), torch.from_numpy(expected).flatten()]))[0, 1]
        > 0.9
    )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_fused_attention_keeps_each_layers_own_head_count(tmp_path, attn):
    """Uneven heads (3 / 1 / 4 of 4), default exporter: attention is fused from a TorchScript eager export, each
    fused node with its layer's head count, and the fused graph matches torch (the caller's attention kept)."""
    import onnx

    model = make_bert(attn_implementation=attn)
    plan = mha_plan(model, zero_layer=0)
    plan = PruningPlan(plan.geometry, [[0, 2, 3], [1], [0, 1, 2, 3]], plan.neurons)
    prune_model(model, plan)
    report = export_onnx(model, tmp_path / "onnx", optimize=True, int8=True)
    assert report.fused_operators.get("Attention") == 3 and report.optimized_max_abs_diff <= ATOL
    assert model.config._attn_implementation == attn
    graph = onnx.load(report.optimized_path).graph
    heads = [next(a.i for a in n.attribute if a.name == "num_heads") for n in graph.node if n.op_type == "Attention"]
    assert heads == [3, 1, 4]
    feed = make_feed(size=6, length=19, seed=11)
    assert_matches_torch(model, report, feed, "model_optimized.onnx")
    assert_matches_torch(model, report, feed)
    assert not [n for n in os.listdir(tmp_path / "onnx") if n.startswith(".")]  # no scratch graph left


def test_int8_keeps_operators_of_an_empty_ffn_in_fp32(tmp_path):
    """A layer cut to no FFN neurons has MatMuls with [hidden, 0] / [0, hidden] weights: quantizing them gave wrong
    numbers on the balanced quickstart model (0.84 -> 0.63 accuracy), so they stay fp32, with a note."""
    import onnx

    model = make_bert(seed=3)
    g = pruning_state(model).geometry
    heads = [list(range(g.num_heads))] * g.num_layers
    neurons = [list(range(g.intermediate_size))] * (g.num_layers - 1) + [[]]
    prune_model(model, PruningPlan(g, heads, neurons))
    report = export_onnx(model, tmp_path / "onnx", exporter="torchscript", int8=True)
    assert any("empty weight" in n for n in report.notes)
    graph = onnx.load(report.int8_path).graph
    empty = {i.name for i in graph.initializer if 0 in i.dims}
    assert empty and all(n.op_type == "MatMul" or n.op_type == "Add" for n in graph.node if set(n.input) & empty)
    feed = make_feed(size=8, length=12, seed=9)
    int8, _ = run_ort(report.int8_path, feed)
    expected = torch_outputs(model, feed, report)[0]
    assert float(abs(int8[0] - expected).max()) < 0.25 * float(expected.max() - expected.min())


def test_a_roberta_classifier_gets_bert_fusions(tmp_path):
    kw = {k: v for k, v in tiny_bert_config().to_dict().items() if k != "model_type"}
    config = transformers.RobertaConfig(**{**kw, "type_vocab_size": 1, "pad_token_id": 1})
    torch.manual_seed(0)
    model = transformers.RobertaForSequenceClassification(config).eval()
    _perturb(model)
    prune_model(model, mha_plan(model, zero_layer=0))
    report = export_onnx(model, tmp_path / "onnx", exporter="torchscript", optimize=True)
    assert report.input_names == ["input_ids", "attention_mask"]  # one segment: no token_type_ids input
    assert report.fused_operators and report.optimized_max_abs_diff <= ATOL
    assert_matches_torch(model, report, make_feed(types=False), "model_optimized.onnx")


def test_optimize_is_skipped_with_a_note_where_ort_has_no_fusions(tmp_path):
    model = make_llama("eager")
    report = export_onnx(model, tmp_path / "onnx", exporter="torchscript", optimize=True)
    assert report.optimized_path is None and any("fit model_type 'llama'" in n for n in report.notes)
    assert "model_optimized.onnx" not in os.listdir(tmp_path / "onnx")


# ---------------------------------------------------------------------------------------------- folders
def test_folder_in_tokenizer_out(tmp_path, pruned_bert):
    tokenizer = save_tiny_tokenizer(tmp_path / "tok")
    save_pruned(pruned_bert, tmp_path / "pruned", tokenizer=tokenizer)
    report = export_onnx(tmp_path / "pruned", tmp_path / "onnx", exporter="torchscript")
    names = set(os.listdir(tmp_path / "onnx"))
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith((".safetensors", ".py")) for n in names)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "onnx")
    enc = loaded(["the movie was good", "a really dull plot and the acting was bad"], padding=True, return_tensors="pt")
    feed = {"token_type_ids": torch.zeros_like(enc["input_ids"]), **enc}  # this tokenizer gives none
    assert_matches_torch(pruned_bert.eval(), report, feed)

    # an in-memory model with a tokenizer given: its files are written too
    report = export_onnx(pruned_bert, tmp_path / "onnx2", exporter="torchscript", tokenizer=tokenizer)
    assert "tokenizer.json" in os.listdir(tmp_path / "onnx2")


def test_overwrite_replaces_the_export_and_keeps_other_files(tmp_path, pruned_bert):
    out = tmp_path / "onnx"
    export_onnx(pruned_bert, out, exporter="torchscript", int8=True)
    (out / "notes.txt").write_text("mine")
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_onnx(pruned_bert, out, exporter="torchscript")
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
    dense = make_bert(seed=4)
    export_onnx(dense, out, exporter="torchscript", overwrite=True)
    assert sorted(os.listdir(out)) == ["config.json", "model.onnx", "notes.txt", "onnx_export.json"]  # no int8 graph
    assert "gradprune" not in json.loads((out / "config.json").read_text())
    assert sorted(os.listdir(tmp_path)) == ["onnx"]
    (tmp_path / "empty").mkdir()
    report = export_onnx(dense, tmp_path / "empty", exporter="torchscript", check=False)  # an empty folder is fine
    assert "model.onnx" in os.listdir(tmp_path / "empty") and report.max_abs_diff is None


def test_overwrite_next_to_a_saved_model_keeps_its_config(tmp_path):
    """Issue 20, case 5: exporting next to a saved bf16 model rewrote its config.json to float32, so load_pruned
    gave a float32 model. Now the model's files stay byte for byte; only the export's own files are replaced."""
    from hf_gradprune import load_pruned

    model = make_bert()
    prune_model(model, mha_plan(model))
    model = model.to(torch.bfloat16)
    folder = tmp_path / "model"
    save_pruned(model, folder, tokenizer=save_tiny_tokenizer(tmp_path / "tok"))
    before = {n: (folder / n).read_bytes() for n in os.listdir(folder)}
    report = export_onnx(folder, folder, exporter="torchscript", overwrite=True)
    assert {n: (folder / n).read_bytes() for n in before} == before
    assert set(os.listdir(folder)) == set(before) | {"model.onnx", "onnx_export.json"}
    assert load_pruned(folder).dtype == torch.bfloat16
    assert any("kept the folder's own config.json" in note for note in report.notes), report.notes
    manifest = json.loads((folder / "onnx_export.json").read_text())["files"]
    assert set(manifest) == {"model.onnx"}
    assert_matches_torch(load_pruned(folder, dtype=torch.float32).eval(), report, make_feed())
    # a second export replaces its own graphs only: an int8 graph comes, then goes; the model's files stay
    export_onnx(folder, folder, exporter="torchscript", overwrite=True, int8=True)
    assert "model_quantized.onnx" in os.listdir(folder)
    export_onnx(model, folder, exporter="torchscript", overwrite=True)  # the in-memory bf16 model: fp32 copy
    assert "model_quantized.onnx" not in os.listdir(folder)
    assert {n: (folder / n).read_bytes() for n in before} == before
    assert load_pruned(folder).dtype == torch.bfloat16


def test_overwrite_keeps_an_exported_file_someone_changed(tmp_path, pruned_bert):
    """The manifest records each file's SHA-256: a config.json the export wrote is replaced by the next export,
    unless it was edited since (then it is the user's)."""
    out = tmp_path / "onnx"
    export_onnx(pruned_bert, out, exporter="torchscript")
    assert set(json.loads((out / "onnx_export.json").read_text())["files"]) == {"config.json", "model.onnx"}
    exported = (out / "config.json").read_text()
    export_onnx(make_bert(seed=4), out, exporter="torchscript", overwrite=True)
    assert (out / "config.json").read_text() != exported  # its own: replaced (the dense model's has no plan)
    edited = (out / "config.json").read_text().replace("{", '{"edited": true,', 1)
    (out / "config.json").write_text(edited)
    report = export_onnx(pruned_bert, out, exporter="torchscript", overwrite=True)
    assert (out / "config.json").read_text() == edited and "kept the folder's own config.json" in report.notes[-1]
    assert sorted(os.listdir(tmp_path)) == ["onnx"]  # no temporary sibling left


# ---------------------------------------------------------------------------------------------- errors
def test_bad_requests_fail_before_writing(tmp_path, pruned_bert):
    out = tmp_path / "onnx"
    with pytest.raises(ValueError, match="unknown task 'summarization'"):
        export_onnx(pruned_bert, out, task="summarization")
    with pytest.raises(OnnxExportError, match="cannot do task 'causal-lm'.*sequence-classification"):
        export_onnx(pruned_bert, out, task="causal-lm")
    with pytest.raises(OnnxExportError, match="cannot tell the task of BertModel.*pass task="):
        export_onnx(transformers.BertModel(tiny_bert_config()), out)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        export_onnx(tmp_path / "missing", out)
    with pytest.raises(ValueError, match="unknown exporter 'jit'"):
        export_onnx(pruned_bert, out, exporter="jit")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(pruned_bert, out, opset=9)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("module", ["onnx", "onnxruntime", "onnxscript"])
def test_missing_dependency_names_the_extra(tmp_path, monkeypatch, pruned_bert, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "hf_gradprune\[onnx\]"') as err:
        export_onnx(pruned_bert, tmp_path / "onnx")
    assert module in str(err.value)
    assert os.listdir(tmp_path) == []


def test_parity_failure_raises_and_leaves_nothing(tmp_path, monkeypatch, pruned_bert):
    real = onnx_export_module._ort_outputs

    def off_by_a_bit(path, inputs):
        return [x + 1e-3 for x in real(path, inputs)]

    monkeypatch.setattr(onnx_export_module, "_ort_outputs", off_by_a_bit)
    with pytest.raises(OnnxExportError, match=r"differs from torch fp32 by 0\.001.*Nothing was written"):
        export_onnx(pruned_bert, tmp_path / "onnx", exporter="torchscript")
    assert os.listdir(tmp_path) == []
    # the same graph passes with a tolerance above the offset
    report = export_onnx(pruned_bert, tmp_path / "onnx", exporter="torchscript", atol=2e-3)
    assert 1e-3 - 1e-6 <= report.max_abs_diff <= 1e-3 + ATOL


def test_exporter_failure_says_which_and_what_to_try(tmp_path, monkeypatch, pruned_bert):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(OnnxExportError, match="exporter='torchscript'.*unsupported operator.*Try exporter='dynamo'"):
        export_onnx(pruned_bert, tmp_path / "onnx", exporter="torchscript")
    assert os.listdir(tmp_path) == []


def test_a_wrong_fusion_is_dropped_and_a_failed_quantization_writes_nothing(tmp_path, monkeypatch, pruned_bert):
    real = onnx_export_module._ort_outputs

    def wrong_when_fused(path, inputs):
        out = real(path, inputs)
        return [x + 1.0 for x in out] if str(path).endswith("model_optimized.onnx") else out

    monkeypatch.setattr(onnx_export_module, "_ort_outputs", wrong_when_fused)
    report = export_onnx(pruned_bert, tmp_path / "onnx", exporter="torchscript", optimize=True, int8=True)
    assert report.optimized_path is None and report.fused_operators == {}
    assert any("fusions skipped" in n and "differs from torch" in n for n in report.notes)
    assert sorted(os.listdir(tmp_path / "onnx")) == [
        "config.json",
        "model.onnx",
        "model_quantized.onnx",
        "onnx_export.json",
    ]
    assert report.int8_max_abs_diff < 0.5  # quantized from the plain graph, not the wrong one

    import onnxruntime.quantization

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", broken)
    with pytest.raises(OnnxExportError, match="int8 quantization of model.onnx failed: RuntimeError: no kernel"):
        export_onnx(pruned_bert, tmp_path / "onnx2", exporter="torchscript", int8=True)
    assert sorted(os.listdir(tmp_path)) == ["onnx"]


def test_a_compiled_model_exports_the_model_it_wraps(tmp_path, pruned_bert):
    report = export_onnx(torch.compile(pruned_bert), tmp_path / "onnx", exporter="torchscript")
    assert report.max_abs_diff <= ATOL
    assert_matches_torch(pruned_bert.eval(), report, make_feed())
    with pytest.raises(TypeError, match="transformers model or a saved folder"):
        export_onnx(42, tmp_path / "other")
