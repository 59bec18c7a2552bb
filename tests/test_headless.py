"""Layers left without heads or FFN neurons, in every family, as a GPU runs them.

The whole suite runs under ``emulate_cuda_attention`` (conftest.py): SDPA and each family's eager attention raise
when given zero heads, as CUDA's fused kernels return None there. These tests add what the other files do not:
DDP over emptied blocks, a BERT decoder generating through a headless layer, a folder saved before BERT's
empty-block forward existed, and the emulation itself.
"""

from __future__ import annotations

import gc
import json
import socket

import pytest
import torch
import torch.distributed as dist
from conftest import batch, make, tiny_bert_config
from test_llama import make_decoder
from test_llama import uneven_plan as decoder_plan
from transformers import BertLMHeadModel

from hf_gradprune import PruningPlan, load_pruned, prune_model
from hf_gradprune.modeling_gradprune import structure_of
from hf_gradprune.state import pruning_state
from hf_gradprune.testing import ZeroHeadsError


def empty_plan(model):
    """Layer 0 keeps no head, layer 1 no FFN neuron, layer 2 some of each (BERT and GPT-2)."""
    g = pruning_state(model).geometry
    return PruningPlan(g, [[], [1, 3], [0, 2]], [list(range(0, 96, 3)), [], list(range(7, 60))])


def pruned(kind: str, attn: str):
    if kind == "llama":
        model = make_decoder("qwen3", attn=attn)  # Qwen3: its q/k norms are the non-empty parameters left unread
        prune_model(model, decoder_plan(model, zero_layer=0))
    else:
        model = make(kind, attn_implementation=attn)
        prune_model(model, empty_plan(model))
    return model


def test_the_emulation_fails_where_cuda_does():
    q = torch.randn(2, 0, 5, 8)
    with pytest.raises(ZeroHeadsError, match="zero heads"):
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    from transformers.models.bert import modeling_bert

    with pytest.raises(ZeroHeadsError):
        modeling_bert.eager_attention_forward(None, q, q, q, None, scaling=1.0)
    x = torch.randn(2, 3, 5, 8)  # heads present: the real kernel runs
    assert torch.nn.functional.scaled_dot_product_attention(x, x, x).shape == x.shape


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_ddp_trains_a_model_with_emptied_blocks(kind, attn):
    # DDP (no find_unused_parameters) fails on a trainable parameter that gets no gradient, empty ones included
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    model = pruned(kind, attn).train()
    inputs = batch("bert" if kind == "bert" else "gpt2")
    if kind == "llama":
        inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    ddp = None
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        for _ in range(3):  # DDP reports a parameter without gradient at the next iteration
            ddp(**inputs).loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    finally:
        del ddp  # before destroy_process_group (see test_scoring)
        gc.collect()
        dist.destroy_process_group()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_bert_decoder_generates_through_a_headless_layer(attn):
    config = tiny_bert_config(is_decoder=True, pad_token_id=0)
    torch.manual_seed(0)
    model = BertLMHeadModel._from_config(config, attn_implementation=attn).eval()
    prune_model(model, empty_plan(model))
    ids = torch.randint(1, 97, (2, 5))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=True, **kw)
    plain = model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=False, **kw)
    assert torch.equal(cached, plain)  # the headless layer's cache placeholder keeps positions right


def test_a_bert_folder_saved_before_the_empty_block_loads_with_it(tmp_path):
    model = pruned("bert", "sdpa")
    inputs = batch("bert")
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "m")
    # what an earlier hf_gradprune wrote: the headless layer's attention recorded without its empty forward
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    entry = config["gradprune"]["structure"]["encoder.layer.0.attention.self"]
    del entry["empty"]
    path.write_text(json.dumps(config))
    loaded = load_pruned(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)
    assert "empty" in structure_of(loaded)["encoder.layer.0.attention.self"]  # and a save records it
