"""Coming from transformers v4: ``prune_heads`` and v4-era pruned folders.

The folders under tests/fixtures/ were written by a real transformers 4.x (see FIXTURE_INFO.json and
make_v4_fixtures.py); v4_io.safetensors holds their inputs and what v4 computed for them.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from conftest import batch, make
from safetensors.torch import load_file, save_file
from test_surgery import zeroed_reference
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    BertModel,
    GPT2LMHeadModel,
    RobertaForMaskedLM,
)

from hf_gradprune import (
    PlanError,
    PruningPlan,
    V4CheckpointError,
    convert_v4_checkpoint,
    current_plan,
    load_pruned,
    prune_heads,
    prune_model,
)
from hf_gradprune.cli.convert_v4 import main as convert_main
from hf_gradprune.folders.checkpoint import CheckpointError
from hf_gradprune.state import pruning_state

FIXTURES = Path(__file__).parent / "fixtures"
IO = load_file(FIXTURES / "v4_io.safetensors")
INFO = json.loads((FIXTURES / "FIXTURE_INFO.json").read_text())
V4_NAMES = ["bert", "roberta", "gpt2"]
CLASSES = {"bert": BertForSequenceClassification, "roberta": RobertaForMaskedLM, "gpt2": GPT2LMHeadModel}
AUTO = {"bert": "AutoModelForSequenceClassification", "roberta": "AutoModelForMaskedLM", "gpt2": "AutoModelForCausalLM"}
# what the fixtures' pruned_heads leave, per layer (original ids)
KEPT = {
    "bert": [[1], [1, 3], [0, 1, 2, 3]],
    "roberta": [[0, 1, 2, 3], [0, 1, 2], [1]],
    "gpt2": [[0, 1, 2], [0, 1, 2, 3], [3]],
}


@pytest.fixture(autouse=True)
def _hf_home(tmp_path, monkeypatch):
    # remote code is copied into HF_MODULES_CACHE: keep it inside the test's own folder
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_home" / "modules"))


def v4_outputs(model, name):
    with torch.no_grad():
        out = model.eval()(
            input_ids=IO[f"{name}.input_ids"], attention_mask=IO[f"{name}.attention_mask"], output_hidden_states=True
        )
    return out.logits, torch.stack(out.hidden_states)


def logits(model, inputs):
    with torch.no_grad():
        return model.eval()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


def all_tensors_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_fixture(name, tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURES / f"v4_{name}", tmp_path / f"v4_{name}"))


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


# ---------------------------------------------------------------------- the fixtures themselves
@pytest.mark.parametrize("name", V4_NAMES)
def test_fixtures_were_written_by_transformers_v4(name):
    config = json.loads((FIXTURES / f"v4_{name}" / "config.json").read_text())
    assert INFO["transformers"].startswith("4.") and config["transformers_version"] == INFO["transformers"]
    assert "gradprune" not in config and "auto_map" not in config
    assert config["pruned_heads"] == INFO["pruned_heads"][name]
    assert len({len(h) for h in KEPT[name]}) == 3  # uneven: every layer keeps a different number of heads


@pytest.mark.parametrize("name", V4_NAMES)
def test_plain_v5_cannot_load_a_v4_folder(name):
    # the problem this module solves: a size mismatch (or, when told to ignore it, re-initialised attention)
    with pytest.raises(Exception, match="(?i)size|shape|mismatch"):
        CLASSES[name].from_pretrained(FIXTURES / f"v4_{name}")


# ---------------------------------------------------------------------- loading v4 folders
@pytest.mark.parametrize("name", V4_NAMES)
def test_load_pruned_reproduces_v4_outputs(name):
    model = load_pruned(FIXTURES / f"v4_{name}")
    assert isinstance(model, CLASSES[name])
    out, hidden = v4_outputs(model, name)
    diff = (out - IO[f"{name}.logits"]).abs().max().item()
    print(f"{name}: max |logits v5 - v4| = {diff:.3g}")
    assert diff <= 1e-5
    torch.testing.assert_close(hidden, IO[f"{name}.hidden_states"], atol=1e-5, rtol=0)
    assert current_plan(model).heads == KEPT[name]
    assert not hasattr(model.config, "pruned_heads")  # replaced by the recorded plan
    assert model.config.gradprune["history"][-1]["method"] == "transformers-v4 prune_heads"
    state = pruning_state(model)
    assert [state.adapter.num_heads(lay) for lay in state.adapter.layers(model)] == [len(h) for h in KEPT[name]]


def test_v4_folder_with_pytorch_bin_weights(tmp_path):
    # v4 wrote pytorch_model.bin with safe_serialization=False (the default before 4.35)
    folder = copy_fixture("gpt2", tmp_path)
    state = load_file(folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    out, _ = v4_outputs(load_pruned(folder), "gpt2")
    torch.testing.assert_close(out, IO["gpt2.logits"], atol=1e-5, rtol=0)


def test_base_model_from_a_v4_classifier_folder():
    encoder = load_pruned(FIXTURES / "v4_bert", model_class=BertModel)
    full = load_pruned(FIXTURES / "v4_bert")
    inputs = {"input_ids": IO["bert.input_ids"], "attention_mask": IO["bert.attention_mask"]}
    with torch.no_grad():
        assert torch.equal(encoder.eval()(**inputs).last_hidden_state, full.eval().bert(**inputs).last_hidden_state)


def test_prune_heads_continues_a_v4_model_in_original_indices():
    model = load_pruned(FIXTURES / "v4_bert")  # layer 0 keeps only head 1
    prune_heads(model, {0: [0, 1], 2: [3]})  # head 0 is already gone: no-op for it
    assert current_plan(model).heads == [[], [1, 3], [0, 1, 2]]


def v4_layout_folder(tmp_path, family, heads_to_prune) -> tuple[Path, torch.nn.Module]:
    """A folder in v4's layout (config with pruned_heads, pruned weights, no plan), written here with v5.

    transformers 4.57 saves a model whose layer lost every head but cannot run it (its attention reshapes
    fail), so that case has no v4 logits; its layout is the one v4 writes.
    """
    model = make(family)
    unpruned = make(family)
    prune_heads(model, heads_to_prune)
    folder = tmp_path / f"v4_layout_{family}"
    config = unpruned.config
    config.pruned_heads = {str(k): v for k, v in heads_to_prune.items()}
    config.architectures = [CLASSES[family].__name__]
    config.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to wte
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder, unpruned


def test_v4_layout_with_a_layer_that_lost_every_head(tmp_path, family):
    heads_to_prune = {0: [0, 1, 2, 3], 2: [1]}
    folder, unpruned = v4_layout_folder(tmp_path, family, heads_to_prune)
    g = pruning_state(unpruned).geometry
    plan = PruningPlan(g, [[], [0, 1, 2, 3], [0, 2, 3]], [list(range(g.intermediate_size))] * 3)
    loaded = load_pruned(folder)
    inputs = batch(family)
    torch.testing.assert_close(
        logits(loaded, inputs), logits(zeroed_reference(unpruned, plan), inputs), atol=1e-5, rtol=0
    )
    assert current_plan(loaded).heads == plan.heads


# ---------------------------------------------------------------------- converting
def test_convert_then_load_with_remote_code_without_hf_gradprune(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # BERT and RoBERTa through the function, GPT-2 through the command line
    for name in ("bert", "roberta"):
        assert convert_v4_checkpoint(FIXTURES / f"v4_{name}", tmp_path / f"converted_{name}") == str(
            tmp_path / f"converted_{name}"
        )
    cmd = [
        sys.executable,
        "-m",
        "hf_gradprune.cli.convert_v4",
        str(FIXTURES / "v4_gpt2"),
        str(tmp_path / "converted_gpt2"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {tmp_path / 'converted_gpt2'}" in result.stdout
    for name in V4_NAMES:
        dst = tmp_path / f"converted_{name}"
        files = set(os.listdir(dst))
        assert {"config.json", "model.safetensors", "modeling_gradprune.py"} <= files
        config = json.loads((dst / "config.json").read_text())
        assert "pruned_heads" not in config and config["gradprune"]["plan"]["heads"] == KEPT[name]
        assert config["auto_map"][AUTO[name]].startswith("modeling_gradprune.GradPrune")
        assert all_tensors_equal(load_pruned(dst), load_pruned(FIXTURES / f"v4_{name}"))
        assert not [f for f in os.listdir(tmp_path) if ".converting-" in f]  # no temporary folder left
    # the tokenizer came along
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.txt"} <= set(os.listdir(tmp_path / "converted_bert"))
    tok_src, tok_dst = (AutoTokenizer.from_pretrained(p) for p in (FIXTURES / "v4_bert", tmp_path / "converted_bert"))
    assert tok_dst("w1 w2 w3")["input_ids"] == tok_src("w1 w2 w3")["input_ids"]

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
        from safetensors.torch import load_file
        io = load_file({str(FIXTURES / "v4_io.safetensors")!r})
        for name, auto in {AUTO!r}.items():
            m = getattr(transformers, auto).from_pretrained({str(tmp_path)!r} + "/converted_" + name,
                                                            trust_remote_code=True).eval()
            assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
            with torch.no_grad():
                out = m(input_ids=io[name + ".input_ids"], attention_mask=io[name + ".attention_mask"]).logits
            print("MAXDIFF", name, (out - io[name + ".logits"]).abs().max().item())
        assert not any(k.startswith("hf_gradprune") for k in sys.modules), "hf_gradprune was imported"
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    diffs = {line.split()[1]: float(line.split()[2]) for line in result.stdout.splitlines() if line.startswith("MAX")}
    print(diffs)
    assert set(diffs) == set(V4_NAMES) and max(diffs.values()) <= 1e-5


def test_command_line_refuses_to_overwrite_unless_told(tmp_path, capsys):
    dst = tmp_path / "out"
    assert convert_main([str(FIXTURES / "v4_gpt2"), str(dst)]) == 0
    assert f"wrote {dst}" in capsys.readouterr().out
    out, _ = v4_outputs(load_pruned(dst), "gpt2")
    torch.testing.assert_close(out, IO["gpt2.logits"], atol=1e-5, rtol=0)
    (dst / "keep.txt").write_text("mine")
    before = snapshot(dst)
    assert convert_main([str(FIXTURES / "v4_bert"), str(dst)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert snapshot(dst) == before
    assert convert_main([str(FIXTURES / "v4_bert"), str(dst), "--overwrite"]) == 0
    assert (dst / "keep.txt").read_text() == "mine"  # overwrite replaces the model's files, not the user's
    out, _ = v4_outputs(load_pruned(dst), "bert")
    torch.testing.assert_close(out, IO["bert.logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "pruned_heads, message",
    [
        ({"0": [1], "3": [0]}, "layer '3', which does not exist: the model has 3 layers"),
        ({"1": [4]}, "head 4 of layer 1, which does not exist: each layer has 4 heads"),
        ({"1": [-1]}, "head -1 of layer 1, which does not exist"),
        ({"x": [0]}, "layer 'x' is not an integer"),
        ({"0": "01"}, "must map to a list of head indices"),
    ],
)
def test_bad_pruned_heads_is_refused_and_nothing_is_written(tmp_path, family, pruned_heads, message):
    src = copy_fixture(family, tmp_path)
    edit_config(src, pruned_heads=pruned_heads)
    before = snapshot(src)
    dst = tmp_path / "dst"
    with pytest.raises(V4CheckpointError, match=message):
        convert_v4_checkpoint(src, dst)
    assert not dst.exists() and snapshot(src) == before
    assert [f for f in os.listdir(tmp_path) if f != "hf_home"] == [f"v4_{family}"]  # no temporary folder either
    with pytest.raises(V4CheckpointError, match=message):
        load_pruned(src)
    assert convert_main([str(src), str(dst)]) == 2 and not dst.exists()


def test_weights_that_do_not_match_pruned_heads_are_refused(tmp_path, family, capsys):
    src = copy_fixture(family, tmp_path)
    wrong = {"bert": {"0": [0, 2], "1": [0, 2]}, "gpt2": {"0": [3], "2": [0, 1]}}[family]  # one head too few
    edit_config(src, pruned_heads=wrong)
    dst = tmp_path / "dst"
    for call in (lambda: convert_v4_checkpoint(src, dst), lambda: load_pruned(src)):
        with pytest.raises(V4CheckpointError, match="do not have the shapes that config.json's pruned_heads"):
            call()
    assert not dst.exists()
    assert convert_main([str(src), str(dst)]) == 2 and not dst.exists()
    assert "nothing was written" in capsys.readouterr().err


def test_missing_attention_weights_are_an_error_not_a_reinit(tmp_path):
    src = copy_fixture("bert", tmp_path)
    state = load_file(src / "model.safetensors")
    del state["bert.encoder.layer.1.attention.self.key.weight"]
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(V4CheckpointError, match=r"lack 1 parameter\(s\) of the model.*key.weight"):
        load_pruned(src)


def test_conversion_refuses_what_is_not_a_v4_pruned_folder(tmp_path):
    unpruned = tmp_path / "unpruned"
    make("bert").save_pretrained(unpruned)
    with pytest.raises(V4CheckpointError, match="has no pruned_heads"):
        convert_v4_checkpoint(unpruned, tmp_path / "a")
    ours = tmp_path / "ours"
    model = make("bert")
    prune_heads(model, {0: [1]})
    model.save_pretrained(ours)
    with pytest.raises(V4CheckpointError, match="already an hf_gradprune folder"):
        convert_v4_checkpoint(ours, tmp_path / "b")
    with pytest.raises(ValueError, match="other than the source"):
        convert_v4_checkpoint(FIXTURES / "v4_bert", FIXTURES / "v4_bert")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        convert_v4_checkpoint(tmp_path / "nope", tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_conversion_refuses_a_destination_that_holds_or_lies_inside_the_source(tmp_path):
    outer = tmp_path / "outer"
    outer.mkdir()
    src = Path(shutil.copytree(FIXTURES / "v4_bert", outer / "v4_bert"))
    (tmp_path / "alias").symlink_to(outer, target_is_directory=True)
    before = snapshot(outer)
    for dst, where in (
        (outer, "holds the source"),
        (tmp_path / "alias", "holds the source"),  # the same folder through a symlink
        (src / "converted", "inside the source"),
        (tmp_path / "alias" / "v4_bert" / "converted", "inside the source"),
    ):
        with pytest.raises(ValueError, match=where):
            convert_v4_checkpoint(src, dst, overwrite=True)
        assert convert_main([str(src), str(dst), "--overwrite"]) == 2
    assert snapshot(outer) == before and not (src / "converted").exists()


def test_overwrite_replaces_the_model_and_keeps_everything_else(tmp_path):
    dst = tmp_path / "dst"
    convert_v4_checkpoint(FIXTURES / "v4_gpt2", dst)
    old = load_pruned(dst)
    torch.save(old.state_dict(), dst / "pytorch_model.bin")  # an older model's weights, in two formats
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model.safetensors"}}))
    (dst / "keep.txt").write_text("mine")
    (dst / "runs").mkdir()
    (dst / "runs" / "events").write_bytes(b"log")
    convert_v4_checkpoint(FIXTURES / "v4_bert", dst, overwrite=True)
    assert (dst / "keep.txt").read_text() == "mine" and (dst / "runs" / "events").read_bytes() == b"log"
    assert not (dst / "pytorch_model.bin").exists() and not (dst / "model.safetensors.index.json").exists()
    assert all_tensors_equal(load_pruned(dst), load_pruned(FIXTURES / "v4_bert"))
    assert [p.name for p in tmp_path.iterdir() if ".saving-" in p.name or ".converting-" in p.name] == []


def test_a_conversion_that_fails_midway_leaves_dst_as_it_was(tmp_path, monkeypatch):
    dst = tmp_path / "dst"
    convert_v4_checkpoint(FIXTURES / "v4_gpt2", dst)
    (dst / "keep.txt").write_text("mine")
    before = snapshot(dst)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        convert_v4_checkpoint(FIXTURES / "v4_bert", dst, overwrite=True)
    assert snapshot(dst) == before
    assert [p.name for p in tmp_path.iterdir() if ".saving-" in p.name] == []


def test_conversion_never_replaces_a_file(tmp_path):
    dst = tmp_path / "dst"
    dst.write_text("not a folder")
    with pytest.raises(FileExistsError, match="is not a folder"):
        convert_v4_checkpoint(FIXTURES / "v4_bert", dst, overwrite=True)
    assert dst.read_text() == "not a folder"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_command_line_on_a_truncated_weights_file(tmp_path, weights):
    src = copy_fixture("bert", tmp_path)
    if weights == "pytorch_model.bin":
        torch.save(load_file(src / "model.safetensors"), src / weights)
        (src / "model.safetensors").unlink()
    _truncate(src / weights)
    for call in (lambda: convert_v4_checkpoint(src, tmp_path / "dst"), lambda: load_pruned(src)):
        with pytest.raises(CheckpointError, match=f"{weights} cannot be read.*truncated or corrupt"):
            call()
    cmd = [sys.executable, "-m", "hf_gradprune.cli.convert_v4", str(src), str(tmp_path / "dst")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=300)
    assert result.returncode == 2 and result.stdout == ""  # 2: bad input, as every hf-gradprune command
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("hf-gradprune convert-v4: error: ")
        and lines[0].endswith("(nothing was written)")
    ), lines
    assert f"{weights} cannot be read" in lines[0] and "Traceback" not in result.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name != "hf_home"] == ["v4_bert"]  # nothing was written


# ---------------------------------------------------------------------- prune_heads
def kept_after(g, removed: dict[int, list[int]]) -> PruningPlan:
    heads = [[h for h in range(g.num_heads) if h not in removed.get(layer, [])] for layer in range(g.num_layers)]
    return PruningPlan(g, heads, [list(range(g.intermediate_size))] * g.num_layers)


@pytest.mark.parametrize("removed", [{0: [0, 2], 2: [1, 2, 3]}, {1: [0, 1, 2, 3], 0: [3]}])
def test_prune_heads_equals_zeroed_heads(family, removed):
    model = make(family)
    plan = kept_after(pruning_state(model).geometry, removed)
    ref = zeroed_reference(model, plan)
    inputs = batch(family)
    assert prune_heads(model, removed) is model
    torch.testing.assert_close(logits(model, inputs), logits(ref, inputs), atol=1e-5, rtol=0)
    assert current_plan(model).heads == plan.heads
    state = pruning_state(model)
    assert [state.adapter.num_heads(lay) for lay in state.adapter.layers(model)] == [len(h) for h in plan.heads]
    assert model.config.gradprune["history"][-1] == {
        "method": "prune_heads",
        "heads_to_prune": {str(k): sorted(v) for k, v in sorted(removed.items())},
    }


def test_prune_heads_accumulates_in_original_indices(family):
    model = make(family)
    prune_heads(model, {0: [0]})
    # original head 1 (now at position 0), not the head now at position 1 (original 2)
    prune_heads(model, {0: [1], 2: [3]})
    prune_heads(model, {2: [0, 3]})  # 3 again: no-op for it
    once = make(family)
    prune_heads(once, {0: [0, 1], 2: [0, 3]})
    assert current_plan(model).heads == [[2, 3], [0, 1, 2, 3], [1, 2]]
    assert all_tensors_equal(model, once)
    inputs = batch(family)
    assert torch.equal(logits(model, inputs), logits(once, inputs))


def test_prune_heads_of_gone_heads_is_a_no_op(family):
    model = make(family)
    assert prune_heads(model, {}) is model and type(model) is CLASSES[family]  # nothing named: untouched
    prune_heads(model, {1: [2, 3]})
    record = json.dumps(model.config.gradprune)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prune_heads(model, {1: [3, 2, 2]})
    assert json.dumps(model.config.gradprune) == record
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_prune_heads_keeps_ffn_pruning(family):
    model = make(family)
    g = pruning_state(model).geometry
    neurons = [list(range(0, 96, 2)), list(range(50)), list(range(96))]
    prune_model(model, PruningPlan(g, [list(range(4))] * 3, neurons))
    prune_heads(model, {1: [1]})
    plan = current_plan(model)
    assert plan.neurons == neurons and plan.heads == [[0, 1, 2, 3], [0, 2, 3], [0, 1, 2, 3]]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({3: [0]}, "layer 3, which does not exist: the model has 3 layers"),
        ({0: [1], 1: [4]}, "head 4 of layer 1, which does not exist: each layer has 4 heads"),
        ({0: [-1]}, "head -1 of layer 0"),
        ({0: 1}, "must map to a list of head indices"),
        ({0: [1.0]}, "head 1.0 is not an integer"),
        ([0, 1], "must be a dict"),
    ],
)
def test_prune_heads_refuses_bad_indices_and_leaves_the_model_unchanged(family, bad, message):
    model = make(family)
    prune_heads(model, {2: [0]})
    record = json.dumps(model.config.gradprune)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError, match=message):
        prune_heads(model, bad)
    assert json.dumps(model.config.gradprune) == record
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_prune_heads_save_and_load_pruned_is_bit_exact(tmp_path, family):
    model = make(family)
    prune_heads(model, {0: [1, 2], 1: [0, 1, 2, 3]})
    prune_heads(model, {2: [3]})
    model.save_pretrained(tmp_path / "out")
    loaded = load_pruned(tmp_path / "out")
    assert all_tensors_equal(loaded, model)
    inputs = batch(family)
    assert (logits(loaded, inputs) - logits(model, inputs)).abs().max().item() == 0.0
    assert current_plan(loaded).heads == [[0, 3], [], [0, 1, 2]]
