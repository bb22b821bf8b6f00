"""Plots for the audit: reliability before/after calibration, referral curves, robustness under corruption."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def reliability(
    path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], task: str, label_names: list[str]
) -> Path:
    """Reliability diagram of the positive class (binary) or the predicted class (others), before and after."""
    from sklearn.calibration import calibration_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    for when, (labels, probs) in curves.items():
        if task == "binary":
            y, p = labels, probs[:, 1]
        elif task == "multilabel":
            y, p = labels.ravel(), probs.ravel()
        else:
            y, p = (probs.argmax(axis=1) == labels).astype(int), probs.max(axis=1)
        frac, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")
        ax.plot(mean, frac, "o-", label=f"{when} temperature scaling")
    ax.set_xlabel("predicted probability" + (f" of {label_names[1]}" if task == "binary" else ""))
    ax.set_ylabel("observed frequency")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def referral(path: Path, curves: dict[str, list[dict[str, float]]]) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for method, rows in curves.items():
        f = [r["referred_fraction"] for r in rows]
        for ax, key in zip(axes, ("accuracy", "auc")):
            ax.plot(f, [r.get(key, np.nan) for r in rows], "o-", ms=3, label=method)
    for ax, key in zip(axes, ("accuracy", "AUC")):
        ax.set_xlabel("fraction referred to a radiologist")
        ax.set_ylabel(f"{key} on the cases kept")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Referral curves (most uncertain cases referred first)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def robustness(path: Path, clean: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    plt = _plt()
    key = "auc" if np.isfinite(clean.get("auc", np.nan)) else "accuracy"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["corruption"] for r in rows):
        mine = [r for r in rows if r["corruption"] == name]
        ax.plot([0] + [r["severity"] for r in mine], [clean[key]] + [r[key] for r in mine], "o-", ms=3, label=name)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel(f"test {key}")
    ax.set_title("Robustness to acquisition corruptions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
