"""The reporting modules: one job each, one result-key scheme (``<stage>_<metric>``), the model card."""

import importlib.util
import json

import pytest
from conftest import make_bert

from hf_gradprune import GradPruneConfig, GradPruneTrainer, PruningPlan, current_plan, prune_model
from hf_gradprune.reports.model_card import model_card_text
from hf_gradprune.reports.plots import plot_plan
from hf_gradprune.reports.run_report import STAGES, format_summary, metric_rows, stage_metrics, write_pruning_report


def test_reporting_is_split_into_one_module_per_job():
    assert importlib.util.find_spec("hf_gradprune.reporting") is None  # no shim left behind
    for module, name in (
        ("model_card", "write_model_card"),
        ("plots", "plot_plan"),
        ("run_report", "write_run_report"),
        ("latency", "measure_latency"),
    ):
        assert hasattr(importlib.import_module(f"hf_gradprune.{module}"), name)


def test_stages_and_keys():
    assert STAGES == ("dense", "pruned", "reconstructed", "recovered")
    evaluation = {"pruned_accuracy": 0.5, "pruned_loss": 1.0, "round": 1, "epoch": 2.0, "pruned_ok": True}
    assert stage_metrics(evaluation, "pruned") == {"pruned_accuracy": 0.5, "pruned_loss": 1.0}


def stages():
    return {
        "dense": {"dense_loss": 0.3, "dense_accuracy": 0.9, "dense_runtime": 1.0, "dense_model_preparation_time": 0.1},
        "pruned": {"round": 1, "step": 0, "pruned_accuracy": 0.7, "pruned_perplexity": 12.3456},
        "recovered": {"recovered_accuracy": 0.85, "recovered_f1": 0.8, "recovered_samples_per_second": 9.0},
    }


def test_metric_rows_have_one_column_per_stage():
    assert metric_rows(stages()) == [
        ("accuracy", "0.9000", "0.7000", "0.8500"),
        ("perplexity", "", "12.35", ""),
        ("f1", "", "", "0.8000"),
    ]


def test_reconstructed_column_only_when_evaluated(tmp_path):
    """A run with reconstruction gets its column between pruned and recovered; one without keeps three."""
    with_it = {**stages(), "reconstructed": {"reconstructed_accuracy": 0.8, "pruned_accuracy": 0.7}}
    assert metric_rows(with_it) == [
        ("accuracy", "0.9000", "0.7000", "0.8000", "0.8500"),
        ("perplexity", "", "12.35", "", ""),
        ("f1", "", "", "", "0.8000"),
    ]
    model = make_bert()
    dense_plan = current_plan(model)
    results = {"dense_params": 1000, "pruned_params": 800}
    report = write_pruning_report(tmp_path, dense_plan, dense_plan, results, [])
    text = format_summary(with_it, results, dense_plan, dense_plan, report)
    assert "| metric | dense | pruned | reconstructed | recovered |" in text
    assert "| accuracy | 0.9000 | 0.7000 | 0.8000 | 0.8500 |" in text


def test_summary_and_report_use_the_stage_names(tmp_path):
    model = make_bert()
    dense_plan = current_plan(model)
    plan = PruningPlan.from_dict({**dense_plan.to_dict(), "heads": [[0, 1]] * 3})
    results = {"dense_params": 1000, "pruned_params": 800, "dense_accuracy": 0.9}
    report = write_pruning_report(tmp_path, dense_plan, plan, results, [])
    text = format_summary(stages(), results, dense_plan, plan, report)
    assert "| metric | dense | pruned | recovered |" in text
    assert "| accuracy | 0.9000 | 0.7000 | 0.8500 |" in text
    assert "| attention heads | 12 | 6 |" in text and "| parameters | 1,000 | 800 |" in text
    saved = json.loads((tmp_path / "pruning_report.json").read_text())
    assert saved["metrics"] == results and saved["heads"]["pruned"] == 6


def test_plots_are_pngs(tmp_path):
    paths = plot_plan(current_plan(make_bert()), str(tmp_path))
    assert {open(p, "rb").read(4) for p in paths.values()} == {b"\x89PNG"}


@pytest.mark.parametrize("pruned", [True, False], ids=["pruned", "unpruned"])
def test_model_card_lists_every_stage(tmp_path, pruned):
    model = make_bert()
    trainer = GradPruneTrainer(
        model=model, args=GradPruneConfig(str(tmp_path), head_sparsity=0.5, use_cpu=True, report_to=[])
    )
    if pruned:
        prune_model(model, PruningPlan.from_dict({**current_plan(model).to_dict(), "heads": [[0, 1]] * 3}))
    trainer.state.log_history = [
        {"dense_accuracy": 0.9, "dense_runtime": 1.5, "epoch": 0.0},
        {"loss": 0.7, "step": 5},
        {"pruned_accuracy": 0.6, "round": 1},
        {"recovered_accuracy": 0.85, "recovered_perplexity": 3.0},
        {"eval_loss": 0.4},
    ]
    card = model_card_text(trainer)
    evaluation = card[card.index("## Evaluation") : card.index("## How to load")]
    assert [line for line in evaluation.splitlines() if line.startswith("- ")] == [
        "- dense_accuracy: 0.9000",
        "- pruned_accuracy: 0.6000",
        "- recovered_accuracy: 0.8500",
        "- recovered_perplexity: 3.0000",
        "- eval_loss: 0.4000",
    ]
    assert "dense_runtime" not in card  # timings are not results
