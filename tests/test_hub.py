import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from conftest import CUDA_LIKE_SDPA, batch, make, tiny_bert_config, uneven_plan
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
)

from hf_gradprune import FolderMismatchError, PruningPlan, check_folder, load_pruned, prune_model, save_pruned
from hf_gradprune.folders.checkpoint import CheckpointError
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
        {{CUDA_LIKE_SDPA}}
        io = torch.load({str(tmp_path / "io.pt")!r})
        m = transformers.{AUTO[family].__name__}.from_pretrained({str(tmp_path / "out")!r}, trust_remote_code=True)
        m.eval()
        with torch.no_grad():
            out = m(input_ids=io["inputs"]["input_ids"], attention_mask=io["inputs"]["attention_mask"]).logits
        diff = (out - io["expected"]).abs().max().item()
        assert not any(k.startswith("hf_gradprune") for k in sys.modules), "hf_gradprune was imported"
        print("MAXDIFF", diff)
        """
    ).replace("{CUDA_LIKE_SDPA}", CUDA_LIKE_SDPA)
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


# ---------------------------------------------------------------------- folders that must not load
def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def saved(tmp_path, family, name="out", zero_layer=0, seed=0):
    model = make(family, seed=seed)
    prune_model(model, uneven_plan(model, zero_layer=zero_layer))
    model.save_pretrained(tmp_path / name)
    return model, tmp_path / name


GONE = {"bert": "bert.encoder.layer.1.attention.self.query.weight", "gpt2": "transformer.h.1.attn.c_attn.weight"}


def saved_without_one_tensor(tmp_path, family):
    _, out = saved(tmp_path, family)
    state = load_file(out / "model.safetensors")
    del state[GONE[family]]
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_a_missing_base_model_tensor_is_refused(tmp_path, family):
    out = saved_without_one_tensor(tmp_path, family)
    for call in (check_folder, load_pruned):
        with pytest.raises(
            FolderMismatchError, match=r"lack 1 tensor\(s\) of the model.*" + GONE[family].split(".", 1)[1]
        ):
            call(out)


def test_remote_code_refuses_a_missing_tensor_instead_of_random_weights(tmp_path, family):
    # trust_remote_code runs no check_folder: the shipped class itself must refuse to fill the gap at random.
    out = saved_without_one_tensor(tmp_path, family)
    with pytest.raises(ValueError, match=r"lack 1 tensor\(s\) of the pruned model.*initialised at random"):
        AUTO[family].from_pretrained(out, trust_remote_code=True)


def test_a_folder_without_weights_is_refused(tmp_path):
    _, out = saved(tmp_path, "bert")
    (out / "model.safetensors").unlink()
    for call in (check_folder, load_pruned):
        with pytest.raises(CheckpointError, match="has no weights"):
            call(out)


def test_pytorch_bin_weights_are_read_and_checked(tmp_path, family):
    model, out = saved(tmp_path, family)
    other, _ = saved(tmp_path, family, name="other", zero_layer=1)
    (out / "model.safetensors").unlink()
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    check_folder(out)
    assert all_tensors_equal(load_pruned(out), model)
    torch.save(other.state_dict(), out / "pytorch_model.bin")
    for call in (check_folder, load_pruned):
        with pytest.raises(FolderMismatchError, match="do not match the pruning plan"):
            call(out)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda out: _truncate(out / "model.safetensors"), "model.safetensors cannot be read.*truncated or corrupt"),
        (
            lambda out: (
                torch.save(load_file(out / "model.safetensors"), out / "pytorch_model.bin"),
                (out / "model.safetensors").unlink(),
                _truncate(out / "pytorch_model.bin"),
            ),
            "pytorch_model.bin cannot be read.*truncated or corrupt",
        ),
        (
            lambda out: (
                (out / "model.safetensors.index.json").write_text(
                    json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors"}})
                )
                and (out / "model.safetensors").unlink()
            ),
            "lists 1 shard\\(s\\) that the folder lacks, e.g. model-00001-of-00002.safetensors",
        ),
        (
            lambda out: (
                (out / "model.safetensors.index.json").write_text("{not json") and (out / "model.safetensors").unlink()
            ),
            "model.safetensors.index.json is not a valid weight index",
        ),
    ],
    ids=["truncated-safetensors", "truncated-bin", "index-without-shard", "index-not-json"],
)
def test_unreadable_weights_are_a_clear_error(tmp_path, damage, message):
    _, out = saved(tmp_path, "bert")
    damage(out)
    for call in (check_folder, load_pruned):
        with pytest.raises(CheckpointError, match=message):
            call(out)


# ---------------------------------------------------------------------- atomic saves
SAVES = {
    "save_pretrained": lambda model, folder, **kw: model.save_pretrained(folder, **kw),
    "save_pruned": lambda model, folder, **kw: save_pruned(model, folder, **kw),
}
# What a Trainer checkpoint or a user keeps beside the model; no save may touch them.
OTHER_FILES = {
    "optimizer.pt": b"adam state",
    "scheduler.pt": b"schedule",
    "rng_state.pth": b"rng",
    "trainer_state.json": b"{}",
    "training_args.bin": b"args",
    "gradprune_partial_scores_rank0.safetensors": b"partial",
    "model.fp16.safetensors": b"a variant the user keeps",
    "notes/README.md": b"mine",
}


def put_other_files(folder):
    for name, data in OTHER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def no_temporary_folders(*folders):
    return not [p for folder in folders for p in folder.iterdir() if ".saving-" in p.name]


@pytest.mark.parametrize("save", list(SAVES))
@pytest.mark.parametrize(
    "first, second", [("20KB", "50GB"), ("50GB", "20KB")], ids=["sharded-to-single", "single-to-sharded"]
)
def test_a_save_over_a_previous_one_replaces_its_weights_and_keeps_other_files(tmp_path, family, save, first, second):
    old, out = make(family, seed=1), tmp_path / "out"
    prune_model(old, uneven_plan(old, zero_layer=1))
    SAVES[save](old, out, max_shard_size=first)
    torch.save(old.state_dict(), out / "pytorch_model.bin")  # an old .bin too: it must not outlive the save
    put_other_files(out)
    new, _ = saved(tmp_path, family, name="reference")
    SAVES[save](new, out, max_shard_size=second)

    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    weights = {f for f in files if f.endswith((".safetensors", ".bin", ".index.json"))} - set(OTHER_FILES)
    if second == "50GB":
        assert weights == {"model.safetensors"}
    else:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert weights == {"model.safetensors.index.json", *index["weight_map"].values()} and len(weights) > 2
    assert {k: v for k, v in snapshot(out).items() if k in OTHER_FILES} == OTHER_FILES
    assert no_temporary_folders(tmp_path, out)
    check_folder(out)
    for loaded in (load_pruned(out), AUTO[family].from_pretrained(out, trust_remote_code=True)):
        assert all_tensors_equal(loaded, new)


class DiskFull(OSError):
    pass


def fail_after_half(monkeypatch):
    """Make every safetensors write leave half a file, then fail as a full disk would."""

    def write(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        _truncate(Path(filename))
        raise DiskFull(28, "No space left on device")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", write)


real_save_file = save_file


@pytest.mark.parametrize("save", list(SAVES))
def test_a_save_that_fails_midway_leaves_the_previous_folder_whole(tmp_path, family, monkeypatch, save):
    old, out = saved(tmp_path, family, zero_layer=1)
    put_other_files(out)
    before = snapshot(out)
    new = make(family, seed=3)
    prune_model(new, uneven_plan(new, zero_layer=2))
    fail_after_half(monkeypatch)
    with pytest.raises(DiskFull):
        SAVES[save](new, out)
    with pytest.raises(DiskFull):
        SAVES[save](new, tmp_path / "fresh")
    assert snapshot(out) == before
    assert not (tmp_path / "fresh").exists() and no_temporary_folders(tmp_path, out)
    monkeypatch.undo()
    assert all_tensors_equal(load_pruned(out), old)


def test_save_pruned_with_a_failing_tokenizer_leaves_the_previous_folder_whole(tmp_path):
    _, out = saved(tmp_path, "bert", zero_layer=1)
    before = snapshot(out)

    class BrokenTokenizer:
        def save_pretrained(self, folder):
            (Path(folder) / "tokenizer.json").write_text("{")
            raise OSError("disk full")

    model = make("bert", seed=2)
    prune_model(model, uneven_plan(model))
    with pytest.raises(OSError, match="disk full"):
        save_pruned(model, out, tokenizer=BrokenTokenizer())
    assert snapshot(out) == before and no_temporary_folders(tmp_path, out)


def test_a_new_folder_appears_whole_with_the_usual_permissions(tmp_path):
    model, out = saved(tmp_path, "bert", name="a/b/out")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert no_temporary_folders(tmp_path / "a" / "b")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        save_pruned(model, out / "config.json")


def test_a_masked_lm_folder_reads_as_another_head_with_new_parts_initialised(tmp_path):
    # the pooler and classifier a classifier adds are new, not missing; the encoder's tensors must all be there
    torch.manual_seed(0)
    mlm = BertForMaskedLM(tiny_bert_config())
    prune_model(mlm, uneven_plan(mlm))
    mlm.save_pretrained(tmp_path / "mlm")
    for cls in (BertForSequenceClassification, BertModel):
        check_folder(tmp_path / "mlm", cls)
        loaded = load_pruned(tmp_path / "mlm", model_class=cls)
        encoder = loaded if cls is BertModel else loaded.bert
        state = mlm.bert.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in encoder.state_dict().items() if not k.startswith("pooler"))
    state = load_file(tmp_path / "mlm" / "model.safetensors")
    del state["bert.encoder.layer.2.output.dense.weight"]
    save_file(state, tmp_path / "mlm" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FolderMismatchError, match=r"lack 1 tensor\(s\).*layer.2.output.dense.weight"):
        load_pruned(tmp_path / "mlm", model_class=BertForSequenceClassification)


def test_files_named_like_weights_but_not_transformers_own_are_kept(tmp_path):
    # transformers never writes model.bin or pytorch_model.safetensors: such files belong to someone else.
    out = tmp_path / "out"
    out.mkdir()
    for name in ("model.bin", "pytorch_model.safetensors", "model.onnx"):
        (out / name).write_text("user data")
    model = make("bert")
    prune_model(model, uneven_plan(model))
    save_pruned(model, out)
    for name in ("model.bin", "pytorch_model.safetensors", "model.onnx"):
        assert (out / name).read_text() == "user data"
    assert all_tensors_equal(load_pruned(out), model)


def test_a_folder_saved_with_a_variant_is_checked_and_loads_with_that_variant(tmp_path, family):
    model = make(family)
    prune_model(model, uneven_plan(model))
    model.save_pretrained(tmp_path / "out", variant="fp16")
    assert (tmp_path / "out" / "model.fp16.safetensors").is_file()
    check_folder(tmp_path / "out", variant="fp16")
    assert all_tensors_equal(load_pruned(tmp_path / "out", variant="fp16"), model)
    with pytest.raises(CheckpointError, match="no model.safetensors"):  # the default variant is not there
        load_pruned(tmp_path / "out")
