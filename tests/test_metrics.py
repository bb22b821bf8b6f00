import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medlens.evaluate.bootstrap import bootstrap_intervals
from medlens.evaluate.metrics import choose_thresholds, classification_metrics


@pytest.fixture()
def binary_case():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.35 * y + rng.random(400) * 0.65, 0, 1)  # error-path-free toy scores with known ordering
    return y, np.stack([1 - p, p], axis=1)


def test_binary_metrics_agree_with_definitions(binary_case):
    y, probs = binary_case
    m = classification_metrics("binary", y, probs, ["neg", "pos"], [0.5])
    pred = probs[:, 1] >= 0.5
    tp, tn = np.sum(pred & (y == 1)), np.sum(~pred & (y == 0))
    assert m["sensitivity"] == pytest.approx(tp / np.sum(y == 1))
    assert m["specificity"] == pytest.approx(tn / np.sum(y == 0))
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    assert 0 <= m["ece"] <= 1 and 0 <= m["brier"] <= 1


def test_youden_threshold_maximises_j(binary_case):
    y, probs = binary_case
    (t,) = choose_thresholds("binary", y, probs)
    j = lambda thr: np.mean(probs[y == 1, 1] >= thr) + np.mean(probs[y == 0, 1] < thr) - 1  # noqa: E731
    assert j(t) >= max(j(x) for x in np.linspace(0, 1, 101)) - 1e-9


def test_multiclass_and_multilabel(pneumonia):
    y = np.array([0, 1, 2, 2, 1, 0])
    probs = np.eye(3)[y] * 0.7 + 0.1
    m = classification_metrics("multiclass", y, probs, ["a", "b", "c"], [])
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0 and m["auc/b"] == 1.0
    yl = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    ml = classification_metrics("multilabel", yl, yl * 0.8 + 0.1, ["x", "y"], [0.5, 0.5])
    assert ml["auc"] == 1.0 and ml["subset_accuracy"] == 1.0


def test_bootstrap_interval_brackets_estimate(binary_case):
    from functools import partial

    y, probs = binary_case
    fn = partial(classification_metrics, "binary", label_names=["neg", "pos"], thresholds=[0.5])
    ci = bootstrap_intervals(fn, y, probs, n_resamples=200, seed=1)
    point = fn(y, probs)
    for key in ("auc", "accuracy", "sensitivity"):
        assert ci[key]["low"] <= point[key] <= ci[key]["high"]
        assert ci[key]["high"] - ci[key]["low"] < 0.2
