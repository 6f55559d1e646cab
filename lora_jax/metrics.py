"""GLUE metrics as GLUE defines them, in numpy: accuracy, F1, Matthews correlation (CoLA),
Pearson and Spearman correlation (STS-B)."""

from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1(pred: np.ndarray, gold: np.ndarray) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    pred, gold = np.asarray(pred) == 1, np.asarray(gold) == 1
    tp = np.sum(pred & gold)
    denom = np.sum(pred) + np.sum(gold)
    return float(2 * tp / denom) if denom else 0.0


def mcc(pred: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation for binary labels; 0 when a row or column of the confusion matrix is
    empty (e.g. a model that predicts one class only)."""
    pred, gold = np.asarray(pred) == 1, np.asarray(gold) == 1
    tp, tn = np.sum(pred & gold), np.sum(~pred & ~gold)
    fp, fn = np.sum(pred & ~gold), np.sum(~pred & gold)
    denom = np.sqrt(float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denom) if denom else 0.0


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties sharing their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(rankdata(x), rankdata(y))


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}


def compute(names: tuple[str, ...], pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """The named metrics of predictions (class ids, or scores for regression) against gold."""
    return {n: METRICS[n](pred, gold) for n in names}
