"""One reader of saved weights (``checkpoint``). The import structure around it: tests/test_layers.py."""

import json
from pathlib import Path

import pytest
import torch
from conftest import make, uneven_plan

from hf_gradprune import prune_model
from hf_gradprune.folders.checkpoint import CheckpointError, checkpoint_shapes, compare_shapes


def write_bin(state, folder: Path, shards: int) -> None:
    keys = sorted(state)
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[i::shards]}
        torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("form", ["safetensors", "safetensors-sharded", "bin", "bin-sharded", "bin-legacy"])
def test_every_weight_format_gives_the_same_shapes(tmp_path, family, form):
    model = make(family)
    prune_model(model, uneven_plan(model))
    folder = tmp_path / "out"
    model.save_pretrained(folder, max_shard_size="20KB" if form == "safetensors-sharded" else "50GB")
    expected = checkpoint_shapes(folder)
    if form.startswith("bin"):
        state = {k: v.clone() for k, v in model.state_dict().items() if k in expected}
        (folder / "model.safetensors").unlink()
        if form == "bin-legacy":  # before torch 1.6's zip format: cannot be memory-mapped
            torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
        else:
            write_bin(state, folder, shards=3 if form == "bin-sharded" else 1)
    shapes = checkpoint_shapes(folder)
    assert shapes == {k: tuple(v.shape) for k, v in model.state_dict().items() if k in shapes}
    assert len(shapes) == len(expected) and compare_shapes(model, shapes) == ([], [])


def test_the_file_read_is_the_one_from_pretrained_loads(tmp_path):
    # from_pretrained prefers model.safetensors to an index beside it; the reader must look at the same file
    model = make("bert")
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "gone.safetensors"}}))
    assert compare_shapes(model, checkpoint_shapes(tmp_path)) == ([], [])


def test_a_bin_that_is_not_a_state_dict_is_refused(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        checkpoint_shapes(tmp_path)


def test_only_base_model_tensors_count_as_missing():
    model = make("bert")
    shapes = {k: tuple(v.shape) for k, v in model.bert.state_dict().items()}  # an encoder's folder, no prefix
    assert compare_shapes(model, shapes) == ([], [])  # a new classifier head is not missing
    del shapes["encoder.layer.0.output.dense.weight"]
    shapes["pooler.dense.weight"] = (3, 3)
    missing, mismatched = compare_shapes(model, shapes)
    assert missing == ["bert.encoder.layer.0.output.dense.weight"]
    assert mismatched == ["bert.pooler.dense.weight: file (3, 3), expected (64, 64)"]
