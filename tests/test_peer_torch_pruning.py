"""The Torch-Pruning peer of the quality benchmark (benchmarks/quality/peer_torch_pruning.py), on a tiny BERT.

Torch-Pruning is optional (not a dependency of the package, not installed in CI): without it this module skips.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torch_pruning")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # as tests/test_benchmarks.py

from conftest import batch, make_bert  # noqa: E402
from quality import peer_torch_pruning as peer  # noqa: E402

from hf_gradprune import (  # noqa: E402
    GradPruneConfig,
    GradPruneTrainer,
    PruningPlan,
    current_plan,
    load_pruned,
    prune_model,
    save_pruned,
)

KEYS = {"pruned", "why", "heads_kept", "ffn_kept", "block_flops_removed", "torch_pruning_version"}
SEQ = 12


def _batches():
    return [batch("bert", seed=s) for s in (1, 2)]


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_prunes_heads_and_ffn_to_the_flops_target():
    model, dense = make_bert(), make_bert()
    before = _n_params(model)
    inputs = {k: v for k, v in batch("bert", seed=5).items() if k != "labels"}

    pruned, info = peer.prune_with_torch_pruning(model, _batches(), 0.4, SEQ)

    assert pruned is model
    assert KEYS <= set(info)
    assert info["pruned"] == "heads+ffn", info["why"]
    assert "1.6.1" in info["torch_pruning_version"]
    assert abs(info["block_flops_removed"] - 0.4) <= 0.05
    assert sum(info["heads_kept"]) < 3 * 4 and sum(info["ffn_kept"]) < 3 * 96
    assert _n_params(pruned) < before == info["params_before"]
    for layer, heads, width in zip(pruned.bert.encoder.layer, info["heads_kept"], info["ffn_kept"]):
        attn = layer.attention.self
        assert attn.num_attention_heads == heads and attn.all_head_size == heads * 16 == attn.query.out_features
        assert layer.intermediate.dense.out_features == width == layer.output.dense.in_features
        assert layer.attention.output.dense.out_features == 64 == layer.output.dense.out_features  # residual kept
    assert pruned.bert.embeddings.word_embeddings.weight.shape == (97, 64)
    assert pruned.bert.pooler.dense.weight.shape == (64, 64) and pruned.classifier.weight.shape == (3, 64)
    assert all(p.grad is None for p in pruned.parameters())

    with torch.no_grad():
        logits = pruned(**inputs).logits
        assert logits.shape == (4, 3) and torch.isfinite(logits).all()
        # The same network as hf_gradprune's surgery keeping the units Torch-Pruning kept.
        reference = prune_model(dense, PruningPlan.from_dict(info["plan"]))
        torch.testing.assert_close(logits, reference(**inputs).logits, rtol=1e-5, atol=1e-5)
    plan = PruningPlan.from_dict(info["plan"])
    assert plan.flops_removed(SEQ) == pytest.approx(info["block_flops_removed"])


def test_falls_back_to_ffn_only_and_says_why(monkeypatch):
    real_prune = peer._prune

    def heads_fail(model, example, geometry, ratios, heads, expect):
        if heads:
            raise peer.PeerPruningError("simulated head-pruning failure")
        return real_prune(model, example, geometry, ratios, heads, expect)

    monkeypatch.setattr(peer, "_prune", heads_fail)
    model = make_bert()
    pruned, info = peer.prune_with_torch_pruning(model, _batches(), 0.2, SEQ)

    assert info["pruned"] == "ffn only"
    assert "PeerPruningError: simulated head-pruning failure" in info["why"]
    assert info["heads_kept"] == [4, 4, 4] and sum(info["ffn_kept"]) < 3 * 96
    assert abs(info["block_flops_removed"] - 0.2) <= 0.05
    with torch.no_grad():
        assert pruned(**{k: v for k, v in batch("bert").items() if k != "labels"}).logits.shape == (4, 3)


def test_pruned_model_takes_hf_gradprune_recovery(tmp_path):
    """The plan is recorded in the config, so the benchmark's recovery (GradPruneTrainer with distillation) runs."""
    from trainer_helpers import ParityData

    model, dense = make_bert(), make_bert()
    pruned, info = peer.prune_with_torch_pruning(model, _batches(), 0.5, SEQ)
    assert current_plan(pruned).heads == info["plan"]["heads"]
    assert current_plan(pruned).neurons == info["plan"]["neurons"]

    args = GradPruneConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,
        pruning_schedule="none",
        distill_alpha=0.5,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = GradPruneTrainer(model=pruned, args=args, train_dataset=ParityData(n=16), teacher_model=dense)
    trainer.train()
    assert [layer.intermediate.dense.out_features for layer in trainer.model.bert.encoder.layer] == info["ffn_kept"]

    save_pruned(pruned, tmp_path / "peer")
    reloaded = load_pruned(tmp_path / "peer").eval()
    inputs = {k: v for k, v in batch("bert", seed=5).items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, pruned.eval()(**inputs).logits)
