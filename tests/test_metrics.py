import numpy as np
import pandas as pd
import pytest

from hf_gradprune.reports.metrics import GlueMetric, local_glue_metric


def direct(pred, ref):
    """Independent computation: confusion counts by hand, correlations by pandas."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    tp = int(((pred == 1) & (ref == 1)).sum())
    tn = int(((pred == 0) & (ref == 0)).sum())
    fp = int(((pred == 1) & (ref == 0)).sum())
    fn = int(((pred == 0) & (ref == 1)).sum())
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {"accuracy": (tp + tn) / len(ref), "f1": 2 * precision * recall / (precision + recall), "mcc": mcc}


def test_classification_metrics_match_direct_computation():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 2, 500)
    pred = np.where(rng.random(500) < 0.8, ref, 1 - ref)
    want = direct(pred, ref)
    assert local_glue_metric("mrpc", pred, ref) == pytest.approx({"accuracy": want["accuracy"], "f1": want["f1"]})
    assert local_glue_metric("cola", pred, ref)["matthews_correlation"] == pytest.approx(want["mcc"])
    assert local_glue_metric("sst2", pred, ref) == pytest.approx({"accuracy": want["accuracy"]})


def test_multiclass_matthews_and_accuracy():
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.6, ref, rng.integers(0, 3, 300))
    assert local_glue_metric("mnli", pred, ref)["accuracy"] == pytest.approx((pred == ref).mean())
    # sklearn's multiclass MCC formula, written out
    cm = pd.crosstab(ref, pred).to_numpy().astype(float)
    t, p, c, s = cm.sum(1), cm.sum(0), np.trace(cm), cm.sum()
    mcc = (c * s - t @ p) / np.sqrt((s**2 - p @ p) * (s**2 - t @ t))
    assert local_glue_metric("cola", pred, ref)["matthews_correlation"] == pytest.approx(mcc)


def test_regression_metrics_match_pandas():
    rng = np.random.default_rng(2)
    ref = np.round(rng.random(200) * 5, 1)  # ties, as STS-B has
    pred = ref + rng.normal(0, 0.8, 200)
    got = local_glue_metric("stsb", pred, ref)
    frame = pd.DataFrame({"p": pred, "r": ref})
    assert got["pearson"] == pytest.approx(frame.corr("pearson").iloc[0, 1])
    assert got["spearmanr"] == pytest.approx(frame.rank().corr("pearson").iloc[0, 1])


def test_offline_falls_back_with_the_same_keys(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = GlueMetric("mrpc")
    assert metric.source == "local"
    assert set(metric([1, 0, 1], [1, 1, 1])) == {"accuracy", "f1"}
