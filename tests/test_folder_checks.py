"""Issue 20 (folders): what a save writes and what a load accepts; each case fails before anything changes."""

import copy
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import batch, make, uneven_plan
from safetensors.torch import save_file
from test_llama import batch as llama_batch
from test_llama import make_decoder as make_llama
from test_llama import uneven_plan as llama_uneven_plan
from transformers import (
    AutoModelForCausalLM,
    BertForSequenceClassification,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

from hf_gradprune import (
    FolderMismatchError,
    ImportanceScorer,
    PruningPlan,
    check_folder,
    load_pruned,
    modeling_gradprune,
    prune_model,
    state,
)
from hf_gradprune.folders.checkpoint import CheckpointError
from hf_gradprune.planning.plan import PlanError
from hf_gradprune.state import pruning_state
from hf_gradprune.surgery import current_plan


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def llama_scores(model):
    scorer = ImportanceScorer(model, "taylor")
    inputs = llama_batch()
    with scorer:
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
    model.zero_grad()
    return scorer.scores


def stock_llama():
    """A Llama cut by a uniform plan: stock-shaped (the config alone describes it)."""
    model = make_llama()
    g = pruning_state(model).geometry
    plan = PruningPlan(g, [[0, 1, 4, 5]] * 3, [list(range(0, 40, 2))] * 3)
    return prune_model(model, plan)


def stock_bert():
    """A BERT cut by a uniform FFN plan: stock-shaped."""
    model = make("bert")
    g = pruning_state(model).geometry
    return prune_model(model, PruningPlan(g, [list(range(4))] * 3, [list(range(1, 96, 3))] * 3))


def structured_bert():
    model = make("bert")
    return prune_model(model, uneven_plan(model, zero_layer=1))


def structured_llama():
    model = make_llama()
    return prune_model(model, llama_uneven_plan(model, zero_layer=1))


MODELS = {"bert-stock": stock_bert, "bert-structured": structured_bert, "llama-stock": stock_llama}
MODELS["llama-structured"] = structured_llama


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def edit_config(folder, **changes):
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        target = config
        *parents, last = key.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    path.write_text(json.dumps(config))


# ---------------------------------------------------------------------- case 3: saves that empty config.json
def test_numpy_options_are_stored_as_plain_numbers_and_the_stock_save_works(tmp_path):
    model = make_llama()
    plan = PruningPlan.from_scores(
        llama_scores(model),
        head_sparsity=np.float64(0.5),
        ffn_sparsity=np.float32(0.5),
        min_heads_per_layer=np.int64(1),
        ffn_multiple_of=np.int64(4),
        seq_len=np.int32(64),
        uniform=True,
    )
    plain = {"min_heads_per_layer": int, "ffn_multiple_of": int, "seq_len": int}
    plain.update(head_sparsity=float, ffn_sparsity=float)
    assert {k: type(plan.meta[k]) for k in plain} == plain
    plan.meta["extra"] = np.int16(3)  # added after construction: still plain once recorded
    prune_model(model, plan)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.config.gradprune["structure"]
    model.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["gradprune"]["history"][-1]["min_heads_per_layer"] == 1
    assert saved["gradprune"]["history"][-1]["extra"] == 3
    assert PruningPlan.from_json(plan.to_json()).meta == plan.meta | {"extra": 3}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert torch.equal(logits(loaded, llama_batch()), logits(model, llama_batch()))


def test_a_meta_value_json_cannot_hold_is_refused_before_the_cut():
    model = make("bert")
    plan = PruningPlan.full(pruning_state(model).geometry)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan.meta["note"] = object()
    with pytest.raises(PlanError, match=r"plan.meta\['note'\] is a object"):
        prune_model(model, plan)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not getattr(model.config, "gradprune", None)


def fail_inside_the_writer(monkeypatch):
    def write(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", write)


@pytest.mark.parametrize("kind", ["llama-stock", "bert-stock"])
@pytest.mark.parametrize("failure", ["writer", "config"])
def test_a_stock_shaped_save_that_fails_midway_leaves_the_folder_whole(tmp_path, monkeypatch, kind, failure):
    model = MODELS[kind]()
    out = tmp_path / "out"
    model.save_pretrained(out)
    (out / "tokenizer.json").write_text("{}")
    before = snapshot(out)
    if failure == "writer":
        fail_inside_the_writer(monkeypatch)
        error = OSError
    else:
        model.config.note = object()  # config.json cannot hold it: transformers' writer fails on it
        error = TypeError
    with pytest.raises(error):
        model.save_pretrained(out)
    with pytest.raises(error):
        model.save_pretrained(tmp_path / "fresh")
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no new folder, no temporary left
    with pytest.raises(error):  # the Trainer's saves go through the same atomic save
        Trainer(model=model, args=TrainingArguments(str(tmp_path / "t"), report_to=[])).save_model(str(out))
    assert snapshot(out) == before


@pytest.mark.parametrize("kind", ["llama-stock", "bert-stock"])
def test_a_stock_shaped_model_stays_stock_in_every_way_users_see(tmp_path, kind):
    model = MODELS[kind]()
    base = BertForSequenceClassification if kind.startswith("bert") else LlamaForCausalLM
    assert isinstance(model, base) and type(model).__name__ == base.__name__
    model.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["architectures"] == [base.__name__] and "auto_map" not in saved
    assert not (tmp_path / "out" / "modeling_gradprune.py").exists()
    inputs = batch("bert") if kind.startswith("bert") else llama_batch()
    inputs.pop("labels", None)
    auto = transformers.AutoModelForSequenceClassification if kind.startswith("bert") else AutoModelForCausalLM
    attn = {} if kind.startswith("bert") else {"attn_implementation": "eager"}  # as make_decoder builds it
    plain = auto.from_pretrained(tmp_path / "out", **attn)  # no remote code
    assert type(plain) is base and torch.equal(logits(plain.eval(), inputs), logits(model, inputs))
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(other) is type(model) and torch.equal(logits(other, inputs), logits(model, inputs))
    torch.save(model, tmp_path / "whole.pt")
    assert type(torch.load(tmp_path / "whole.pt", weights_only=False)) is type(model)
    loaded = load_pruned(tmp_path / "out", **attn)  # saves atomically as well
    assert type(loaded) is type(model) and torch.equal(logits(loaded, inputs), logits(model, inputs))


# ---------------------------------------------------------------------- case 6: config.json contradicts the plan
EDITS = {
    # head counts edited, every tensor shape unchanged
    "llama-stock": {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16},
    "llama-structured": {"num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16},
    "bert-stock": {"num_attention_heads": 2},
    "bert-structured": {"num_attention_heads": 2},
}


@pytest.mark.parametrize("kind", list(EDITS))
def test_a_config_that_contradicts_the_recorded_plan_is_refused_before_loading(tmp_path, kind):
    model = MODELS[kind]()
    model.save_pretrained(tmp_path / "out")
    edit_config(tmp_path / "out", **EDITS[kind])
    for read in (check_folder, load_pruned):
        with pytest.raises(FolderMismatchError, match="contradicts its recorded pruning plan.*head_dim") as info:
            read(tmp_path / "out")
        assert "restore config.json" in str(info.value)


@pytest.mark.parametrize("kind", ["llama-stock", "bert-structured"])
@pytest.mark.parametrize(
    "heads, message",
    [("out of range", r"layer 0: head ids must be distinct and in \[0, (4|8)\)"), ("duplicate", "must be distinct")],
)
def test_a_recorded_plan_naming_units_the_model_never_had_is_refused(tmp_path, kind, heads, message):
    model = MODELS[kind]()
    model.save_pretrained(tmp_path / "out")
    layer0 = list(model.config.gradprune["plan"]["heads"][0])
    layer0[-1] = 9 if heads == "out of range" else layer0[0]  # same count: every shape still fits
    edit_config(tmp_path / "out", **{"gradprune.plan.heads": [layer0] + model.config.gradprune["plan"]["heads"][1:]})
    for read in (check_folder, load_pruned):
        with pytest.raises(FolderMismatchError, match=message):
            read(tmp_path / "out")


def test_pruning_state_of_a_live_model_runs_the_same_check():
    model = stock_llama()
    model.config.head_dim = 16
    with pytest.raises(state.RecordError, match=r"head_dim=16 \(recorded: 8\)"):
        pruning_state(model)
    model.config.head_dim = 8
    model.config.gradprune["plan"]["heads"][1] = [0, 1, 4, 12]
    with pytest.raises(state.RecordError, match=r"layer 1: head ids must be distinct and in \[0, 8\)"):
        current_plan(model)


# ---------------------------------------------------------------------- case 9: an optimizer made before the cut
def test_an_optimizer_made_before_the_cut_is_refused_at_its_first_step():
    model = make("bert")
    stale = torch.optim.AdamW(model.parameters(), lr=0.1)
    prune_model(model, uneven_plan(model))
    model(**batch("bert")).loss.backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"holds \d+ parameter\(s\) that prune_model replaced.*after prune_model"):
        stale.step()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing changed
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    fresh.step()  # the two-line fix
    assert not torch.equal(model.classifier.weight, before["classifier.weight"])


# ---------------------------------------------------------------------- case 10: malformed plans, the wrong family
def _plan_dict():
    model = make("bert")
    return json.loads(PruningPlan.full(pruning_state(model).geometry).to_json())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d.pop("geometry"), "lacks 'geometry'"),
        (lambda d: d.pop("heads"), "lacks 'heads'"),
        (lambda d: d.pop("neurons"), "lacks 'neurons'"),
        (lambda d: d["geometry"].pop("head_dim"), "'geometry' is not valid.*head_dim"),
        (lambda d: d["geometry"].update(num_heads="4"), "'geometry' is not valid: num_heads must be an integer"),
        (lambda d: d["geometry"].update(model_type=None), "'geometry' is not valid: model_type"),
        (lambda d: d.update(geometry=[1, 2]), "'geometry' must be a dict"),
        (lambda d: d.update(heads=5), "heads must be a list of one list of kept head ids per layer, got 5"),
        (lambda d: d.update(neurons={"0": [1]}), "neurons must be a list"),
        (lambda d: d.update(meta=[1]), "meta must be a dict"),
    ],
)
def test_a_malformed_plan_file_is_one_clear_error_naming_the_field(tmp_path, damage, message):
    data = _plan_dict()
    damage(data)
    with pytest.raises(PlanError, match=message):
        PruningPlan.from_json(json.dumps(data))
    (tmp_path / "plan.json").write_text(json.dumps(data))
    with pytest.raises(PlanError, match=message):
        PruningPlan.from_json(tmp_path / "plan.json")


def test_a_plan_file_that_is_not_json_is_a_plan_error(tmp_path):
    (tmp_path / "plan.json").write_text('{"geometry": ')
    with pytest.raises(PlanError, match="plan.json is not valid JSON"):
        PruningPlan.from_json(tmp_path / "plan.json")


def test_load_with_a_class_of_another_family_is_refused_naming_both(tmp_path):
    structured_bert().save_pretrained(tmp_path / "out")
    for read in (load_pruned, check_folder):
        with pytest.raises(CheckpointError, match="holds a 'bert' model.*LlamaForCausalLM is for 'llama' models"):
            read(tmp_path / "out", model_class=LlamaForCausalLM)
    with pytest.raises(TypeError, match="model_class must be a transformers model class"):
        load_pruned(tmp_path / "out", model_class="BertModel")


# ---------------------------------------------------------------------- FORMAT_VERSION
@pytest.mark.parametrize("kind", ["bert-structured", "llama-stock"])
def test_a_folder_of_a_newer_format_says_which_release_reads_it(tmp_path, kind):
    model = MODELS[kind]()
    model.save_pretrained(tmp_path / "out")
    record = json.loads((tmp_path / "out" / "config.json").read_text())["gradprune"]
    assert (record["format_version"], record["requires"]) == (1, modeling_gradprune.FORMAT_REQUIRES)
    version = modeling_gradprune.READ_FORMAT_VERSION  # the newest format this copy reads: one more is refused
    edit_config(tmp_path / "out", **{"gradprune.format_version": version + 1, "gradprune.requires": "9.0"})
    needs = rf"this folder needs hf_gradprune >= 9\.0 \(format {version + 1}\).*pip install -U hf-gradprune"
    for read in (check_folder, load_pruned):
        with pytest.raises(modeling_gradprune.FolderFormatError, match=needs):
            read(tmp_path / "out")
    if kind == "bert-structured":  # the folder's own modeling file (remote code; its own class) runs the same check
        with pytest.raises(ValueError, match=needs):
            transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out", trust_remote_code=True)
    model.config.gradprune["format_version"] = version + 1
    model.config.gradprune["requires"] = "9.0"
    for read in (pruning_state, current_plan):
        with pytest.raises(modeling_gradprune.FolderFormatError, match=needs):
            read(model)
    del model.config.gradprune["requires"]  # written before the rule: no release to name
    with pytest.raises(
        modeling_gradprune.FolderFormatError, match=rf"needs a newer hf_gradprune \(format {version + 1}\)"
    ):
        pruning_state(model)
    model.config.gradprune["format_version"] = "one"
    with pytest.raises(modeling_gradprune.FolderFormatError, match="format_version is 'one', not a format number"):
        pruning_state(model)
