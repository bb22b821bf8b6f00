"""Survival metrics (torchsurv) and Kaplan-Meier curves by predicted risk group (lifelines).

- Harrell's C-index: the share of comparable patient pairs whose risk order
  matches their event order (0.5 = chance).
- Time-dependent AUC at fixed horizons (cumulative/dynamic, censoring-weighted):
  does the risk separate those with an event by ``t`` from those still free at ``t``.
- Integrated Brier score (Graf et al. 1999, inverse-probability-of-censoring
  weighted): squared error of the predicted survival curve, averaged over a
  time grid from the 10th to the 80th percentile of the scored times (the tail
  holds too few patients to weigh); lower is better, 0.25 is a coin flip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.evaluate.bootstrap import bootstrap_intervals

HORIZONS_DAYS = (365.0, 730.0)


def time_grid(time: np.ndarray, points: int = 20) -> np.ndarray:
    low, high = np.quantile(time, [0.1, 0.8])
    return np.linspace(low, high, points)


def survival_metrics(
    risk: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    survival: np.ndarray | None = None,
    grid: np.ndarray | None = None,
    horizons: tuple[float, ...] = HORIZONS_DAYS,
) -> dict[str, float]:
    """C-index, AUC at each horizon, and (given survival curves on ``grid``) the integrated Brier score."""
    from torchsurv.metrics.auc import Auc
    from torchsurv.metrics.cindex import ConcordanceIndex

    r = torch.as_tensor(risk, dtype=torch.float32)
    t, e = torch.as_tensor(time, dtype=torch.float32), torch.as_tensor(event).bool()
    out = {"c_index": float(ConcordanceIndex()(r, e, t)), "n": int(len(time)), "events": int(event.sum())}
    inside = [h for h in horizons if time.min() < h < time.max()]
    if inside and e.any():
        aucs = Auc()(r, e, t, new_time=torch.as_tensor(inside, dtype=torch.float32))
        out |= {f"auc_{int(h)}d": float(a) for h, a in zip(inside, aucs.reshape(-1))}
    if survival is not None and grid is not None:
        out["ibs"] = integrated_brier(survival, time, event, grid)
    return out


def integrated_brier(survival: np.ndarray, time: np.ndarray, event: np.ndarray, grid: np.ndarray) -> float:
    from torchsurv.metrics.brier_score import BrierScore
    from torchsurv.stats.ipcw import get_ipcw

    t, e = torch.as_tensor(time, dtype=torch.float32), torch.as_tensor(event).bool()
    g = torch.as_tensor(grid, dtype=torch.float32)
    brier = BrierScore()
    brier(
        torch.as_tensor(survival, dtype=torch.float32),
        e,
        t,
        new_time=g,
        weight=get_ipcw(e, t),
        weight_new_time=get_ipcw(e, t, g),
    )
    return float(brier.integral())


def c_index_interval(
    risk: np.ndarray, time: np.ndarray, event: np.ndarray, n_resamples: int = 500, seed: int = 0
) -> dict[str, float]:
    """Percentile bootstrap 95 % interval of the C-index (the project's bootstrap)."""

    def metric(y: np.ndarray, r: np.ndarray) -> dict[str, float]:
        if not y[:, 1].any():
            return {"c_index": float("nan")}
        return {"c_index": survival_metrics(r, y[:, 0], y[:, 1].astype(int), horizons=())["c_index"]}

    return bootstrap_intervals(metric, np.stack([time, event], axis=1), risk, n_resamples, seed).get("c_index", {})


def risk_groups(risk: np.ndarray, cutoffs: list[float]) -> np.ndarray:
    """Group 0 (lowest risk) .. len(cutoffs) by the training-set cut-offs (never re-cut on the scored data)."""
    return np.searchsorted(np.asarray(cutoffs), risk, side="right")


def kaplan_meier_plot(
    time: np.ndarray, event: np.ndarray, groups: np.ndarray, names: list[str], path: Path, title: str
) -> dict[str, Any]:
    """Kaplan-Meier curve per risk group with at-risk counts and the log-rank test; writes ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts
    from lifelines.statistics import multivariate_logrank_test

    test = multivariate_logrank_test(time, groups, event)
    figure, axis = plt.subplots(figsize=(7.5, 5.2))
    fitters, summary = [], {}
    for g, name in enumerate(names):
        mask = groups == g
        if not mask.any():
            continue
        km = KaplanMeierFitter(label=f"{name} (n={int(mask.sum())})").fit(time[mask], event[mask])
        km.plot_survival_function(ax=axis, ci_show=True)
        fitters.append(km)
        summary[name] = {
            "n": int(mask.sum()),
            "events": int(event[mask].sum()),
            "median_survival_days": float(km.median_survival_time_),
        }
    axis.set_xlabel("days")
    axis.set_ylabel("survival probability")
    axis.set_title(f"{title}\nlog-rank p = {test.p_value:.3g}", fontsize=10)
    add_at_risk_counts(*fitters, ax=axis)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return {
        "groups": summary,
        "logrank_p": float(test.p_value),
        "logrank_statistic": float(test.test_statistic),
        "plot": path.name,
    }
