"""GLUE metrics: ``evaluate.load("glue", task)`` when it can be reached, else the same metrics computed
locally with identical keys (accuracy, f1, matthews_correlation, pearson, spearmanr).

The fallback exists because ``evaluate.load`` fetches its metric scripts from the Hub, which offline
machines (and this project's CI) cannot reach; the formulas are the standard ones sklearn/scipy use.
"""

from __future__ import annotations

import numpy as np
from transformers.utils import logging

logger = logging.get_logger(__name__)

GLUE_METRICS = {
    "cola": ("matthews_correlation",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
}  # every other GLUE task: accuracy


def accuracy(pred, ref) -> float:
    return float((np.asarray(pred) == np.asarray(ref)).mean())


def f1_binary(pred, ref) -> float:
    pred, ref = np.asarray(pred), np.asarray(ref)
    tp = float(((pred == 1) & (ref == 1)).sum())
    fp = float(((pred == 1) & (ref != 1)).sum())
    fn = float(((pred != 1) & (ref == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews(pred, ref) -> float:
    pred, ref = np.asarray(pred), np.asarray(ref)
    labels = np.union1d(pred, ref)
    index = {v: i for i, v in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)))
    for p, r in zip(pred, ref):
        cm[index[r], index[p]] += 1
    t, p, c, s = cm.sum(1), cm.sum(0), np.trace(cm), cm.sum()
    denom = np.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return 0.0 if denom == 0 else float((c * s - (t * p).sum()) / denom)


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return 0.0 if denom == 0 else float((x * y).sum() / denom)


def _average_ranks(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    sorted_v = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    return pearson(_average_ranks(x), _average_ranks(y))


def local_glue_metric(task: str | None, predictions, references) -> dict[str, float]:
    """The GLUE metric of ``task`` (``None``: accuracy, or pearson/spearman for float labels)."""
    keys = GLUE_METRICS.get(task or "", ("accuracy",))
    if task is None and np.asarray(references).dtype.kind == "f":
        keys = GLUE_METRICS["stsb"]
    fns = {
        "accuracy": accuracy,
        "f1": f1_binary,
        "matthews_correlation": matthews,
        "pearson": pearson,
        "spearmanr": spearman,
    }
    return {k: fns[k](predictions, references) for k in keys}


class GlueMetric:
    """Callable ``(predictions, references) -> dict``; tries ``evaluate`` once, then falls back."""

    def __init__(self, task: str | None):
        self.task = task
        self.source = "local"
        self._metric = None
        if task is not None:
            try:
                import evaluate

                self._metric = evaluate.load("glue", task)
                self.source = "evaluate"
            except Exception as err:  # offline, or the Hub is unreachable: same metrics, computed here
                logger.warning(
                    "evaluate.load('glue', %r) failed (%s); computing the same GLUE metrics locally",
                    task,
                    type(err).__name__,
                )

    def __call__(self, predictions, references) -> dict[str, float]:
        if self._metric is not None:
            return {
                k: float(v) for k, v in self._metric.compute(predictions=predictions, references=references).items()
            }
        return local_glue_metric(self.task, predictions, references)
