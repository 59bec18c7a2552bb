import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import batch, make, uneven_plan
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
)

from hf_gradprune import FolderMismatchError, PruningPlan, load_pruned, prune_model, save_pruned
from hf_gradprune.state import pruning_state

AUTO = {"bert": AutoModelForSequenceClassification, "gpt2": AutoModelForCausalLM}


def logits(model, inputs):
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


@pytest.fixture(autouse=True)
def _hf_home(tmp_path, monkeypatch):
    # remote code is copied into HF_MODULES_CACHE: keep it inside the test's own folder
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_home" / "modules"))


def all_tensors_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("zero_layer", [0, 2])
def test_reload_is_bit_exact_both_ways(tmp_path, family, zero_layer):
    model = make(family)
    prune_model(model, uneven_plan(model, zero_layer=zero_layer))
    inputs = batch(family)
    expected = logits(model, inputs)
    model.save_pretrained(tmp_path / "out")
    files = set(os.listdir(tmp_path / "out"))
    assert {"config.json", "model.safetensors", "modeling_gradprune.py"} <= files
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["gradprune"]["plan"]["heads"][zero_layer] == []
    assert config["auto_map"][AUTO[family].__name__].startswith("modeling_gradprune.GradPrune")

    ours = load_pruned(tmp_path / "out").eval()
    remote = AUTO[family].from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    for loaded in (ours, remote):
        assert all_tensors_equal(loaded, model)
        assert (logits(loaded, inputs) - expected).abs().max().item() == 0.0
    assert type(remote).__module__.startswith("transformers_modules")
    for loaded in (ours, remote):  # what surgery froze stays frozen after a reload
        frozen = {n for n, p in loaded.named_parameters() if not p.requires_grad}
        assert frozen == {n for n, p in model.named_parameters() if not p.requires_grad}


def test_remote_code_loads_without_hf_gradprune_installed(tmp_path, family):
    model = make(family)
    prune_model(model, uneven_plan(model, zero_layer=1))
    inputs = batch(family)
    torch.save({"inputs": inputs, "expected": logits(model, inputs)}, tmp_path / "io.pt")
    model.save_pretrained(tmp_path / "out")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "hf_gradprune":
                    raise ImportError("hf_gradprune is blocked in this process")
        sys.meta_path.insert(0, Block())
        try:
            import hf_gradprune
            raise SystemExit("hf_gradprune should not be importable here")
        except ImportError:
            pass
        import torch, transformers
        io = torch.load({str(tmp_path / "io.pt")!r})
        m = transformers.{AUTO[family].__name__}.from_pretrained({str(tmp_path / "out")!r}, trust_remote_code=True)
        m.eval()
        with torch.no_grad():
            out = m(input_ids=io["inputs"]["input_ids"], attention_mask=io["inputs"]["attention_mask"]).logits
        diff = (out - io["expected"]).abs().max().item()
        assert not any(k.startswith("hf_gradprune") for k in sys.modules), "hf_gradprune was imported"
        print("MAXDIFF", diff)
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MAXDIFF 0.0" in result.stdout


def test_uniform_ffn_only_loads_with_plain_from_pretrained(tmp_path, family):
    model = make(family)
    g = pruning_state(model).geometry
    prune_model(model, PruningPlan(g, [list(range(4))] * 3, [list(range(1, 96, 3))] * 3))
    inputs = batch(family)
    model.save_pretrained(tmp_path / "out")
    plain_cls = BertForSequenceClassification if family == "bert" else type(make(family))
    plain = plain_cls.from_pretrained(tmp_path / "out").eval()
    auto = AUTO[family].from_pretrained(tmp_path / "out").eval()  # no trust_remote_code
    for loaded in (plain, auto):
        assert not type(loaded).__name__.startswith("GradPrune")
        assert (logits(loaded, inputs) - logits(model, inputs)).abs().max().item() == 0.0


def test_head_pruned_folder_needs_our_loader(tmp_path):
    model = make("bert")
    prune_model(model, uneven_plan(model))
    model.save_pretrained(tmp_path / "out")
    with pytest.raises(Exception, match="(?i)size|shape|mismatch"):
        BertForSequenceClassification.from_pretrained(tmp_path / "out")


def test_tokenizer_is_saved_when_given(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie"]))
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    model = make("bert")
    prune_model(model, uneven_plan(model))
    save_pruned(model, tmp_path / "out", tokenizer=tokenizer)
    assert (tmp_path / "out" / "tokenizer.json").exists() or (tmp_path / "out" / "vocab.txt").exists()
    reloaded = BertTokenizerFast.from_pretrained(tmp_path / "out")
    assert reloaded("good movie")["input_ids"] == tokenizer("good movie")["input_ids"]


def test_base_model_loads_from_a_classifier_folder(tmp_path):
    model = make("bert")
    prune_model(model, uneven_plan(model))
    model.save_pretrained(tmp_path / "out")
    inputs = batch("bert")
    with torch.no_grad():
        expected = model.bert(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    for base in (
        load_pruned(tmp_path / "out", model_class=BertModel),
        AutoModel.from_pretrained(tmp_path / "out", trust_remote_code=True),
    ):
        with torch.no_grad():
            out = base.eval()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        assert torch.equal(out.last_hidden_state, expected)


def test_resave_of_a_reloaded_model_round_trips(tmp_path, family):
    model = make(family)
    prune_model(model, uneven_plan(model))
    model.save_pretrained(tmp_path / "a")
    remote = AUTO[family].from_pretrained(tmp_path / "a", trust_remote_code=True)
    remote.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "modeling_gradprune.py").exists()
    again = load_pruned(tmp_path / "b")
    assert all_tensors_equal(again, model)


def test_bf16_round_trip(tmp_path, family):
    model = make(family).to(torch.bfloat16)
    prune_model(model, uneven_plan(model))
    model.save_pretrained(tmp_path / "out")
    loaded = load_pruned(tmp_path / "out", dtype=torch.bfloat16)
    assert all_tensors_equal(loaded, model)


def test_weights_that_do_not_match_the_plan_are_refused(tmp_path, family):
    model = make(family)
    prune_model(model, uneven_plan(model, zero_layer=0))
    model.save_pretrained(tmp_path / "out")
    other = make(family)
    prune_model(other, uneven_plan(other, zero_layer=1))
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "out" / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(FolderMismatchError, match="do not match the pruning plan"):
        load_pruned(tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    with pytest.raises(Exception, match="(?i)size|shape|mismatch"):
        AUTO[family].from_pretrained(tmp_path / "out", trust_remote_code=True)


def test_load_pruned_of_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_pruned(tmp_path / "nope")


def test_unpruned_folder_loads_through_load_pruned(tmp_path):
    model = make("bert")
    model.save_pretrained(tmp_path / "out")
    loaded = load_pruned(tmp_path / "out")
    assert type(loaded) is BertForSequenceClassification and all_tensors_equal(loaded, model)
