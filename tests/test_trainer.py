import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make
from trainer_helpers import ParityData, make_trainer
from transformers import TrainerCallback

from hf_gradprune import GradPruneConfig, GradPruneTrainer, PlanError, Scores, current_plan, load_pruned

HERE = Path(__file__).parent


def losses(trainer):
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def prune_logs(trainer):
    return [e for e in trainer.state.log_history if "prune/round" in e]


def live_params(model):
    return {id(p) for p in model.parameters() if p.requires_grad}


def optimizer_params(trainer):
    return {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_one_shot_before_training_reaches_target_and_recovers(tmp_path, kind):
    lr = 1e-3 if kind == "bert" else 3e-3
    trainer = make_trainer(tmp_path, kind=kind, max_steps=40, learning_rate=lr, ffn_multiple_of=1)  # exact counts
    trainer.train()
    plan = current_plan(trainer.model)
    assert plan.num_heads == 6 and plan.num_neurons == 144
    (event,) = prune_logs(trainer)
    assert event["step"] == 0 and event["prune/heads_kept"] == 6 and event["prune/examples_scored"] == 64
    curve = losses(trainer)
    assert curve[-1] < curve[0]  # training after the prune lowers the loss
    assert optimizer_params(trainer) == live_params(trainer.model)
    round_dir = tmp_path / "pruning" / "round-1-step-0"
    assert Scores.load(round_dir / "scores.safetensors").num_examples == 64
    assert json.loads((round_dir / "plan.json").read_text())["heads"] == plan.heads


def test_one_shot_mid_training_rebuilds_optimizer_and_keeps_untouched_state(tmp_path):
    seen = {}

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 16:
                trainer = seen["trainer"]
                seen["live"] = optimizer_params(trainer) == live_params(trainer.model)
                emb = trainer.model.bert.embeddings.word_embeddings.weight
                seen["emb_steps"] = float(trainer.optimizer.optimizer.state[emb]["step"])
                q = trainer.model.bert.encoder.layer[0].attention.self.query.weight
                seen["q_steps"] = float(trainer.optimizer.optimizer.state[q]["step"])
                seen["lr"] = trainer.lr_scheduler.get_last_lr()[0]

    trainer = make_trainer(tmp_path, prune_step=12, scoring_steps=6, max_steps=20, callbacks=[Probe()], warmup_steps=4)
    seen["trainer"] = trainer
    lr_before = []
    trainer.add_callback(
        type(
            "LR",
            (TrainerCallback,),
            {"on_step_end": lambda s, a, st, c, **k: lr_before.append(k["lr_scheduler"].get_last_lr()[0])},
        )()
    )
    trainer.train()
    (event,) = prune_logs(trainer)
    assert event["step"] == 12 and event["prune/examples_scored"] == 6 * 16
    assert seen["live"]
    assert seen["emb_steps"] == 16  # untouched parameter: Adam state carried over
    assert seen["q_steps"] == 4  # sliced parameter: fresh moments since the prune
    # the LR schedule continued (linear decay after warmup): no restart at the prune
    assert all(b <= a + 1e-12 for a, b in zip(lr_before[4:], lr_before[5:]))


def test_iterative_schedule_follows_cubic_ramp(tmp_path):
    trainer = make_trainer(
        tmp_path,
        pruning_schedule="iterative",
        prune_start_step=5,
        prune_end_step=25,
        num_rounds=3,
        max_steps=40,
        ffn_multiple_of=1,  # exact counts below
    )
    trainer.train()
    events = prune_logs(trainer)
    assert [e["step"] for e in events] == [5, 15, 25]
    fractions = [1 - (1 - r / 3) ** 3 for r in (1, 2, 3)]
    assert [e["prune/heads_kept"] for e in events] == [12 - round(6 * f) for f in fractions]
    assert events[-1]["prune/neurons_kept"] == 144
    assert current_plan(trainer.model).num_heads == 6
    assert losses(trainer)[-1] < losses(trainer)[0]
    # every round says how it was made: in the model's config and in the round's plan.json
    history = trainer.model.config.gradprune["history"]
    assert [(h["round"], h["step"]) for h in history] == [(1, 5), (2, 15), (3, 25)]
    for entry, f in zip(history, fractions):
        assert entry["method"] == "taylor" and entry["num_examples"] == 4 * 16 and entry["schedule"] == "iterative"
        assert entry["head_sparsity"] == pytest.approx(0.5 * f) and entry["ffn_sparsity"] == pytest.approx(0.5 * f)
    meta = json.loads((tmp_path / "pruning" / "round-2-step-15" / "plan.json").read_text())["meta"]
    assert meta == history[1]


def test_iterative_first_round_before_training_takes_its_share_of_the_target(tmp_path):
    # prune_end_step defaults to half of the run: rounds at steps 0, 2, 4 of 8, not all three at step 0
    trainer = make_trainer(tmp_path, pruning_schedule="iterative", num_rounds=3, max_steps=8, scoring_steps=2)
    trainer.train()
    events = prune_logs(trainer)
    assert [e["step"] for e in events] == [0, 2, 4]
    assert [e["prune/heads_kept"] for e in events] == [12 - round(6 * (1 - (1 - r / 3) ** 3)) for r in (1, 2, 3)]


SMALL = dict(max_steps=-1, num_train_epochs=1, per_device_train_batch_size=4, data=ParityData(n=16))  # 4 steps


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(prune_step=100), "prunes at step 100, but training stops after 4 optimizer steps.*prune_step below 4"),
        (
            dict(pruning_schedule="iterative", prune_end_step=40),
            "prunes at step 40, but training stops after 4 .*make the rounds end before step 4",
        ),
        # epochs x batches / accumulation, as Trainer counts: 2 steps
        (dict(prune_step=2, gradient_accumulation_steps=2), "training stops after 2 optimizer steps"),
        (dict(prune_step=1, scoring_steps=3, gradient_accumulation_steps=2), "can score only 2 batches"),
        (dict(max_steps=4, data=ParityData(n=3), dataloader_drop_last=True), "the training set gives no batches"),
    ],
)
def test_schedule_that_cannot_complete_fails_at_train_start(tmp_path, overrides, match):
    trainer = make_trainer(tmp_path, **{**SMALL, **overrides})
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(PlanError, match=match):
        trainer.check_schedule()  # what train() runs first, public for callers with work before train()
    with pytest.raises(PlanError, match=match):
        trainer.train()
    # before anything was scored or cut, and before any step
    assert current_plan(trainer.model).num_heads == 12 and not (tmp_path / "pruning").exists()
    assert trainer._scorer is None and trainer.state.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_scoring_before_training_cycles_a_short_training_set(tmp_path, caplog):
    # 4 batches per pass, scoring_steps=10: scoring is not training, so it reads the set 2.5 times (issue 20).
    trainer = make_trainer(tmp_path, **SMALL, prune_step=0, scoring_steps=10, distill_alpha=0.0)
    with caplog.at_level("WARNING", logger="hf_gradprune"):
        trainer.train()
    (event,) = prune_logs(trainer)
    assert event["step"] == 0 and event["prune/examples_scored"] == 10 * 4
    assert current_plan(trainer.model).num_heads == 6 and trainer.state.global_step == 4
    assert "scoring_steps=10 is more than one pass over the training set (4 batches)" in caplog.text
    assert "cycles it (2.5 passes)" in caplog.text


def test_steps_below_one_are_fractions_of_the_run(tmp_path):
    # As transformers' warmup_steps: the schedule follows the run's length (epochs, batch, processes).
    trainer = make_trainer(
        tmp_path, **{**SMALL, "num_train_epochs": 2}, pruning_schedule="iterative", prune_start_step=0.25,
        prune_end_step=0.75, num_rounds=2, scoring_steps=2, distill_alpha=0.0,
    )  # fmt: skip
    trainer.train()
    assert [e["step"] for e in prune_logs(trainer)] == [2, 6]  # of 8 steps
    assert "iterative, 2 rounds at steps 2, 6" in trainer_card(trainer, tmp_path)


def trainer_card(trainer, folder) -> str:
    trainer.save_model(str(folder / "final"))
    return (folder / "final" / "README.md").read_text()


def test_scoring_window_counts_the_short_last_step_of_an_epoch(tmp_path):
    # 10 batches per epoch under accumulation 4: steps of 4, 4 and 2 batches. The round at step 3 scores the
    # 4 batches before it (the last 2 of step 1 and the 2 of step 2), not only those of step 2.
    trainer = make_trainer(
        tmp_path,
        **{**SMALL, "num_train_epochs": 2, "data": ParityData(n=40)},
        gradient_accumulation_steps=4,
        prune_step=3,
        scoring_steps=4,
        distill_alpha=0.0,
    )
    trainer.train()
    (event,) = prune_logs(trainer)
    assert event["step"] == 3 and event["prune/examples_scored"] == 4 * 4


def test_unpruned_model_saves_with_or_without_training(tmp_path):
    from transformers import BertForSequenceClassification

    recovery_only = dict(head_sparsity=None, ffn_sparsity=None, pruning_schedule="none", max_steps=2)
    trainer = make_trainer(tmp_path / "run", **recovery_only)
    trainer.save_model(tmp_path / "before")  # before training
    trainer.train()
    trainer.save_model(tmp_path / "after")
    for name in ("before", "after"):
        reloaded = BertForSequenceClassification.from_pretrained(tmp_path / name)  # a plain folder: no remote code
        assert not (tmp_path / name / "README.md").exists()  # no pruning card for a model that was not pruned
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), trainer.model.state_dict().values()))


def test_min_heads_per_layer_above_the_models_heads_fails_when_the_trainer_is_built(tmp_path):
    with pytest.raises(PlanError, match="min_heads_per_layer=99 is more than the 4 heads"):
        make_trainer(tmp_path, min_heads_per_layer=99)


def test_trainer_uses_only_public_seams():
    """The scorer and Accelerate are reached through public members (Accelerate's private lists only via
    accelerate_compat, which has its own test)."""
    package = HERE.parent / "hf_gradprune"
    source = "".join((package / name).read_text() for name in ("training/trainer.py", "training/config.py"))
    for private in ("._handles", "._pending_examples", "._total", "accelerator._", '"taylor", "fisher"'):
        assert private not in source, private


@pytest.mark.parametrize("split", [None, "ratio"])
def test_flops_budget_target(tmp_path, split):
    trainer = make_trainer(
        tmp_path, head_sparsity=None, ffn_sparsity=None, flops_budget=0.4, max_steps=4, budget_split=split
    )
    trainer.train()
    (event,) = prune_logs(trainer)
    assert 0.4 <= 1 - event["prune/block_flops"] / event["prune/block_flops_dense"] < 0.45
    assert current_plan(trainer.model).meta["budget_split"] == (split or "normalized")


def test_distillation_is_on_by_default_and_teacher_stays_frozen(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=10)
    trainer.train()
    teacher = trainer.teacher
    assert teacher is not None and not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not (live_params(teacher) | {id(p) for p in teacher.parameters()}) & optimizer_params(trainer)
    dense = make("bert")
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), dense.state_dict().values()))
    assert any("distill_loss" in e and e["distill_loss"] > 0 for e in trainer.state.log_history)


def test_distillation_off(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=5, distill_alpha=0.0)
    trainer.train()
    assert trainer.teacher is None and not any("distill_loss" in e for e in trainer.state.log_history)


def test_recovery_only_schedule_distils_from_a_given_teacher(tmp_path):
    from hf_gradprune import PruningPlan, prune_model
    from hf_gradprune.state import pruning_state

    teacher = make("bert")
    student = make("bert")
    g = pruning_state(student).geometry
    prune_model(student, PruningPlan(g, [[0, 1], [2], [0, 3]], [list(range(40))] * 3))
    before = current_plan(student)
    trainer = make_trainer(
        tmp_path, model=student, max_steps=10, head_sparsity=None, ffn_sparsity=None, pruning_schedule="none"
    )
    trainer.teacher = trainer._freeze(teacher)
    trainer.train()
    assert not prune_logs(trainer)
    assert current_plan(trainer.model).heads == before.heads
    assert any(e.get("distill_loss", 0) > 0 for e in trainer.state.log_history)
    with pytest.raises(ValueError, match="prunes nothing"):
        GradPruneConfig(output_dir=str(tmp_path), pruning_schedule="none", head_sparsity=0.5, report_to=[])


def test_distillation_loss_values():
    from hf_gradprune import distillation_loss

    s, t = torch.randn(4, 3), torch.randn(4, 3)
    expected = (torch.softmax(t / 2, -1) * (torch.log_softmax(t / 2, -1) - torch.log_softmax(s / 2, -1))).sum(-1)
    torch.testing.assert_close(distillation_loss(s, t, 2.0), 4 * expected.mean())
    assert distillation_loss(t, t, 2.0).abs() < 1e-6
    torch.testing.assert_close(distillation_loss(s[:, :1], t[:, :1], 2.0), torch.mean((s[:, :1] - t[:, :1]) ** 2))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    tok_s, tok_t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    per_tok = (torch.softmax(tok_t, -1) * (torch.log_softmax(tok_t, -1) - torch.log_softmax(tok_s, -1))).sum(-1)
    torch.testing.assert_close(distillation_loss(tok_s, tok_t, 1.0, mask), per_tok[mask.bool()].mean())


@pytest.mark.parametrize("batch,accum", [(4, 4), (8, 2)])
def test_accumulation_and_batch_size_give_the_same_scores(tmp_path, batch, accum):
    def scores_for(b, ga, out):
        trainer = make_trainer(
            out,
            per_device_train_batch_size=b,
            gradient_accumulation_steps=ga,
            prune_step=2,
            scoring_steps=32 // b,
            max_steps=3,
            learning_rate=0.0,
            distill_alpha=0.0,
            data=ParityData(n=64),
        )
        trainer.train()
        return Scores.load(out / "pruning" / "round-1-step-2" / "scores.safetensors")

    ref = scores_for(16, 1, tmp_path / "ref")
    other = scores_for(batch, accum, tmp_path / "other")
    assert ref.num_examples == other.num_examples == 32
    for a, b in zip(ref.heads + ref.neurons, other.heads + other.neurons):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)


def test_save_model_writes_hub_folder_with_card(tmp_path):
    trainer = make_trainer(
        tmp_path,
        max_steps=10,
        model_card_dataset="synthetic-parity",
        model_card_task="text-classification",
        ffn_multiple_of=1,  # exact counts in the card
    )
    trainer.train()
    trainer.evaluate(ParityData(n=32, seed=5))
    trainer.save_model(tmp_path / "final")
    files = set(os.listdir(tmp_path / "final"))
    assert {"config.json", "model.safetensors", "modeling_gradprune.py", "README.md"} <= files
    card = (tmp_path / "final" / "README.md").read_text()
    for needle in (
        "| attention heads | 12 | 6 |",
        "| FFN neurons | 288 | 144 |",
        "taylor",
        "synthetic-parity",
        "trust_remote_code=True",
        "load_pruned",
        "eval_loss",
        "text-classification",
        "one-shot before training",
    ):
        assert needle in card, needle
    params = sum(p.numel() for p in trainer.model.parameters())
    assert f"{params:,}" in card
    reloaded = load_pruned(tmp_path / "final")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), trainer.model.state_dict().values()))


def test_push_to_hub_uploads_the_pruned_folder(tmp_path, monkeypatch):
    import transformers.trainer as trainer_module

    uploaded = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, *, repo_id, folder_path, ignore_patterns=(), **kwargs):
            uploaded["ignored"] = ignore_patterns
            uploaded["repo"] = repo_id
            uploaded["files"] = sorted(os.listdir(folder_path))
            uploaded["card"] = Path(folder_path, "README.md").read_text()
            return "fake-commit"

    monkeypatch.setattr(trainer_module, "hf_api", lambda *a, **k: FakeApi())
    trainer = make_trainer(
        tmp_path / "run",
        max_steps=4,
        prune_step=2,
        scoring_steps=2,
        push_to_hub=True,
        hub_model_id="me/tiny-pruned",
        hub_strategy="end",
    )
    trainer.train()
    uploaded.clear()
    trainer.push_to_hub()
    assert uploaded["repo"] == "me/tiny-pruned"
    assert {"config.json", "model.safetensors", "modeling_gradprune.py", "README.md"} <= set(uploaded["files"])
    assert "hf_gradprune" in uploaded["card"] and "# me/tiny-pruned" in uploaded["card"]
    assert "pruning" in uploaded["files"]  # per-round scores and plans travel with the model
    assert "_*" in uploaded["ignored"] and "_gradprune_teacher" in uploaded["files"]  # present, never uploaded


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_mid_schedule_ends_with_the_same_plan(tmp_path):
    common = dict(
        pruning_schedule="iterative",
        prune_start_step=8,
        prune_end_step=24,
        num_rounds=3,
        scoring_steps=8,
        max_steps=30,
        save_strategy="steps",
        save_steps=10,
    )
    full = make_trainer(tmp_path / "full", **common)
    full.train()
    # interrupted at step 20: the rounds at steps 8 and 16 are done, checkpoint-20 is inside the scoring
    # window of the round at step 24 (steps 16-23)
    part = make_trainer(tmp_path / "part", callbacks=[StopAt(20)], **common)
    part.train()
    assert part.state.global_step == 20 and [e["step"] for e in prune_logs(part)] == [8, 16]
    ckpt = tmp_path / "part" / "checkpoint-20"
    assert (
        json.loads((ckpt / "config.json").read_text())["gradprune"]["plan"]["heads"] == current_plan(part.model).heads
    )
    assert (ckpt / "gradprune_scorer_rank0.pt").exists()
    resumed = make_trainer(tmp_path / "part", **common)
    resumed.train(resume_from_checkpoint=str(ckpt))
    # the checkpoint's log history comes back with it; the resumed run adds only the last round
    assert [e["step"] for e in prune_logs(resumed)] == [8, 16, 24]
    a, b = current_plan(full.model), current_plan(resumed.model)
    assert a.heads == b.heads and a.neurons == b.neurons
    ra = Scores.load(tmp_path / "full" / "pruning" / "round-3-step-24" / "scores.safetensors")
    rb = Scores.load(tmp_path / "part" / "pruning" / "round-3-step-24" / "scores.safetensors")
    assert ra.num_examples == rb.num_examples == 8 * 16
    for x, y in zip(ra.heads + ra.neurons, rb.heads + rb.neurons):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-9)


def test_bf16_on_cpu(tmp_path):
    trainer = make_trainer(tmp_path, bf16=True, max_steps=6, prune_step=3, scoring_steps=3)
    trainer.train()
    scores = Scores.load(tmp_path / "pruning" / "round-1-step-3" / "scores.safetensors")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in scores.heads + scores.neurons)
    assert current_plan(trainer.model).num_heads == 6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_on_gpu(tmp_path, precision):
    trainer = make_trainer(tmp_path, use_cpu=False, max_steps=12, prune_step=6, scoring_steps=4, **{precision: True})
    trainer.train()
    assert {p.device.type for p in trainer.model.parameters()} == {"cuda"}
    assert current_plan(trainer.model).num_heads == 6
    assert optimizer_params(trainer) == live_params(trainer.model)


def test_two_processes_agree_with_each_other_and_with_one(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    script = str(HERE / "ddp_trainer_script.py")
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        port,
        script,
        str(tmp_path / "two"),
        "4",
    ]
    result = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    result = subprocess.run(
        [sys.executable, script, str(tmp_path / "one"), "8"], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    r0, r1 = (json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1))
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    assert r0["world"] == r1["world"] == 2 and one["world"] == 1
    assert r0["wrapper"] == "DistributedDataParallel" and r0["wrapper_is_live"] and r1["wrapper_is_live"]
    assert r0["optimizer_is_live"] and r1["optimizer_is_live"]
    assert (r0["heads"], r0["neurons"]) == (r1["heads"], r1["neurons"]) == (one["heads"], one["neurons"])
    for name in ("round-1-step-0", "round-2-step-4"):
        a = Scores.load(tmp_path / "two" / "pruning" / name / "scores.safetensors")
        b = Scores.load(tmp_path / "one" / "pruning" / name / "scores.safetensors")
        assert a.num_examples == b.num_examples == 32
        for x, y in zip(a.heads + a.neurons, b.heads + b.neurons):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(), "give a target"),
        (dict(head_sparsity=1.0), r"\[0, 1\)"),
        (dict(flops_budget=0.5, head_sparsity=0.3), "cannot be combined"),
        (dict(head_sparsity=0.5, importance="snip"), "importance"),
        (dict(head_sparsity=0.5, pruning_schedule="gradual"), "pruning_schedule"),
        (
            dict(head_sparsity=0.5, pruning_schedule="iterative", prune_start_step=10, prune_end_step=5),
            "prune_start_step",
        ),
        (dict(head_sparsity=0.5, max_steps=10, prune_step=20), "training stops after 10 optimizer steps"),
        # a round runs at the start of its step: step max_steps never starts
        (dict(head_sparsity=0.5, max_steps=10, prune_step=10), "set prune_step below 10"),
        (
            dict(head_sparsity=0.5, max_steps=10, pruning_schedule="iterative", prune_end_step=10),
            "make the rounds end before step 10",
        ),
        (dict(head_sparsity=0.5, max_steps=10, prune_step=3, scoring_steps=4), "can score only 3 batches"),
        (
            dict(head_sparsity=0.5, max_steps=10, pruning_schedule="iterative", prune_start_step=6, scoring_steps=1),
            "num_rounds=3 rounds between steps 6 and 6 fall on only 1 distinct steps",
        ),
        (dict(head_sparsity=0.5, prune_step=2.5), r"prune_step=2.5: a step is a whole number"),
        (dict(head_sparsity=0.5, prune_end_step=-0.5), "prune_end_step must be an optimizer step"),
        (
            dict(head_sparsity=0.5, max_steps=10, pruning_schedule="iterative", prune_start_step=8, prune_end_step=0.5),
            r"last round comes before the first: prune_start_step=8, prune_end_step=0.5 \(step 5 of 10\)",
        ),
        (dict(head_sparsity=0.5, max_steps=10, prune_step=0.95), r"prunes at step 10, .*0.5 at half of the run"),
        (dict(head_sparsity=0.5, flops_seq_len=-5), "seq_len"),
        (dict(head_sparsity=0.5, min_heads_per_layer="1"), "min_heads_per_layer must be an integer"),
        (dict(head_sparsity=0.5, ffn_multiple_of=0), "ffn_multiple_of"),
        (dict(head_sparsity="0.5"), r"head_sparsity must be a fraction"),
        (dict(head_sparsity=0.5, distill_alpha=1.5), "distill_alpha"),
        (dict(head_sparsity=0.5, ranking="local"), "ranking"),
        (dict(head_sparsity=0.5, budget_split="ratio"), "splits a flops_budget or params_budget"),
        (dict(flops_budget=0.5, budget_split="even"), "budget_split must be one of"),
    ],
)
def test_invalid_configs_fail_at_construction(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradPruneConfig(output_dir=str(tmp_path), report_to=[], **kwargs)


def test_trainer_refuses_what_it_cannot_honour(tmp_path):
    args = GradPruneConfig(output_dir=str(tmp_path), head_sparsity=0.5, report_to=[], use_cpu=True)
    model = make("bert")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="rebuilds the optimizer"):
        GradPruneTrainer(model=model, args=args, optimizers=(opt, None))
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="GradPruneConfig"):
        GradPruneTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[]))
