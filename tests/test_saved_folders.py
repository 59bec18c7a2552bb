"""Folders saved by an earlier hf_gradprune load bit for bit (the format is a promise, whatever the code's layout).

tests/fixtures/saved_* were written by hf_gradprune at commit ac5c2da (tests/fixtures/make_saved_folders.py);
saved_io.safetensors holds each model's inputs and the logits it gave in memory before it was saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_gradprune import check_folder, current_plan, load_pruned
from hf_gradprune.modeling_gradprune import CONFIG_KEY

FIXTURES = Path(__file__).parent / "fixtures"
INFO = json.loads((FIXTURES / "SAVED_FOLDERS_INFO.json").read_text())
IO = load_file(FIXTURES / "saved_io.safetensors")
NAMES = sorted(INFO["plans"])
# The tensors are compared bit for bit. Logits are only close: even on the versions that wrote them, another CPU
# picks other BLAS kernels (an AMD EPYC gives 3.7e-9 off the fixtures' logits), as the floor run's torch does.


def logits_of(model, name):
    with torch.no_grad():
        return model(input_ids=IO[f"{name}.input_ids"], attention_mask=IO[f"{name}.attention_mask"]).logits


def assert_same_logits(got, name):
    torch.testing.assert_close(got, IO[f"{name}.logits"], rtol=1e-5, atol=1e-6)


def test_the_fixtures_cover_every_kind_of_folder():
    heads = {name: INFO["plans"][name]["heads"] for name in NAMES}
    assert [] in heads["saved_bert_headless"] and [] in heads["saved_gpt2_emptied"]
    assert [] in INFO["plans"]["saved_gpt2_emptied"]["neurons"]
    assert not (FIXTURES / "saved_llama_stock" / "modeling_gradprune.py").exists()
    for name in ("saved_bert_headless", "saved_gpt2_emptied", "saved_llama_uneven"):
        assert (FIXTURES / name / "modeling_gradprune.py").exists()
        assert "auto_map" in json.loads((FIXTURES / name / "config.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_a_saved_folder_loads_bit_for_bit(name):
    folder = FIXTURES / name
    check_folder(folder)
    model = load_pruned(folder, attn_implementation="eager").eval()
    # Every tensor the folder holds, bit for bit, and the plan it recorded.
    saved = load_file(folder / "model.safetensors")
    state = model.state_dict()
    for key, tensor in saved.items():
        assert torch.equal(state[key], tensor), key
    plan = current_plan(model)
    assert plan.heads == INFO["plans"][name]["heads"] and plan.neurons == INFO["plans"][name]["neurons"]
    assert_same_logits(logits_of(model, name), name)
    assert getattr(model.config, CONFIG_KEY)["format_version"] == 1


@pytest.mark.parametrize("name", NAMES)
def test_a_saved_folder_runs_with_sdpa(name):
    # Under the CUDA-like SDPA of conftest: no kernel may see zero heads, and the numbers agree with eager.
    model = load_pruned(FIXTURES / name, attn_implementation="sdpa").eval()
    torch.testing.assert_close(logits_of(model, name), IO[f"{name}.logits"], rtol=1e-4, atol=1e-5)


def test_the_stock_folder_needs_no_hf_gradprune():
    name = "saved_llama_stock"
    model = AutoModelForCausalLM.from_pretrained(FIXTURES / name, attn_implementation="eager").eval()
    assert type(model).__name__ == INFO["plans"][name]["class"] == "LlamaForCausalLM"
    assert_same_logits(logits_of(model, name), name)
