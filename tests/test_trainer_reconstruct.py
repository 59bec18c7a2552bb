"""GradPruneTrainer with ``reconstruct=True``: layer-wise reconstruction after each prune, before recovery."""

import gc
import json
import re
import weakref

import pytest
import torch
from conftest import make_bert
from test_run_glue import base_args, tiny_setup  # noqa: F401  (tiny_setup is a fixture)
from trainer_helpers import ParityData, make_trainer

import hf_gradprune.training.trainer as gradprune_trainer
from hf_gradprune import GradPruneConfig
from hf_gradprune.planning.plan import PlanError
from hf_gradprune.state import pruning_state

# learning_rate=0: AdamW then changes no weight, so the model after train() is the model right after the
# prune (and its reconstruction). prune_step=0 scores the untouched model before training. selection_batches=0: these
# tests check the reconstruction itself, kept whatever it does (the held-out rule: tests/test_oneshot_select.py).
ONE_SHOT = dict(max_steps=2, learning_rate=0.0, prune_step=0)


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def calls(monkeypatch):
    """Every reconstruct() call of the trainer: the reference's identity, weights and kept units, and the
    calibration batches; each call goes through to the real reconstruct."""
    seen = []
    real = gradprune_trainer.reconstruct

    def spy(model, dense, calibration, **kwargs):
        calibration = list(calibration)
        seen.append(
            {
                "dense": weakref.ref(dense),  # no strong reference: the trainer must be able to drop its copy
                "dense_state": snapshot(dense),
                "dense_heads": pruning_state(dense).head_ids,
                "model_heads": pruning_state(model).head_ids,
                "calibration": [{k: v.clone() for k, v in b.items()} for b in calibration],
                "kwargs": kwargs,
            }
        )
        return real(model, dense, calibration, **kwargs)

    monkeypatch.setattr(gradprune_trainer, "reconstruct", spy)
    return seen


def output_error(model, reference, batches) -> float:
    """Mean squared difference of every layer's hidden states (real tokens only) between the two models; of the last
    layer's, the [CLS] token's only: the one the classifier reads, which reconstruction fits there."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
            a = model.eval()(**inputs, output_hidden_states=True).hidden_states
            r = reference.eval()(**inputs, output_hidden_states=True).hidden_states
            for i, (x, y) in enumerate(zip(a[1:], r[1:])):
                mask = b["attention_mask"].bool()
                if i == len(a) - 2:
                    mask = mask & (torch.arange(mask.shape[1]) == 0)
                total += float((x - y)[mask].pow(2).sum())
                count += int(mask.sum()) * x.shape[-1]
    return total / count


def test_one_shot_reconstruction_rescales_output_projections_and_lowers_the_error(tmp_path, calls):
    off = make_trainer(tmp_path / "off", **ONE_SHOT)
    off.train()
    on = make_trainer(tmp_path / "on", reconstruct=True, selection_batches=0, reconstruct_batches=3, **ONE_SHOT)
    on.train()
    assert len(calls) == 1 and len(calls[0]["calibration"]) == 3  # reconstruct_batches training batches
    assert calls[0]["kwargs"] == {"bias_compensation": False}
    a, b = snapshot(off.model), snapshot(on.model)
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)  # the same plan was cut
    outputs = {k for k in a if k.endswith(("attention.output.dense.weight", "output.dense.weight"))}
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and changed <= outputs, changed  # only output projection weights, and some of them
    # the reference of a one-shot prune at step 0 is the model as given
    dense = make_bert()
    assert all(torch.equal(v, calls[0]["dense_state"][k]) for k, v in dense.state_dict().items())
    batches = calls[0]["calibration"]
    before, after = output_error(off.model, dense, batches), output_error(on.model, dense, batches)
    assert after < 0.9 * before, (before, after)
    # the report: logged and saved with the round
    (report,) = on.reconstruction_reports
    assert report["round"] == 1 and report["tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)
    logs = next(e for e in on.state.log_history if "prune/reconstruct_error_after" in e)
    assert logs["prune/reconstruct_error_after"] < logs["prune/reconstruct_error_before"]
    assert not any("prune/reconstruct_tokens" in e for e in off.state.log_history)
    assert off.reconstruction_reports == []


def test_gpt2_one_shot_reconstruction(tmp_path):
    """The causal-LM family through the trainer: calibration batches with token labels, a pre-norm block."""
    trainer = make_trainer(
        tmp_path, kind="gpt2", reconstruct=True, selection_batches=0, reconstruct_batches=2, **ONE_SHOT
    )
    trainer.train()
    (report,) = trainer.reconstruction_reports
    fitted = [r for r in report["sublayers"] if not r["skipped"]]
    assert fitted and all(r["error_after"] <= r["error_before"] for r in fitted)
    assert sum(r["error_after"] for r in fitted) < sum(r["error_before"] for r in fitted)


def test_round_files_hold_the_reconstruction_report(tmp_path):
    trainer = make_trainer(
        tmp_path, reconstruct=True, selection_batches=0, reconstruct_batches=2, save_strategy="steps", **ONE_SHOT
    )
    trainer.train()
    (folder,) = (tmp_path / "pruning").iterdir()
    saved = json.loads((folder / "reconstruction.json").read_text())
    assert saved == json.loads(json.dumps(trainer.reconstruction_reports[0]))
    assert len(saved["sublayers"]) == 6  # 3 layers x (attention, FFN)
    assert "calibration tokens" in (folder / "summary.txt").read_text()


def test_iterative_rounds_reconstruct_against_the_previous_round(tmp_path, calls, monkeypatch):
    before_prune = []  # the model's weights just before each prune
    real_prune = gradprune_trainer.prune_model

    def spy_prune(model, plan):
        before_prune.append(snapshot(model))
        return real_prune(model, plan)

    monkeypatch.setattr(gradprune_trainer, "prune_model", spy_prune)
    trainer = make_trainer(
        tmp_path,
        reconstruct=True,
        selection_batches=0,
        reconstruct_batches=2,
        pruning_schedule="iterative",
        num_rounds=2,
        prune_start_step=0,
        prune_end_step=6,
        max_steps=8,
    )
    trainer.train()
    assert len(calls) == 2 == len(before_prune)
    teacher_before = make_bert().state_dict()  # the model as given: the teacher, frozen at the first prune
    assert all(torch.equal(v, trainer.teacher.state_dict()[k]) for k, v in teacher_before.items())  # untouched
    # round 1: the reference is the teacher, frozen just now (no second copy)
    assert calls[0]["dense"]() is trainer.teacher
    # round 2: a copy of the round-1 model as it was (after 6 training steps) just before the second prune
    gc.collect()
    assert calls[1]["dense"]() is None  # the copy was dropped after the round
    ref = calls[1]["dense_state"]
    assert ref.keys() == before_prune[1].keys()
    assert all(torch.equal(ref[k], before_prune[1][k]) for k in ref)
    assert calls[1]["dense_heads"] == calls[0]["model_heads"]  # the units round 1 kept, not the dense model's
    assert sum(map(len, calls[1]["dense_heads"])) < sum(map(len, pruning_state(trainer.teacher).head_ids))
    assert any(not torch.equal(ref[k], v) for k, v in teacher_before.items() if ref[k].shape == v.shape)
    assert [r["round"] for r in trainer.reconstruction_reports] == [1, 2]


def test_evaluate_after_prune_reports_pruned_and_reconstructed(tmp_path):
    # a prune during training: Trainer.train() starts a fresh log history, so one before it is not logged there
    trainer = make_trainer(
        tmp_path,
        reconstruct=True,
        selection_batches=0,
        reconstruct_batches=2,
        evaluate_after_prune=True,
        prune_step=2,
        scoring_steps=2,
        max_steps=3,
    )
    trainer.eval_dataset = ParityData(n=32, seed=1)
    trainer.train()
    (entry,) = trainer.pruned_metrics
    assert (entry["round"], entry["step"]) == (1, 2) and {"pruned_loss", "reconstructed_loss"} <= set(entry)
    assert entry["pruned_loss"] != entry["reconstructed_loss"]  # two evaluations of two different models
    logged = [k for e in trainer.state.log_history for k in e if k in ("pruned_loss", "reconstructed_loss")]
    assert logged == ["pruned_loss", "reconstructed_loss"]  # the one-shot model first


def test_without_reconstruct_only_pruned_metrics(tmp_path, calls):
    trainer = make_trainer(tmp_path, evaluate_after_prune=True, **ONE_SHOT)
    trainer.eval_dataset = ParityData(n=32, seed=1)
    trainer.train()
    assert calls == []
    (entry,) = trainer.pruned_metrics
    assert "pruned_loss" in entry and not any(k.startswith("reconstructed_") for k in entry)


def test_bias_compensation_moves_output_biases(tmp_path, calls):
    off = make_trainer(tmp_path / "off", reconstruct=True, selection_batches=0, reconstruct_batches=2, **ONE_SHOT)
    off.train()
    on = make_trainer(
        tmp_path / "on",
        reconstruct=True,
        selection_batches=0,
        reconstruct_batches=2,
        bias_compensation=True,
        **ONE_SHOT,
    )
    on.train()
    assert calls[1]["kwargs"] == {"bias_compensation": True}
    a, b = snapshot(off.model), snapshot(on.model)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("output.dense.bias"))


def test_rescaled_projections_get_fresh_adam_moments(tmp_path, calls):
    """A prune after training started: the rebuilt optimizer keeps moments only for untouched parameters.

    Only heads are cut, so the FFN output projections keep their parameter objects (and had moments) while
    reconstruction rescales them in place: they must start fresh, the untouched rest must not."""
    trainer = make_trainer(
        tmp_path,
        reconstruct=True,
        selection_batches=0,
        reconstruct_batches=2,
        prune_step=6,
        max_steps=8,
        ffn_sparsity=None,
    )
    seen = {}
    real_rebuild = trainer._rebuild_optimizer

    def spy(fresh=frozenset()):
        seen["old"] = {id(p) for p in trainer.optimizer.optimizer.state}
        real_rebuild(fresh=fresh)
        seen["fresh"] = set(fresh)
        seen["new"] = {id(p) for p in trainer.optimizer.optimizer.state}

    trainer._rebuild_optimizer = spy
    trainer.train()
    (report,) = trainer.reconstruction_reports
    ffn_fitted = [r["layer"] for r in report["sublayers"] if r["kind"] == "neuron" and not r["skipped"]]
    assert ffn_fitted, report  # some FFN was rescaled in place
    layers = trainer.model.bert.encoder.layer
    for i in ffn_fitted:
        weight = layers[i].output.dense.weight
        assert id(weight) in seen["old"] and id(weight) in seen["fresh"] and id(weight) not in seen["new"]
    untouched = trainer.model.bert.embeddings.word_embeddings.weight
    assert id(untouched) in seen["new"] and not seen["fresh"] & seen["new"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(reconstruct_batches=0), "reconstruct_batches must be an integer >= 1"),
        (dict(reconstruct_batches=True), "reconstruct_batches must be an integer >= 1"),
        (
            dict(reconstruct=True, selection_batches=0, reconstruct_batches=2.5),
            "reconstruct_batches must be an integer >= 1",
        ),
        (dict(bias_compensation=True), "set reconstruct=True too"),
        (dict(reconstruct="yes"), "reconstruct must be True or False"),
        (
            dict(reconstruct=True, selection_batches=0, pruning_schedule="none", head_sparsity=None, ffn_sparsity=None),
            "pruning_schedule='none' prunes nothing",
        ),
    ],
)
def test_config_validation(tmp_path, overrides, message):
    config = dict(output_dir=str(tmp_path), head_sparsity=0.5, use_cpu=True, report_to=[])
    with pytest.raises(PlanError, match="^GradPruneConfig: .*" + re.escape(message)):
        GradPruneConfig(**{**config, **overrides})


def test_config_defaults_are_off():
    args = GradPruneConfig("x", head_sparsity=0.5, use_cpu=True, report_to=[])
    assert (args.reconstruct, args.reconstruct_batches, args.bias_compensation) == (False, 16, False)


def test_glue_script_with_reconstruct(tiny_setup, capsys):  # noqa: F811
    import run_glue_prune

    out = tiny_setup / "out"
    args = base_args(tiny_setup, out) + ["--reconstruct", "--reconstruct_batches", "4", "--dense_train_epochs", "2"]
    results = run_glue_prune.main(args)
    all_results = json.loads((out / "all_results.json").read_text())
    for stage in ("dense", "pruned", "reconstructed", "recovered"):
        assert 0.0 <= all_results[f"{stage}_accuracy"] <= 1.0, stage
    assert "reconstructed_loss" in all_results and all_results == {k: results[k] for k in all_results}
    assert "| metric | dense | pruned | reconstructed | recovered |" in capsys.readouterr().out
    report = json.loads((out / "pruning_report.json").read_text())
    (round_report,) = report["reconstruction"]
    assert round_report["tokens"] > 0 and len(round_report["sublayers"]) == 6


def test_grouped_query_llama_one_shot_reconstruction(tmp_path):
    """Grouped-query attention through the trainer: query heads within their key/value groups, a SwiGLU FFN."""
    from test_llama import make_decoder

    trainer = make_trainer(
        tmp_path,
        model=make_decoder("llama"),
        data=ParityData(kind="gpt2"),
        reconstruct=True,
        selection_batches=0,
        reconstruct_batches=2,
        **ONE_SHOT,
    )
    trainer.train()
    (report,) = trainer.reconstruction_reports
    fitted = [r for r in report["sublayers"] if not r["skipped"]]
    assert fitted and all(r["error_after"] <= r["error_before"] for r in fitted)
    assert sum(r["error_after"] for r in fitted) < sum(r["error_before"] for r in fitted)
    state = pruning_state(trainer.model)
    assert all(len(h) % len({i // state.geometry.group_size for i in h} or {0}) == 0 for h in state.head_ids)
