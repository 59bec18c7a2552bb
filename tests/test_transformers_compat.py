"""transformers_compat: the Trainer's loss scaling under the rule of each supported transformers release."""

from __future__ import annotations

import pytest
import torch
import transformers
from packaging.version import Version
from trainer_helpers import ParityData, make_trainer

from hf_gradprune import Scores, transformers_compat


def test_the_flag_is_read_from_the_installed_release():
    # 5.17 and 5.18 have no Trainer.loss_is_scaled_for_ga; 5.19 added it (pyproject's floor is 5.17)
    assert transformers_compat.HAS_LOSS_SCALE_FLAG == (Version(transformers.__version__) >= Version("5.19"))
    assert Version(transformers.__version__) >= Version("5.17")


def _mean_cross_entropy(outputs, labels, num_items_in_batch=None):
    return torch.nn.functional.cross_entropy(outputs.logits, labels)


@pytest.mark.parametrize("flag", [True, False], ids=["release-with-flag", "release-without-flag"])
def test_scores_with_a_compute_loss_func_do_not_depend_on_accumulation(tmp_path, monkeypatch, flag):
    # Under 5.17's rule the Trainer does not divide a compute_loss_func's loss by the accumulation steps: the
    # trainer must divide the per-micro-batch mean itself, or every score doubles at accumulation 2.
    if flag and not transformers_compat.HAS_LOSS_SCALE_FLAG:
        pytest.skip("this transformers release has no loss_is_scaled_for_ga")
    monkeypatch.setattr(transformers_compat, "HAS_LOSS_SCALE_FLAG", flag)

    def scores_for(batch, accumulation, out):
        trainer = make_trainer(
            out,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            prune_step=2,
            scoring_steps=32 // batch,
            max_steps=3,
            learning_rate=0.0,
            distill_alpha=0.0,
            data=ParityData(n=64),
            compute_loss_func=_mean_cross_entropy,
        )
        trainer.train()
        return Scores.load(out / "pruning" / "round-1-step-2" / "scores.safetensors")

    ref = scores_for(16, 1, tmp_path / "ref")
    other = scores_for(8, 2, tmp_path / "other")
    assert ref.num_examples == other.num_examples == 32
    for a, b in zip(ref.heads + ref.neurons, other.heads + other.neurons):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)


def test_a_users_loss_scale_setting_survives_the_scored_steps(tmp_path):
    if not transformers_compat.HAS_LOSS_SCALE_FLAG:
        pytest.skip("this transformers release has no loss_is_scaled_for_ga")
    trainer = make_trainer(tmp_path, prune_step=2, scoring_steps=2, max_steps=4, ffn_sparsity=None)
    trainer.loss_is_scaled_for_ga = True
    trainer.train()
    assert trainer.loss_is_scaled_for_ga is True  # put back after the scored (and distilled) steps
