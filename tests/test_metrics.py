import math
import warnings

import numpy as np
import pytest

from kronbit.data.metrics import compute


def test_accuracy_and_f1_by_hand():
    preds = np.array([1, 1, 0, 0, 1])
    labels = np.array([1, 0, 0, 1, 1])
    # TP=2, FP=1, FN=1 -> precision 2/3, recall 2/3, F1 2/3; 3 of 5 correct.
    out = compute(["accuracy", "f1"], preds, labels)
    assert out["accuracy"] == pytest.approx(0.6)
    assert out["f1"] == pytest.approx(2 / 3)


def test_matthews_by_hand():
    preds = np.array([1, 1, 0, 0, 1])
    labels = np.array([1, 0, 0, 1, 1])
    tp, tn, fp, fn = 2, 1, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute(["mcc"], preds, labels)["mcc"] == pytest.approx(expected)
    # A constant predictor has MCC 0 (GLUE's convention), not NaN.
    assert compute(["mcc"], np.ones(5, int), labels)["mcc"] == 0.0


def test_pearson_spearman_by_hand():
    preds = np.array([1.0, 2.0, 3.0, 4.0])
    labels = np.array([1.0, 3.0, 2.0, 4.0])
    # Pearson: centred vectors (-1.5,-.5,.5,1.5) and (-1.5,.5,-.5,1.5): dot 4, norms sqrt(5)·sqrt(5)
    out = compute(["pearson", "spearman"], preds, labels)
    assert out["pearson"] == pytest.approx(4 / 5)
    # Spearman on ranks: same numbers (already ranks) -> 0.8
    assert out["spearman"] == pytest.approx(0.8)
    assert compute(["pearson"], np.zeros(4), labels)["pearson"] == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        compute(["accuracy"], np.zeros(3), np.zeros(4))


def test_a_constant_float_prediction_has_correlation_zero_without_warnings():
    # np.std of this constant array is 1.1e-16, not 0: the check must not take it for a varying one.
    preds = np.full(408, 0.7)
    labels = np.linspace(0, 5, 408)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute(["pearson", "spearman"], preds, labels) == {"pearson": 0.0, "spearman": 0.0}
