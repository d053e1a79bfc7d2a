"""GLUE metrics as GLUE defines them, computed with scikit-learn / scipy.

CoLA: Matthews correlation. MRPC, QQP: F1 (positive class 1) and accuracy. STS-B: Pearson and
Spearman correlation. Everything else: accuracy. Values are fractions in [0, 1] (correlations in
[-1, 1]); tables multiply by 100.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(accuracy_score(labels, preds))


def f1(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(f1_score(labels, preds, pos_label=1, average="binary", zero_division=0.0))


def mcc(preds: np.ndarray, labels: np.ndarray) -> float:
    # sklearn returns 0.0 (not NaN) when a side is constant, as GLUE's scorer does.
    return float(matthews_corrcoef(labels, preds))


def _corr(fn, preds: np.ndarray, labels: np.ndarray) -> float:
    # ptp, not std: the std of a constant float array can come out 1e-17, not 0
    if np.ptp(preds) == 0 or np.ptp(labels) == 0:
        return 0.0  # correlation with a constant is undefined; report 0 rather than NaN
    value = float(fn(preds, labels)[0])
    return 0.0 if math.isnan(value) else value


def pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    return _corr(pearsonr, preds, labels)


def spearman(preds: np.ndarray, labels: np.ndarray) -> float:
    return _corr(spearmanr, preds, labels)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
}


def compute(names: list[str], preds, labels) -> dict[str, float]:
    preds = np.asarray(preds)
    labels = np.asarray(labels)
    if preds.shape != labels.shape:
        raise ValueError(f"predictions {preds.shape} and labels {labels.shape} differ in shape")
    return {name: METRICS[name](preds, labels) for name in names}
