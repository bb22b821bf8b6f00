"""The comparisons every fusion claim needs: a clinical-only model, and late fusion of two models' probabilities.

- :func:`fit_tabular_model`: scikit-learn's ``HistGradientBoostingClassifier``
  on the encoded clinical columns (one per finding for multi-label data), with
  early stopping inside the training split; gradient boosting is the usual
  strong baseline on a handful of clinical variables.
- :func:`late_fusion_weight`: ``p = w * p_image + (1 - w) * p_clinical``, with
  ``w`` chosen on the validation split (a grid of 11 values) by the same
  score the image model is selected on; the test split never chooses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def fit_tabular_model(features: np.ndarray, labels: np.ndarray, task: str, seed: int = 0) -> Any:
    """Gradient boosting on clinical features; ``predict_proba``-like output via :func:`tabular_proba`."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    def fitted(y: np.ndarray) -> HistGradientBoostingClassifier | float:
        counts = np.bincount(y.astype(int))
        if (counts > 0).sum() < 2 or counts[counts > 0].min() < 2:
            return float(y.mean())  # a finding (almost) absent from training: its prevalence, a constant
        stop = bool(
            counts[counts > 0].min() >= 10
        )  # early stopping holds out a stratified fifth: needs each class there
        return HistGradientBoostingClassifier(
            max_iter=200 if stop else 50,
            learning_rate=0.05,
            max_leaf_nodes=15,
            l2_regularization=1.0,
            early_stopping=stop,
            validation_fraction=0.2,
            random_state=seed,
        ).fit(features, y)

    if task == "multilabel":
        return [fitted(labels[:, k]) for k in range(labels.shape[1])]  # one model per finding
    model = fitted(labels)
    if isinstance(model, float):
        raise ValueError("the training split holds fewer than 2 examples of some class")
    return model


def tabular_proba(model: Any, features: np.ndarray) -> np.ndarray:
    if isinstance(model, list):
        return np.stack(
            [m.predict_proba(features)[:, 1] if not isinstance(m, float) else np.full(len(features), m) for m in model],
            axis=1,
        )
    return model.predict_proba(features)


def late_fusion_weight(
    p_image: np.ndarray, p_clinical: np.ndarray, labels: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float]
) -> tuple[float, list[dict[str, float]]]:
    """The image weight in [0, 1] that maximises ``score(labels, probs)`` on validation, and the whole curve."""
    curve = []
    for w in np.linspace(0, 1, 11):
        value = score(labels, w * p_image + (1 - w) * p_clinical)
        curve.append({"w": round(float(w), 2), "score": float(value)})
    best = max(curve, key=lambda c: (np.nan_to_num(c["score"], nan=-1), c["w"]))  # ties: trust the image more
    return best["w"], curve
