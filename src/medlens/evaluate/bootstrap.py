"""Percentile bootstrap confidence intervals for every metric at once."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_intervals(
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    y_true: np.ndarray,
    probs: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Resample cases with replacement ``n_resamples`` times; 2.5/97.5 percentiles per metric.

    Resamples where a metric is undefined (e.g. AUC with one class drawn) are
    left out of that metric's interval; ``n`` says how many counted.
    """
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        index = rng.integers(0, len(y_true), len(y_true))
        for key, value in metric_fn(y_true[index], probs[index]).items():
            samples.setdefault(key, []).append(value)
    alpha = (1 - confidence) / 2
    intervals = {}
    for key, values in samples.items():
        finite = np.asarray(values, dtype=float)
        finite = finite[np.isfinite(finite)]
        if len(finite) == 0:
            continue
        low, high = np.quantile(finite, [alpha, 1 - alpha])
        intervals[key] = {"low": float(low), "high": float(high), "n": int(len(finite))}
    return intervals
