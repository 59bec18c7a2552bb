"""Issue 23 (folders): the weight-sparsity record, dense-zeros and bitmask folders, and their three reload paths."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import transformers
from conftest import batch, make, uneven_plan
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_llama import batch as llama_batch
from test_llama import make_decoder as make_llama
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_gradprune import PruningPlan, check_folder, load_pruned, modeling_gradprune, prune_model, save_pruned
from hf_gradprune.cli.info import folder_info
from hf_gradprune.cli.main import main
from hf_gradprune.folders.checkpoint import CheckpointError
from hf_gradprune.folders.hub import FolderMismatchError
from hf_gradprune.folders.sparse_format import pack_bitmask
from hf_gradprune.modeling_gradprune import FolderFormatError, read_safetensors, unpack_bitmask
from hf_gradprune.sparsity import WeightMasks, record_weight_sparsity, satisfies_nm, weight_targets
from hf_gradprune.sparsity.record import recorded_weight_sparsity
from hf_gradprune.state import pruning_state

AUTO = {"bert": AutoModelForSequenceClassification, "gpt2": AutoModelForCausalLM, "llama": AutoModelForCausalLM}
INT_OF = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@pytest.fixture(autouse=True)
def _hf_home(tmp_path, monkeypatch):
    # remote code is copied into HF_MODULES_CACHE: keep it inside the test's own folder
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_home" / "modules"))


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bit patterns: equal bits, not equal values (-0.0 differs from 0.0, NaN equals itself)."""
    return t.view(INT_OF[t.dtype]) if t.dtype in INT_OF else t


def same_bits(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    same = (sa[k].dtype == sb[k].dtype and torch.equal(bits(sa[k]), bits(sb[k])) for k in sa)
    return sa.keys() == sb.keys() and all(same)


def load_args(family):
    return {"attn_implementation": "eager"} if family == "llama" else {}  # make_llama's: the same kernels


def inputs_of(family):
    if family == "llama":
        b = llama_batch()
        return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    b = batch(family)
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}


def logits(model, family):
    with torch.no_grad():
        return model(**inputs_of(family)).logits


def sparsify(model, pattern="unstructured", sparsity=0.5, extra=()):
    targets = weight_targets(model, extra)
    scores = {t.name: t.matrix.detach().abs().float() for t in targets}
    WeightMasks.from_scores(targets, scores, sparsity, pattern, "layer").apply_(model)
    record_weight_sparsity(model, targets, pattern=pattern, sparsity=sparsity, method="magnitude", scope="layer")
    return targets


def build(case: str):
    """(family, model): units removed (or not) and then weights zeroed, with a -0.0 kept as a value."""
    family, kind = case.split("-")
    model = make_llama() if family == "llama" else make(family)
    if kind == "hybrid":
        if family == "llama":  # a uniform cut: the config says it all, so the folder is stock
            g = pruning_state(model).geometry
            prune_model(model, PruningPlan(g, [[0, 1, 4, 5]] * 3, [list(range(0, 40, 2))] * 3))
        else:  # uneven, one layer without heads: the folder needs the structure
            prune_model(model, uneven_plan(model, zero_layer=1))
    targets = sparsify(model, "2:4" if family == "llama" else "unstructured")
    with torch.no_grad():  # a kept weight that is -0.0: bit-exact means its sign survives
        w = targets[0].module.weight
        w.view(-1)[int((w.view(-1) != 0).nonzero()[0])] = -0.0
    return family, model


def stock(model) -> bool:
    return not getattr(model.config, modeling_gradprune.CONFIG_KEY).get("structure")


# --------------------------------------------------------------------------- packing
def test_pack_matches_a_hand_computed_example():
    t = torch.tensor([0.0, 1.5, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, -0.0])
    values, packed, negzero = pack_bitmask(t)
    # element i sets bit i % 8 of byte i // 8: elements 1 and 4 in byte 0, 8 in byte 1
    assert packed.tolist() == [(1 << 1) | (1 << 4), 1 << 0] and packed.dtype == torch.uint8
    assert values.tolist() == [1.5, 2.0, 3.0]
    # the zeros are elements 0, 2, 3, 5, 6, 7, 9: the seventh (element 9) is -0.0
    assert negzero.tolist() == [1 << 6]
    assert pack_bitmask(t.abs())[2] is None  # no -0.0: no sign bits stored


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5), (13, 9), (2, 3, 4), (0, 4)])
def test_pack_unpack_round_trip_is_bit_exact(dtype, shape):
    gen = torch.Generator().manual_seed(sum(shape) + len(shape))
    t = torch.randn(shape, generator=gen).to(dtype)
    t[torch.rand(shape, generator=gen) < 0.5] = 0
    flat = t.view(-1)
    if flat.numel() > 3:
        flat[0], flat[1], flat[2] = -0.0, float("nan"), float("-inf")
    values, packed, negzero = pack_bitmask(t)
    assert values.numel() == int((t != 0).sum()) and packed.numel() == math.ceil(t.numel() / 8)
    back = unpack_bitmask(values, packed, list(shape), negzero)
    assert back.dtype == dtype and back.shape == t.shape and torch.equal(bits(back), bits(t))


def test_unpack_refuses_values_and_bits_that_disagree():
    values, packed, negzero = pack_bitmask(torch.tensor([-0.0, 1.0, 2.0, 0.0, 5.0]))
    with pytest.raises(ValueError, match="sets 3 bits for 2 stored values"):
        unpack_bitmask(values[:2], packed, [5], negzero)
    with pytest.raises(ValueError, match="sets bits past its 5 elements"):  # a padding bit past the tensor's end
        unpack_bitmask(values, packed | 0x80, [5], negzero)
    with pytest.raises(ValueError, match="does not cover 17 elements"):
        unpack_bitmask(values, packed, [17], negzero)
    with pytest.raises(ValueError, match="sign bitmask of the zeros sets bits past its 2 elements"):
        unpack_bitmask(values, packed, [5], negzero | 0x04)


def test_the_shipped_reader_reads_what_safetensors_writes(tmp_path):
    tensors = {
        "f32": torch.randn(3, 4),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 3).bfloat16(),
        "u8": torch.arange(7, dtype=torch.uint8),
        "i64": torch.tensor([3, -1]),
        "empty": torch.zeros(0, 3),
    }
    save_file(tensors, tmp_path / "t.safetensors", metadata={"k": "v"})
    got, metadata = read_safetensors(str(tmp_path / "t.safetensors"))
    assert metadata == {"k": "v"} and got.keys() == tensors.keys()
    for k, t in tensors.items():
        assert got[k].dtype == t.dtype and torch.equal(got[k], t), k
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-5])
    with pytest.raises(FolderFormatError, match="not a readable safetensors file"):
        read_safetensors(str(tmp_path / "cut.safetensors"))


# --------------------------------------------------------------------------- the record
def test_a_weight_sparsity_only_model_saves_a_stock_folder(tmp_path):
    model = make("bert")
    sparsify(model)
    assert type(model) is transformers.BertForSequenceClassification  # nothing changed its class
    pruning_state(model)  # a record without geometry is accepted
    save_pruned(model, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "auto_map" not in config and config["architectures"] == ["BertForSequenceClassification"]
    assert not (tmp_path / "out" / "modeling_gradprune.py").exists()
    record = config["gradprune"]
    assert set(record) == {"weight_sparsity", "format_version", "requires"} and record["format_version"] == 1
    assert record["weight_sparsity"]["storage"] == "dense" and record["weight_sparsity"]["pattern"] == "unstructured"
    check_folder(tmp_path / "out")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert same_bits(plain, model)


def edit(folder, change):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config["gradprune"])
    path.write_text(json.dumps(config))


def _set(key, value):
    def change(record):
        record["weight_sparsity"][key] = value

    return change


MALFORMED = [
    (_set("pattern", "__import__('os').system('echo no')"), "pattern is .*not 'unstructured' or 'N:M'"),
    (_set("pattern", "4:2"), "pattern is '4:2'"),
    (_set("pattern", ["2", "4"]), "pattern is"),
    (_set("sparsity", 1.5), "sparsity is 1.5, not a fraction"),
    (_set("sparsity", "0.5"), "sparsity is '0.5'"),
    (_set("sparsity", True), "sparsity is True"),
    (_set("measured", -0.1), "measured is -0.1"),
    (_set("method", 3), "method is 3"),
    (_set("scope", "everything"), "scope is 'everything'"),
    (_set("targets", "bert.encoder"), "targets is 'bert.encoder', not a list"),
    (_set("targets", ["a", "a"]), "distinct"),
    (_set("storage", "zip"), "storage as .zip., not one of dense, bitmask"),
    (lambda r: r["weight_sparsity"].pop("method"), "method is None, not present"),
    (lambda r: r.__setitem__("weight_sparsity", [1, 2]), "weight_sparsity"),
]


@pytest.mark.parametrize("change, message", MALFORMED)
def test_a_malformed_record_is_refused_naming_the_field(tmp_path, change, message):
    model = make("bert")
    sparsify(model)
    save_pruned(model, tmp_path / "out")
    edit(tmp_path / "out", change)
    for read in (check_folder, load_pruned):
        with pytest.raises(FolderFormatError, match=message):
            read(tmp_path / "out")
    with pytest.raises(FolderFormatError, match=message):
        recorded_weight_sparsity(transformers.AutoConfig.from_pretrained(tmp_path / "out"))


def test_a_record_naming_modules_the_model_lacks_is_refused(tmp_path):
    model = make("bert")
    sparsify(model)
    save_pruned(model, tmp_path / "out")
    edit(tmp_path / "out", _set("targets", ["bert.encoder.layer.9.output.dense"]))
    with pytest.raises(FolderMismatchError, match=r"names 1 module\(s\) the model lacks"):
        load_pruned(tmp_path / "out")


def test_bitmask_storage_in_a_format_1_record_is_refused_by_every_reader(tmp_path):
    family, model = build("bert-hybrid")
    save_pruned(model, tmp_path / "out", sparse_format="bitmask")
    edit(tmp_path / "out", lambda r: r.__setitem__("format_version", 1))
    message = "says format 1 but bitmask weights"
    for read in (check_folder, load_pruned):
        with pytest.raises(FolderFormatError, match=message):
            read(tmp_path / "out")
    with pytest.raises(ValueError, match=message):  # the shipped file, as remote code
        AUTO[family].from_pretrained(tmp_path / "out", trust_remote_code=True)


# --------------------------------------------------------------------------- the three reload paths
CASES = ["bert-hybrid", "gpt2-hybrid", "llama-hybrid", "bert-weights", "gpt2-weights"]


@pytest.mark.parametrize("sparse_format", ["dense", "bitmask"])
@pytest.mark.parametrize("case", CASES)
def test_a_sparse_folder_reloads_bit_exactly_on_every_path(tmp_path, case, sparse_format):
    family, model = build(case)
    expected = logits(model, family)
    record = dict(model.config.gradprune)
    save_pruned(model, tmp_path / "out", sparse_format=sparse_format)
    files = set(os.listdir(tmp_path / "out"))
    weights = "model.bitmask.safetensors" if sparse_format == "bitmask" else "model.safetensors"
    assert weights in files and not ({"model.safetensors", "model.bitmask.safetensors"} - {weights}) & files
    check_folder(tmp_path / "out")
    loaders = {
        "load_pruned": lambda: load_pruned(tmp_path / "out", **load_args(family)),
        "remote code": lambda: AUTO[family].from_pretrained(
            tmp_path / "out", trust_remote_code=True, **load_args(family)
        ),
    }
    if sparse_format == "dense" and stock(model):
        loaders["plain"] = lambda: AUTO[family].from_pretrained(tmp_path / "out", **load_args(family))
    for path, load in loaders.items():
        got = load().eval()
        assert same_bits(got, model), path
        assert torch.equal(logits(got, family), expected), path
        assert got.config.gradprune == record, path  # read back as it was in memory: dense, format as before
        assert type(got).__name__ == type(model).__name__, path
        if family == "gpt2":  # Conv1D keeps [in, out]: the masks' layout survived the round trip
            assert [t.in_axis for t in weight_targets(got)] == [0] * len(weight_targets(got))
        if family == "llama":
            assert all(satisfies_nm(t.matrix, 2, 4) for t in weight_targets(got)), path
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    if sparse_format == "bitmask":
        assert config["gradprune"]["format_version"] == 2 and config["gradprune"]["requires"] == "0.2.0"
        assert config["gradprune"]["weight_sparsity"]["storage"] == "bitmask"
        assert config["auto_map"][AUTO[family].__name__].startswith("modeling_gradprune.GradPrune")
        assert "modeling_gradprune.py" in files
    else:
        assert config["gradprune"].get("format_version", 1) == 1


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_plain_from_pretrained_cannot_load_a_bitmask_folder(tmp_path, family):
    _, model = build(f"{family}-weights")
    save_pruned(model, tmp_path / "out", sparse_format="bitmask")
    with pytest.raises(OSError, match="no file named model.safetensors"):
        AUTO[family].from_pretrained(tmp_path / "out")  # auto_map present, but no remote code: the stock class
    with pytest.raises(OSError, match="no file named model.safetensors"):
        type(model).from_pretrained(tmp_path / "out")
    # Even asked for the file by its variant name: each packed weight's values are 1-D, so the shapes refuse it.
    with pytest.raises(Exception, match="(?i)size mismatch|mismatch|shape"):
        type(model).from_pretrained(tmp_path / "out", variant="bitmask")


def test_the_previous_format_reader_refuses_a_bitmask_folder_with_the_message(tmp_path, monkeypatch):
    family, model = build("bert-weights")
    save_pruned(model, tmp_path / "dense")
    save_pruned(model, tmp_path / "packed", sparse_format="bitmask")
    monkeypatch.setattr(modeling_gradprune, "READ_FORMAT_VERSION", 1)  # what the previous release reads
    load_pruned(tmp_path / "dense")  # a dense-zeros folder is format 1: the previous release reads it
    needs = r"this folder needs hf_gradprune >= 0\.2\.0 \(format 2\); .* reads format 1 at most: pip install -U"
    for read in (check_folder, load_pruned):
        with pytest.raises(FolderFormatError, match=needs):
            read(tmp_path / "packed")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_bitmask_folder_keeps_its_dtype(tmp_path, dtype):
    family, model = build("gpt2-hybrid")
    model.to(dtype)
    save_pruned(model, tmp_path / "out", sparse_format="bitmask")
    for got in (load_pruned(tmp_path / "out"), AUTO[family].from_pretrained(tmp_path / "out", trust_remote_code=True)):
        assert got.dtype == dtype and same_bits(got, model)


def test_a_sharded_bitmask_folder_reloads(tmp_path):
    family, model = build("gpt2-hybrid")
    save_pruned(model, tmp_path / "out", sparse_format="bitmask", max_shard_size="40KB")
    files = sorted(os.listdir(tmp_path / "out"))
    shards = [f for f in files if f.startswith("model.bitmask-")]
    assert len(shards) > 1 and "model.safetensors.index.bitmask.json" in files
    assert not any(f.startswith("model-") or f == "model.safetensors.index.json" for f in files)
    check_folder(tmp_path / "out")
    assert same_bits(load_pruned(tmp_path / "out"), model)
    assert same_bits(AUTO[family].from_pretrained(tmp_path / "out", trust_remote_code=True), model)


def test_saving_over_a_folder_switches_formats_and_keeps_other_files(tmp_path):
    family, model = build("bert-weights")
    folder = tmp_path / "out"
    save_pruned(model, folder)
    (folder / "notes.txt").write_text("mine")
    save_pruned(model, folder, sparse_format="bitmask")
    assert not (folder / "model.safetensors").exists() and (folder / "model.bitmask.safetensors").exists()
    assert same_bits(load_pruned(folder), model)
    save_pruned(model, folder)  # back to dense: the packed file goes, plain from_pretrained works again
    assert (folder / "model.safetensors").exists() and not (folder / "model.bitmask.safetensors").exists()
    assert "auto_map" not in json.loads((folder / "config.json").read_text())
    assert same_bits(AUTO[family].from_pretrained(folder), model) and (folder / "notes.txt").read_text() == "mine"


def test_a_model_read_from_a_bitmask_folder_saves_dense_again(tmp_path):
    family, model = build("llama-hybrid")
    save_pruned(model, tmp_path / "packed", sparse_format="bitmask")
    got = load_pruned(tmp_path / "packed")
    got.save_pretrained(tmp_path / "again")  # its own class's save: a stock, dense, format 1 folder
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert "auto_map" not in config and config["gradprune"]["format_version"] == 1
    assert same_bits(AUTO[family].from_pretrained(tmp_path / "again"), model)


def data_bytes(path) -> int:
    """A safetensors file's size less its header (8 bytes of length, then the JSON header)."""
    with open(path, "rb") as f:
        return os.path.getsize(path) - 8 - int.from_bytes(f.read(8), "little")


def test_the_bitmask_folder_is_smaller_by_what_the_packing_saves(tmp_path):
    _, model = build("bert-weights")
    model.half()
    save_pruned(model, tmp_path / "dense")
    save_pruned(model, tmp_path / "packed", sparse_format="bitmask")
    dense = data_bytes(tmp_path / "dense" / "model.safetensors")
    packed = data_bytes(tmp_path / "packed" / "model.bitmask.safetensors")
    targets = weight_targets(model)
    # An independent count: per matrix, 2 bytes per nonzero plus one bit per element (and one per zero when some
    # zeros are -0.0, as a mask multiplied into negative weights leaves them) instead of 2 bytes each.
    saved, cost = 0, 0
    for t in targets:
        w = t.module.weight
        zeros = int((w == 0).sum())
        saved += 2 * zeros
        cost += math.ceil(w.numel() / 8) + (math.ceil(zeros / 8) if torch.signbit(w[w == 0]).any() else 0)
    assert packed == dense - saved + cost
    assert os.path.getsize(tmp_path / "packed" / "model.bitmask.safetensors") < 0.8 * dense
    with safe_open(tmp_path / "packed" / "model.bitmask.safetensors", framework="pt") as f:
        assert set(json.loads(f.metadata()["gradprune_packed"])) == {t.param_name for t in targets}


def test_a_damaged_bitmask_file_is_refused(tmp_path):
    family, model = build("bert-weights")
    save_pruned(model, tmp_path / "out", sparse_format="bitmask")
    path = tmp_path / "out" / "model.bitmask.safetensors"
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    name = next(iter(json.loads(metadata["gradprune_packed"])))
    tensors[f"{name}.bitmask"] = tensors[f"{name}.bitmask"] ^ 1  # one bit flipped: counts no longer agree
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(FolderFormatError, match=f"{name} cannot be restored"):
        load_pruned(tmp_path / "out")
    with pytest.raises(ValueError, match=f"{name} cannot be restored"):
        AUTO[family].from_pretrained(tmp_path / "out", trust_remote_code=True)
    tensors[f"{name}.bitmask"] = tensors[f"{name}.bitmask"][:-1]  # too short for the shape: the header says so
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(CheckpointError, match="do not describe a tensor of shape"):
        check_folder(tmp_path / "out")


def test_bitmask_saves_are_refused_before_anything_is_written(tmp_path):
    model = make("bert")
    with pytest.raises(ValueError, match="sparse_format must be one of dense, bitmask"):
        save_pruned(model, tmp_path / "a", sparse_format="zip")
    with pytest.raises(ValueError, match="has no such record: sparsify it and call record_weight_sparsity"):
        save_pruned(model, tmp_path / "a", sparse_format="bitmask")
    sparsify(model)
    with pytest.raises(ValueError, match="cannot take variant"):
        save_pruned(model, tmp_path / "a", sparse_format="bitmask", variant="fp16")
    assert not (tmp_path / "a").exists()


def test_lm_head_tied_to_the_embeddings_is_packed_under_the_name_saved(tmp_path):
    model = make("gpt2")  # GPT-2 ties lm_head to wte: the file holds wte only
    targets = sparsify(model, extra=("lm_head",))
    assert targets[-1].name == "lm_head"
    save_pruned(model, tmp_path / "out", sparse_format="bitmask")
    with safe_open(tmp_path / "out" / "model.bitmask.safetensors", framework="pt") as f:
        assert "transformer.wte.weight" in json.loads(f.metadata()["gradprune_packed"])
    assert same_bits(load_pruned(tmp_path / "out"), model)


# --------------------------------------------------------------------------- info
@pytest.mark.parametrize("sparse_format", ["dense", "bitmask"])
@pytest.mark.parametrize("case", ["gpt2-hybrid", "bert-weights"])
def test_info_shows_the_weight_sparsity(tmp_path, capsys, case, sparse_format):
    _, model = build(case)
    save_pruned(model, tmp_path / "out", sparse_format=sparse_format)
    info = folder_info(str(tmp_path / "out"))
    ws = info["weight_sparsity"]
    assert ws["pattern"] == "unstructured" and ws["sparsity"] == 0.5 and ws["method"] == "magnitude"
    measured = model.config.gradprune["weight_sparsity"]["measured"]
    assert ws["measured"] == measured and 0.5 <= measured < 0.51  # the -0.0 build() made adds one zero
    assert ws["storage"] == sparse_format and ws["targets"] == len(weight_targets(model))
    assert info["pruned"] is (case == "gpt2-hybrid")
    assert info["stock"] is (case == "bert-weights" and sparse_format == "dense")
    assert main(["info", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert f"weight sparsity: unstructured 50.0% (measured {measured:.1%}) by magnitude, layer scope, over " in text
    assert f"stored {sparse_format}" in text
    assert ("no units removed" in text) is (case == "bert-weights")


def test_info_refuses_a_malformed_record_in_one_line(tmp_path, capsys):
    model = make("bert")
    sparsify(model)
    save_pruned(model, tmp_path / "out")
    edit(tmp_path / "out", _set("sparsity", 2))
    capsys.readouterr()  # the save's progress bars
    assert main(["info", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "weight_sparsity.sparsity is 2, not a fraction in [0, 1)" in err and len(err.splitlines()) == 1
