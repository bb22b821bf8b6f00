"""Classification metrics as pure functions over labels and probabilities.

Binary metrics use the positive class (index 1) and the validation-chosen
threshold; multi-class uses the arg-max; multi-label has one threshold per
label. Everything is computed by scikit-learn, and the expected calibration
error by MONAI, so the numbers match what reviewers recompute.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

ECE_BINS = 15


def choose_thresholds(task: str, y_true: np.ndarray, probs: np.ndarray) -> list[float]:
    """Operating threshold(s) on validation data: Youden's J (sensitivity + specificity - 1) maximum, at the
    middle of the range of thresholds that reach it (:func:`_youden`).

    Multi-class prediction is the arg-max and needs none (empty list).
    """
    if task == "binary":
        return [_youden(y_true, probs[:, 1])]
    if task == "multilabel":
        return [_youden(y_true[:, k], probs[:, k]) for k in range(probs.shape[1])]
    return []


def _youden(y: np.ndarray, p: np.ndarray) -> float:
    """The middle (in logit space) of the range of thresholds with the highest Youden's J.

    Every threshold between the lowest score called positive and the next score below it gives the same
    validation result; the edge itself (scikit-learn's threshold) sits on one case's score, and on a validation
    split the model separates well it is the lowest positive's, which calls nearly everything positive on new
    data. The middle of the range is the cut with the most room on both sides.
    """
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    j = tpr - fpr
    first = last = int(np.argmax(j))
    while last + 1 < len(j) and j[last + 1] >= j[first] - 1e-12:  # the thresholds next to it reaching the same J
        last += 1
    high = float(min(1.0, thresholds[first]))
    low = float(thresholds[last + 1]) if last + 1 < len(thresholds) else high
    eps = 1e-6
    logits = [np.log(max(v, eps) / max(1 - v, eps)) for v in (min(high, 1 - eps), min(low, 1 - eps))]
    return float(1.0 / (1.0 + np.exp(-(logits[0] + logits[1]) / 2)))


def classification_metrics(
    task: str, y_true: np.ndarray, probs: np.ndarray, label_names: list[str], thresholds: list[float]
) -> dict[str, float]:
    """Flat dict of metrics; per-class entries are named ``auc/<label>`` etc."""
    if task == "binary":
        return _binary(y_true, probs[:, 1], thresholds[0] if thresholds else 0.5)
    if task == "multilabel":
        return _multilabel(y_true, probs, label_names, thresholds or [0.5] * len(label_names))
    return _multiclass(y_true, probs, label_names)


def _binary(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    pred = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, p)) if both else float("nan"),
        "accuracy": float(accuracy_score(y, pred)),
        "sensitivity": float(recall_score(y, pred, pos_label=1, zero_division=np.nan)),
        "specificity": float(recall_score(y, pred, pos_label=0, zero_division=np.nan)),
        "ppv": float(precision_score(y, pred, pos_label=1, zero_division=np.nan)),
        "npv": float(precision_score(y, pred, pos_label=0, zero_division=np.nan)),
        "f1": float(f1_score(y, pred, zero_division=np.nan)),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(np.stack([1 - p, p], axis=1), np.eye(2)[y], include_background=False),
        "threshold": float(threshold),
    }


def _multiclass(y: np.ndarray, probs: np.ndarray, label_names: list[str]) -> dict[str, float]:
    pred = probs.argmax(axis=1)
    onehot = np.eye(len(label_names))[y]
    result: dict[str, float] = {
        "accuracy": float(accuracy_score(y, pred)),
        "f1_macro": float(f1_score(y, pred, average="macro", labels=range(len(label_names)), zero_division=np.nan)),
        "brier": float(brier_score_loss(y, probs, labels=list(range(len(label_names))))),
        "ece": expected_calibration_error(probs, onehot),
    }
    aucs = []
    for c, name in enumerate(label_names):
        has_both = 0 < onehot[:, c].sum() < len(y)
        auc = float(roc_auc_score(onehot[:, c], probs[:, c])) if has_both else float("nan")
        aucs.append(auc)
        result[f"auc/{name}"] = auc
        result[f"sensitivity/{name}"] = float(recall_score(onehot[:, c], pred == c, zero_division=np.nan))
        result[f"specificity/{name}"] = float(recall_score(1 - onehot[:, c], pred != c, zero_division=np.nan))
    result["auc"] = float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan")
    return result


def _multilabel(y: np.ndarray, probs: np.ndarray, label_names: list[str], thresholds: list[float]) -> dict[str, float]:
    result: dict[str, float] = {}
    aucs = []
    for k, name in enumerate(label_names):
        per = _binary(y[:, k], probs[:, k], thresholds[k])
        aucs.append(per["auc"])
        for key in ("auc", "sensitivity", "specificity", "f1", "threshold"):
            result[f"{key}/{name}"] = per[key]
    pred = (probs >= np.asarray(thresholds)).astype(int)
    result["auc"] = float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan")
    result["f1_macro"] = float(f1_score(y, pred, average="macro", zero_division=np.nan))
    result["subset_accuracy"] = float(accuracy_score(y, pred))
    result["ece"] = expected_calibration_error(probs, y.astype(float))
    return result


def expected_calibration_error(probs: np.ndarray, onehot: np.ndarray, include_background: bool = True) -> float:
    """ECE with 15 equal-width bins (MONAI), averaged over the classes kept."""
    import torch
    from monai.metrics import CalibrationErrorMetric

    metric = CalibrationErrorMetric(num_bins=ECE_BINS, include_background=include_background)
    y_pred = torch.as_tensor(np.ascontiguousarray(probs.T[None]), dtype=torch.float32)  # (B=1, C, N)
    per_class = metric(y_pred, torch.as_tensor(np.ascontiguousarray(onehot.T[None]), dtype=torch.float32))
    # the per-class values, averaged here: MONAI's aggregate() would all-gather across processes under torchrun,
    # where only rank 0 validates
    return float(torch.nanmean(per_class))
