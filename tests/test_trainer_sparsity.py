"""Gradual weight sparsity inside GradPruneTrainer: masks kept through optimizer steps (weights and Adam moments),
the cubic schedule's exact counts (unstructured, 2:4, 4:8), re-scoring at each update, resume, DDP, hybrid
save and reload, and every bad option refused before training."""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_bert
from trainer_helpers import ParityData, make_trainer

from hf_gradprune import GradPruneConfig, current_plan, load_pruned
from hf_gradprune.sparsity import WeightScorer, recorded_weight_sparsity, satisfies_nm, weight_targets
from hf_gradprune.training import gradual

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# weight sparsity alone: no heads or neurons removed
WEIGHTS_ONLY = dict(head_sparsity=None, ffn_sparsity=None, per_device_train_batch_size=8, logging_steps=100)


def sparse_trainer(out, **overrides):
    config = dict(WEIGHTS_ONLY, max_steps=12, weight_sparsity=0.5, weight_method="magnitude", sparsity_update_steps=3)
    config.update(overrides)
    return make_trainer(out, **config)


def cubic(step, start, end, final):
    """Zhu & Gupta's ramp, written out again: s_f * (1 - (1 - (t - t0) / (t1 - t0)) ** 3)."""
    return final * (1 - (1 - (step - start) / (end - start)) ** 3)


def adam_state(trainer, param):
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return inner.state[param]


class Snapshot:
    """A callback that copies the targets' weights after the optimizer step of ``step``."""

    def __init__(self, step):
        from transformers import TrainerCallback

        outer = self

        class _CB(TrainerCallback):
            def on_optimizer_step(self, args, state, control, model=None, **kw):
                if state.global_step == step:
                    outer.weights = {t.param_name: t.module.weight.detach().clone() for t in weight_targets(model)}

        self.callback = _CB()
        self.weights = None


# ---------------------------------------------------------------------------------------------- masks held
def test_pruned_weights_and_their_adam_moments_stay_zero_while_kept_weights_train(tmp_path):
    snap = Snapshot(step=6)  # the optimizer step of the last update's step (the ramp ends at 6)
    trainer = sparse_trainer(tmp_path, sparsity_end_step=6, callbacks=[snap.callback], weight_decay=0.1)
    trainer.train()
    masks = trainer._sparsity.masks.masks
    moved = 0
    for t in weight_targets(trainer.model):
        w, keep = t.module.weight.detach(), masks[t.param_name]
        assert torch.equal(w == 0, ~keep), t.name  # exactly the pruned weights are zero
        state = adam_state(trainer, t.module.weight)
        assert int(state["step"]) == 12
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key][~keep].abs().max() == 0, (t.name, key)
            assert state[key][keep].abs().max() > 0, (t.name, key)
        moved += int((w[keep] != snap.weights[t.param_name][keep]).sum())
        assert (snap.weights[t.param_name][~keep] == 0).all()
    assert moved > 0.9 * sum(int(m.sum()) for m in masks.values())  # the kept weights kept training


def test_without_the_masks_enforced_pruned_weights_revive(tmp_path, monkeypatch):
    """The check above can fail: with the per-step enforcement and gradient zeroing removed, Adam revives them."""
    monkeypatch.setattr(gradual.SparsityCallback, "on_optimizer_step", lambda self, *a, **k: None)
    monkeypatch.setattr(gradual.GradualSparsity, "after_micro_batch", lambda self: None)
    trainer = sparse_trainer(tmp_path, sparsity_end_step=6)
    trainer.train()
    masks = trainer._sparsity.masks.masks
    revived = sum(int((t.module.weight[~masks[t.param_name]] != 0).sum()) for t in weight_targets(trainer.model))
    assert revived > 0


# ---------------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize(
    "pattern,scope,sparsity",
    [("unstructured", "global", 0.7), ("unstructured", "layer", 0.5), ("unstructured", "row", 0.5), ("2:4", "", None)]
    + [("4:8", "", None)],
)
def test_the_ramp_ends_at_exactly_the_target(tmp_path, pattern, scope, sparsity):
    extra = {"sparsity_scope": scope} if scope else {}
    trainer = sparse_trainer(tmp_path, weight_sparsity=sparsity, sparsity_pattern=pattern, sparsity_end_step=9, **extra)
    schedule = trainer.args.sparsity_schedule(12)
    assert [s for s, _ in schedule] == [3, 6, 9]
    trainer.train()
    targets = weight_targets(trainer.model)
    total = sum(t.module.weight.numel() for t in targets)
    zeros = sum(int((t.module.weight == 0).sum()) for t in targets)
    updates = [e for e in trainer.state.log_history if "sparsity/update" in e]
    assert [e["step"] for e in updates] == [3, 6, 9]
    if pattern == "unstructured":
        assert zeros == round(sparsity * total)
        for t in targets:
            w = t.matrix
            if scope == "layer":
                assert int((w == 0).sum()) == round(sparsity * w.numel()), t.name
            if scope == "row":
                assert ((w == 0).sum(1) == round(sparsity * w.shape[1])).all(), t.name
        # each update's count follows the cubic ramp, written out independently (one count: global)
        for e in updates if scope == "global" else []:
            expected = round(cubic(e["step"], 0, 9, sparsity) * total) / total
            assert abs(e["sparsity/weights"] - expected) < 1e-6, e
    else:
        n, m = map(int, pattern.split(":"))
        assert zeros == total * (m - n) // m
        for t in targets:
            assert satisfies_nm(t.matrix, n, m), t.name
            groups = (t.matrix.reshape(t.matrix.shape[0], -1, m) == 0).sum(-1)
            assert (groups == m - n).all(), t.name
        # the ramp passes through fewer zeros per group first (2:4: 1 then 2 of every 4)
        assert updates[0]["sparsity/weights"] == round(cubic(3, 0, 9, (m - n) / m) * m) / m
    record = recorded_weight_sparsity(trainer.model.config)
    assert record["pattern"] == pattern and record["measured"] == round(zeros / total, 6)


def test_achieved_sparsity_is_in_the_train_metrics_and_the_log(tmp_path):
    trainer = sparse_trainer(tmp_path, sparsity_end_step=6)
    metrics = trainer.train().metrics
    assert metrics["train_weight_sparsity"] == 0.5
    assert trainer.state.log_history[-1]["sparsity/achieved"] == 0.5


# ---------------------------------------------------------------------------------------------- re-scoring
def test_masks_are_taken_from_fresh_scores_at_every_update_and_only_grow(tmp_path, monkeypatch):
    """Scores replaced by known random ones at each update: the masks are the lowest of each update's scores
    among the weights still kept (computed here again with numpy-free plain sorting)."""
    given = []
    seen_batches = []
    real_scores = WeightScorer.scores

    def fake_scores(self):
        real_scores(self)  # still checks that the scorer saw data
        seen_batches.append(self.batches)
        gen = torch.Generator().manual_seed(len(given))
        out = {t.name: torch.rand(t.matrix.shape, generator=gen) for t in self.targets}
        given.append(out)
        return out

    monkeypatch.setattr(WeightScorer, "scores", fake_scores)
    recorded = []
    real_update = gradual.GradualSparsity.update

    def spy(self, sparsity):
        real_update(self, sparsity)
        recorded.append({n: m.clone() for n, m in self.masks.masks.items()})

    monkeypatch.setattr(gradual.GradualSparsity, "update", spy)
    trainer = sparse_trainer(
        tmp_path, weight_method="taylor", scoring_steps=2, sparsity_end_step=9, weight_sparsity=0.6
    )
    trainer.train()
    assert len(given) == 3 and seen_batches == [2, 2, 2]  # a window of scoring_steps batches before each update
    targets = weight_targets(trainer.model)
    total = sum(t.module.weight.numel() for t in targets)
    pruned = set()  # (target index, flat index)
    for update, (scores, masks) in enumerate(zip(given, recorded)):
        k = round(cubic(3 * (update + 1), 0, 9, 0.6) * total)
        ranked = sorted(
            (float(v), i, j) for i, t in enumerate(targets) for j, v in enumerate(scores[t.name].reshape(-1))
        )
        fresh = [(i, j) for _, i, j in ranked if (i, j) not in pruned][: k - len(pruned)]
        pruned |= set(fresh)
        for i, t in enumerate(targets):
            keep = masks[t.param_name]
            keep = keep if t.in_axis == 1 else keep.t()
            expected = torch.ones(t.matrix.numel(), dtype=torch.bool)
            expected[[j for (a, j) in pruned if a == i]] = False
            assert torch.equal(keep.reshape(-1), expected), (update, t.name)
    assert any(not torch.equal(recorded[0][n], recorded[1][n]) for n in recorded[0])


# ---------------------------------------------------------------------------------------------- resume
RESUME = dict(
    max_steps=16,
    weight_method="taylor",
    scoring_steps=3,
    sparsity_update_steps=4,
    sparsity_end_step=12,
    weight_sparsity=0.6,
    save_strategy="steps",
    save_steps=6,  # checkpoint-6: after the first update (4), inside the second's scoring window (5..7)
    distill_alpha=0.5,
)


def test_a_resumed_run_ends_with_the_masks_and_weights_of_the_uninterrupted_one(tmp_path):
    full_dir = tmp_path / "full" / "run"
    full = sparse_trainer(full_dir, **RESUME)
    full.train()
    checkpoint = full_dir / "checkpoint-6"
    assert (checkpoint / gradual.SPARSITY_STATE_FILE).exists()
    assert (checkpoint / gradual.SPARSITY_SCORER_FILE.format(rank=0)).exists()  # a partial window: 1 batch
    out = tmp_path / "resumed" / "run"
    # an interrupted run resumes in its own output_dir, which holds the teacher frozen at the first update
    shutil.copytree(full_dir / "_gradprune_teacher", out / "_gradprune_teacher")
    resumed = sparse_trainer(out, **RESUME)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a, b = full._sparsity, resumed._sparsity
    assert a.updates_done == b.updates_done == 3 and a.masks.equal(b.masks)
    for name, p in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], p, rtol=1e-4, atol=1e-6, msg=name)
    assert resumed.teacher is not None


def test_resume_without_the_scorer_state_scores_differently(tmp_path):
    """The resume test can fail: drop the checkpoint's partial scores and the second update's masks change."""
    full_dir = tmp_path / "full" / "run"
    full = sparse_trainer(full_dir, **RESUME)
    full.train()
    checkpoint = full_dir / "checkpoint-6"
    (checkpoint / gradual.SPARSITY_SCORER_FILE.format(rank=0)).unlink()
    out = tmp_path / "resumed" / "run"
    shutil.copytree(full_dir / "_gradprune_teacher", out / "_gradprune_teacher")
    resumed = sparse_trainer(out, **RESUME)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert not full._sparsity.masks.equal(resumed._sparsity.masks)


# ---------------------------------------------------------------------------------------------- DDP
def test_two_processes_hold_identical_masks_and_agree_with_one(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    script = str(HERE / "ddp_sparsity_script.py")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--main_process_port", port, script, str(tmp_path / "two"), "4"]
    result = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    result = subprocess.run(
        [sys.executable, script, str(tmp_path / "one"), "8"], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    one = torch.load(tmp_path / "one" / "rank0.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2 and one["world"] == 1
    assert r0["updates"] == r1["updates"] == one["updates"] == 3
    for name, mask in r0["masks"].items():
        assert torch.equal(mask, r1["masks"][name]), name  # the same masks on every process
        assert torch.equal(r0["weights"][name] == 0, ~mask) and torch.equal(r0["weights"][name], r1["weights"][name])
    # wanda sums squared inputs over every process's tokens: two processes of 4 score what one of 8 does
    agree = sum(int((m == one["masks"][n]).sum()) for n, m in r0["masks"].items())
    total = sum(m.numel() for m in r0["masks"].values())
    assert agree / total > 0.999, agree / total


# ---------------------------------------------------------------------------------------------- hybrid
def test_hybrid_removes_units_then_sparsifies_and_saves_and_reloads_bit_exactly(tmp_path):
    trainer = make_trainer(
        tmp_path,
        max_steps=10,
        per_device_train_batch_size=8,
        head_sparsity=0.5,
        ffn_sparsity=0.5,
        ffn_multiple_of=8,
        prune_step=0,
        sparsity_pattern="2:4",
        weight_method="wanda",
        sparsity_update_steps=2,
        sparsity_end_step=6,
        scoring_steps=2,
    )
    trainer.train()
    plan = current_plan(trainer.model)
    assert plan.num_heads == 6 and plan.num_neurons < 3 * 96
    folder = tmp_path / "final"
    trainer.save_model(str(folder))
    loaded = load_pruned(folder)
    saved = trainer.model.state_dict()
    assert loaded.state_dict().keys() == saved.keys()
    for name, p in loaded.state_dict().items():
        assert torch.equal(p, saved[name]), name  # bit-exact
    for t in weight_targets(loaded):
        assert satisfies_nm(t.matrix, 2, 4) and int((t.matrix == 0).sum()) == t.matrix.numel() // 2, t.name
    config = json.loads((folder / "config.json").read_text())["gradprune"]
    assert config["weight_sparsity"]["pattern"] == "2:4" and config["weight_sparsity"]["measured"] == 0.5
    assert config["weight_sparsity"]["method"] == "wanda" and config["history"][0]["round"] == 1
    assert current_plan(loaded).heads == plan.heads
    # distilled from the dense teacher taken before the unit prune
    assert trainer.teacher is not None and sum(p.numel() for p in trainer.teacher.parameters()) > sum(
        p.numel() for p in trainer.model.parameters()
    )
    assert any("distill_loss" in e for e in trainer.state.log_history)


# ---------------------------------------------------------------------------------------------- validation
BAD = [
    (dict(weight_sparsity=1.0), r"weight_sparsity must be a fraction in \[0, 1\)"),
    (dict(weight_sparsity=-0.1), "weight_sparsity must be a fraction"),
    (dict(weight_sparsity="half"), "weight_sparsity must be a fraction"),
    (dict(sparsity_pattern="2-4"), "sparsity_pattern must be 'unstructured' or 'N:M'"),
    (dict(sparsity_pattern="4:2"), "sparsity_pattern must be"),
    (dict(sparsity_pattern="2:4", weight_sparsity=0.7), "weight_sparsity must be 0.5"),
    (dict(weight_sparsity=0.5, weight_method="snip"), "weight_method must be one of"),
    (dict(weight_sparsity=0.5, sparsity_scope="block"), "sparsity_scope must be one of"),
    (dict(weight_sparsity=0.5, sparsity_update_steps=0), "sparsity_update_steps must be an integer >= 1"),
    (dict(weight_sparsity=0.5, sparsity_update_steps=2.5), "sparsity_update_steps must be an integer"),
    (dict(weight_sparsity=0.5, sparsity_start_step=-1), "sparsity_start_step must be an optimizer step"),
    (dict(weight_sparsity=0.5, sparsity_end_step=2.5), "a step is a whole number"),
    (dict(weight_sparsity=0.5, sparsity_start_step=8, sparsity_end_step=4), "sparsity_start_step <= sparsity_end"),
    (dict(weight_sparsity=0.5, sparsity_extra_modules=[""]), "sparsity_extra_modules must be a list"),
    (dict(weight_sparsity=0.5, weight_method="fisher", scoring_steps=0), "scoring_steps must be an integer >= 1"),
    (dict(), "give a target: .* and/or weight_sparsity or an N:M sparsity_pattern"),
    (
        dict(head_sparsity=0.5, sparsity_scope="layer"),
        "sparsity_scope: these shape the gradual weight sparsity, which is off",
    ),
    (dict(head_sparsity=0.5, weight_method="wanda", sparsity_end_step=0.5), "weight_method, sparsity_end_step: these"),
    (dict(weight_sparsity=0.5, max_steps=12, sparsity_end_step=12), "the sparsity ramp ends at step 12"),
    (
        dict(weight_sparsity=0.5, max_steps=12, sparsity_start_step=0.9, sparsity_end_step=5),
        r"ends \(step 5\) before it starts \(step 11\)",
    ),
    (dict(weight_sparsity=0.5, reconstruct=True), "reconstruct=True rebuilds layers after a prune"),
    # hybrid: units first, then weights
    (dict(head_sparsity=0.5, prune_step=6, weight_sparsity=0.5, sparsity_start_step=3), "units? rounds must end"),
    (
        dict(head_sparsity=0.5, pruning_schedule="iterative", prune_end_step=0.5, weight_sparsity=0.5)
        | dict(sparsity_start_step=0.25),
        "prune_end_step=0.5 comes after sparsity_start_step=0.25",
    ),
    (
        dict(head_sparsity=0.5, prune_step=0.5, weight_sparsity=0.5, sparsity_start_step=2, max_steps=10),
        "prune_step=5 comes after sparsity_start_step=2",
    ),
    (dict(ffn_sparsity=0.5, sparsity_pattern="2:4", ffn_multiple_of=6), "ffn_multiple_of=6"),
]


@pytest.mark.parametrize("kwargs,match", BAD, ids=[m for _, m in BAD])
def test_bad_options_are_refused_by_the_config(tmp_path, kwargs, match):
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match=match):
        GradPruneConfig(**base, **kwargs)


def test_one_shot_only_methods_parse_for_the_one_shot_command_and_fail_the_schedule_check(tmp_path):
    args = GradPruneConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], sparsity_pattern="2:4")
    args.weight_method = "sparsegpt"  # hf-gradprune prune --oneshot parses this config and runs sparsegpt
    with pytest.raises(ValueError, match="one-shot only"):
        args.check_schedule(100)  # what the example scripts call before their dense fine-tune


def test_weight_sparsity_alone_needs_no_unit_target_and_prunes_no_unit(tmp_path):
    args = GradPruneConfig(output_dir=str(tmp_path), use_cpu=True, weight_sparsity=0.5)
    assert not args.prunes_units and args.round_schedule(100) == [] and args.plan_targets() == {}
    assert args.sparsity_range(100) == (0, 67)  # default end: two thirds of the run
    nm = GradPruneConfig(output_dir=str(tmp_path), use_cpu=True, sparsity_pattern=" 2:4 ")
    assert nm.sparsity_pattern == "2:4" and nm.final_weight_sparsity == 0.5
    assert GradPruneConfig(output_dir=str(tmp_path), use_cpu=True, head_sparsity=0.5).sparsity_schedule(100) == []


@pytest.mark.parametrize(
    "kwargs,model_kw,match",
    [
        (dict(weight_sparsity=0.5, weight_method="sparsegpt"), {}, "prune_weights_oneshot"),
        (dict(weight_sparsity=0.5, weight_method="gblm"), {}, "'gblm' is one-shot only .*prune_weights_oneshot"),
        (dict(weight_sparsity=0.5, sparsity_extra_modules=["clasifier"]), {}, "no module of that name"),
        (dict(weight_sparsity=0.5, sparsity_extra_modules=["bert.embeddings"]), {}, "has no 2-D weight"),
        (dict(sparsity_pattern="2:4"), dict(intermediate_size=94), r"cannot be split so"),
        (dict(head_sparsity=0.5, sparsity_pattern="4:8", ffn_multiple_of=8), dict(hidden_size=72), "a head is 18 wide"),
    ],
)
def test_bad_targets_are_refused_when_the_trainer_is_built(tmp_path, kwargs, model_kw, match):
    model = make_bert(**model_kw)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, model=model, **dict(WEIGHTS_ONLY, **kwargs))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_schedule_the_run_cannot_finish_fails_before_training(tmp_path):
    """max_steps known only from epochs: the sparsity end past the run fails at train(), nothing changed."""
    model = make_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = ParityData(n=32)  # 4 steps of 8
    trainer = make_trainer(
        tmp_path, model=model, data=data, **dict(WEIGHTS_ONLY, max_steps=-1, num_train_epochs=1, weight_sparsity=0.5)
    )
    trainer.args.sparsity_end_step = 6
    with pytest.raises(ValueError, match="training stops after 4 optimizer steps"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_extra_modules_are_sparsified_too(tmp_path):
    trainer = sparse_trainer(tmp_path, sparsity_extra_modules=["classifier"], sparsity_end_step=3)
    trainer.train()
    w = trainer.model.classifier.weight
    assert int((w == 0).sum()) > 0
    assert "classifier" in recorded_weight_sparsity(trainer.model.config)["targets"]


# ---------------------------------------------------------------------------------------------- scripts, recipes
MINILM = sorted((ROOT / "recipes" / "minilm").glob("*.yaml"))


@pytest.mark.parametrize("recipe", MINILM, ids=lambda p: p.stem)
def test_minilm_recipes_parse_and_fit_the_quickstart_data_on_any_number_of_processes(recipe, tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    from run_glue_prune import DataTrainingArguments, ModelArguments

    from hf_gradprune.cli.runs import parse_args

    _, _, train = parse_args(
        (ModelArguments, DataTrainingArguments, GradPruneConfig),
        ["--config", str(recipe), "--output_dir", str(tmp_path)],
    )
    assert train.sparsifies_weights and train.effective_distill_alpha > 0
    assert "on any number of processes" in recipe.read_text()
    for processes in (1, 2, 8, 64):  # the quickstart's 9,511 training sentences, and a tiny share
        for examples in (9511, 100 * processes):
            per_process = math.ceil(math.ceil(examples / train.per_device_train_batch_size) / processes)
            max_steps = int(train.num_train_epochs * per_process)
            train.check_schedule(max_steps, per_process)
            assert train.sparsity_schedule(max_steps)[-1][1] == train.final_weight_sparsity


def test_the_example_scripts_take_the_sparsity_flags(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    from run_clm_prune import DataTrainingArguments as ClmData
    from run_glue_prune import DataTrainingArguments, ModelArguments

    from hf_gradprune.cli.runs import parse_args

    flags = ["--model_name_or_path", "x", "--output_dir", str(tmp_path), "--weight_sparsity", "0.8"]
    flags += ["--weight_method", "wanda", "--sparsity_scope", "row", "--sparsity_start_step", "0.1"]
    flags += ["--sparsity_end_step", "0.5", "--sparsity_update_steps", "5", "--sparsity_extra_modules", "classifier"]
    _, _, train = parse_args((ModelArguments, DataTrainingArguments, GradPruneConfig), flags + ["--task_name", "sst2"])
    assert (train.weight_sparsity, train.weight_method, train.sparsity_scope) == (0.8, "wanda", "row")
    assert (train.sparsity_start_step, train.sparsity_end_step, train.sparsity_update_steps) == (0.1, 0.5, 5)
    assert train.sparsity_extra_modules == ["classifier"] and not train.prunes_units
    _, _, train = parse_args(
        (ModelArguments, ClmData, GradPruneConfig),
        ["--model_name_or_path", "x", "--output_dir", str(tmp_path), "--sparsity_pattern", "2:4"],
    )
    assert train.final_weight_sparsity == 0.5
    with pytest.raises(ValueError, match="weight_sparsity must be a fraction"):
        parse_args(
            (ModelArguments, ClmData, GradPruneConfig),
            ["--model_name_or_path", "x", "--output_dir", str(tmp_path), "--weight_sparsity", "1.5"],
        )


# ---------------------------------------------------------------------------------------------- scoring passes
def test_a_ramp_at_step_zero_scores_before_training_and_starts_sparse(tmp_path):
    trainer = sparse_trainer(
        tmp_path, weight_method="taylor", scoring_steps=3, sparsity_start_step=0, sparsity_end_step=0, max_steps=4
    )
    given = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    (update,) = [e for e in trainer.state.log_history if "sparsity/update" in e]
    assert update["step"] == 0 and update["sparsity/weights"] == 0.5
    # the teacher is the model as given: the masks came before any training step
    for p, q in zip(trainer.teacher.parameters(), given):
        assert torch.equal(p, q)
    assert trainer.state.log_history[-1]["sparsity/achieved"] == 0.5


def test_an_update_right_after_the_unit_prune_scores_the_pruned_model(tmp_path):
    """Units at step 4, and the whole ramp there too: the weights are scored after the cut, on fresh batches."""
    trainer = make_trainer(
        tmp_path,
        max_steps=6,
        per_device_train_batch_size=8,
        head_sparsity=0.5,
        prune_step=4,
        scoring_steps=2,
        weight_sparsity=0.5,
        weight_method="fisher",
        sparsity_start_step=4,
        sparsity_end_step=4,
    )
    trainer.train()
    assert current_plan(trainer.model).num_heads == 6
    targets = weight_targets(trainer.model)
    zeros = sum(int((t.module.weight == 0).sum()) for t in targets)
    assert zeros == round(0.5 * sum(t.module.weight.numel() for t in targets))
    assert trainer._sparsity.masks.masks.keys() == {t.param_name for t in targets}


def test_an_overflowed_micro_batch_is_left_out_and_the_loss_scale_taken_out(tmp_path, monkeypatch):
    trainer = sparse_trainer(tmp_path, weight_method="taylor")
    gs = trainer._sparsity
    targets = weight_targets(trainer.model)
    gs.scorer = WeightScorer(trainer.model, "taylor", targets)
    monkeypatch.setattr(type(trainer), "_grad_scaler_scale", lambda self: 4.0)
    ones = {t.name: torch.ones(t.matrix.shape) for t in targets}
    gs.scorer.grad_stats, gs.scorer.batches = {n: 8 * v for n, v in ones.items()}, 1
    gs.commit()
    gs.scorer.grad_stats = {n: v.clone() for n, v in ones.items()}
    gs.scorer.grad_stats[targets[1].name][0, 0] = float("inf")  # an fp16 overflow: the whole micro-batch goes
    gs.scorer.batches = 1
    gs.commit()
    assert gs.skipped == 1 and gs.totals.batches == 1
    for n, v in gs.totals.grad_stats.items():
        assert torch.equal(v, 2 * ones[n])  # 8 / 4
    assert not gs.scorer.grad_stats and not gs.scorer.is_attached


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_on_gpu(tmp_path, precision):
    """fp16's GradScaler: overflowed micro-batches are left out of the scores, its factor taken out."""
    trainer = sparse_trainer(
        tmp_path, use_cpu=False, weight_method="taylor", scoring_steps=3, sparsity_end_step=9, **{precision: True}
    )
    trainer.train()
    targets = weight_targets(trainer.model)
    assert {t.module.weight.device.type for t in targets} == {"cuda"}
    zeros = sum(int((t.module.weight == 0).sum()) for t in targets)
    assert zeros == round(0.5 * sum(t.module.weight.numel() for t in targets))
    for t in targets:
        keep = trainer._sparsity.masks.masks[t.param_name]
        assert torch.equal(t.module.weight != 0, keep) or bool((t.module.weight[~keep] == 0).all())


def test_a_weight_only_run_saves_its_folder_and_card(tmp_path):
    trainer = sparse_trainer(tmp_path, sparsity_end_step=3)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    card = (tmp_path / "final" / "README.md").read_text()
    assert "weight sparsity 0.5 (unstructured, global scope) by `magnitude` scores" in card
    assert "A weight-sparse" in card and "physically removed" not in card
    loaded = load_pruned(tmp_path / "final")
    for name, p in loaded.state_dict().items():
        assert torch.equal(p, trainer.model.state_dict()[name]), name


def test_gpt2_conv1d_weights_are_masked_along_their_inputs(tmp_path):
    """GPT-2 stores weights [in, out] (Conv1D): N:M groups run along the inputs, masks are in the parameter's layout."""
    trainer = sparse_trainer(
        tmp_path, kind="gpt2", sparsity_pattern="2:4", weight_sparsity=None, weight_method="taylor", scoring_steps=2
    )
    trainer.train()
    masks = trainer._sparsity.masks.masks
    targets = weight_targets(trainer.model)
    assert any(t.in_axis == 0 for t in targets)
    for t in targets:
        keep = masks[t.param_name]
        assert keep.shape == t.module.weight.shape
        assert torch.equal(t.module.weight != 0, keep), t.name
        assert satisfies_nm(t.matrix, 2, 4) and int((t.matrix == 0).sum()) == t.matrix.numel() // 2, t.name
        assert adam_state(trainer, t.module.weight)["exp_avg"][~keep].abs().max() == 0
