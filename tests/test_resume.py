"""A run interrupted at a checkpoint and resumed ends where the uninterrupted run ends: same config.json."""

import json

import pytest
import torch
from trainer_helpers import make_trainer

from hf_gradprune import current_plan, load_pruned

# One-shot prune before training, checkpoints every 10 steps (issue 20, case 1, which resumes at step 20 or 40 of 60).
COMMON = dict(max_steps=30, save_strategy="steps", save_steps=10, scoring_steps=4)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"  # same folder name as the resumed run's: the card's title
    trainer = make_trainer(out, **COMMON)
    trainer.train()
    trainer.save_model(str(out / "final"))
    return out, trainer


def config_of(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize("step", [10, 20])
def test_resumed_run_saves_the_same_config_as_the_uninterrupted_one(uninterrupted, tmp_path, step):
    full_dir, full = uninterrupted
    # The uninterrupted run's checkpoint is what an interrupted run leaves: resume a fresh trainer from it.
    out = tmp_path / "run"
    resumed = make_trainer(out, **COMMON)
    resumed.train(resume_from_checkpoint=str(full_dir / f"checkpoint-{step}"))
    resumed.save_model(str(out / "final"))
    expected, got = config_of(full_dir / "final"), config_of(out / "final")
    (entry,) = expected["gradprune"]["history"]  # the first run's record of its one prune
    assert entry["round"] == 1 and entry["step"] == 0 and entry["schedule"] == "one_shot"
    assert got == expected  # every field, the pruning history included
    # and the later checkpoints too, the model card's source
    assert config_of(out / "checkpoint-30") == config_of(full_dir / "checkpoint-30")
    assert (out / "final" / "README.md").read_text() == (full_dir / "final" / "README.md").read_text()
    a, b = current_plan(full.model), current_plan(load_pruned(out / "final"))
    assert (a.heads, a.neurons, a.meta) == (b.heads, b.neurons, b.meta)
    assert_same_weights(resumed.model, full.model)


def test_resuming_with_an_already_pruned_model_is_refused_before_anything_changes(uninterrupted, tmp_path):
    """The model given stands for the run's start (teacher, the card's "before"): the pruned checkpoint is not it."""
    full_dir, _ = uninterrupted
    model = load_pruned(full_dir / "checkpoint-10")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    resumed = make_trainer(tmp_path, model=model, **COMMON)
    with pytest.raises(
        ValueError, match=r"starting from a model with 0 prune\(s\) recorded, but the model given has 1"
    ):
        resumed.train(resume_from_checkpoint=str(full_dir / "checkpoint-10"))
    assert resumed.teacher is None and resumed.state.global_step == 0
    assert len(model.config.gradprune["history"]) == 1
    assert_same_weights(model, before)


def assert_same_weights(a, b):
    sa, sb = (m if isinstance(m, dict) else m.state_dict() for m in (a, b))
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=1e-4, atol=1e-6, msg=name)
