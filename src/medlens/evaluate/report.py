"""Readable evaluation reports: metrics.json, report.md, and ROC / PR / confusion / reliability PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

PLOTS = {"roc": "roc.png", "pr": "pr.png", "confusion": "confusion.png", "calibration": "calibration.png"}


def write_plots(
    out_dir: Path, task: str, y_true: np.ndarray, probs: np.ndarray, label_names: list[str], thresholds: list[float]
) -> list[str]:
    """Plot with scikit-learn's displays on a non-interactive backend; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    curves = _curves(task, y_true, probs, label_names)
    written = []
    for kind, display in (("roc", RocCurveDisplay), ("pr", PrecisionRecallDisplay)):
        fig, ax = plt.subplots(figsize=(5, 5))
        for name, y, p in curves:
            display.from_predictions(y, p, name=name, ax=ax, plot_chance_level=name == curves[0][0])
        title = {"roc": "ROC curve", "pr": "Precision-recall curve"}[kind]
        ax.set_title(f"{title}, positive class: {label_names[1]}" if task == "binary" else title)
        fig.savefig(out_dir / PLOTS[kind], dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(PLOTS[kind])
    if task != "multilabel":
        if task == "binary":
            pred = (probs[:, 1] >= (thresholds[0] if thresholds else 0.5)).astype(int)
        else:
            pred = probs.argmax(axis=1)
        fig, ax = plt.subplots(figsize=(5, 5))
        ConfusionMatrixDisplay.from_predictions(
            y_true, pred, labels=list(range(len(label_names))), display_labels=label_names, ax=ax, colorbar=False
        )
        ax.set_title("Confusion matrix (validation-chosen threshold)" if task == "binary" else "Confusion matrix")
        fig.savefig(out_dir / PLOTS["confusion"], dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(PLOTS["confusion"])
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, y, p in curves[:6]:
        CalibrationDisplay.from_predictions(y, p, n_bins=10, name=name, ax=ax)
    ax.set_title("Reliability diagram")
    fig.savefig(out_dir / PLOTS["calibration"], dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(PLOTS["calibration"])
    return written


def _curves(
    task: str, y_true: np.ndarray, probs: np.ndarray, label_names: list[str]
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if task == "binary":
        return [(label_names[1], y_true, probs[:, 1])]
    if task == "multilabel":
        return [
            (n, y_true[:, k], probs[:, k]) for k, n in enumerate(label_names) if 0 < y_true[:, k].sum() < len(y_true)
        ]
    return [
        (n, (y_true == k).astype(int), probs[:, k])
        for k, n in enumerate(label_names)
        if 0 < (y_true == k).sum() < len(y_true)
    ]


def write_report(out_dir: Path, result: dict[str, Any], plots: list[str]) -> Path:
    """metrics.json plus a Markdown report that embeds the plots."""
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))
    metrics, intervals = result["metrics"], result["confidence_intervals"]
    lines = [
        f"# Evaluation of `{result['model']}` on {result['dataset']} ({result['split']} split, n={result['n']})",
        "",
        f"Task: {result['task']}; labels: {', '.join(result['label_names'])}; "
        f"threshold(s) chosen on validation: {', '.join(f'{t:.3f}' for t in result['thresholds']) or 'arg-max'}.",
        f"95% confidence intervals: percentile bootstrap, {result['n_bootstrap']} resamples of cases.",
        *(
            [f"Positive class: **{result['positive_label']}** (sensitivity, PPV, NPV, F1 and the curves are for it)."]
            if result.get("positive_label")
            else []
        ),
        *(
            [
                f"Out-of-distribution gate: {result['ood_gate']['flagged']} of {result['n']} images "
                f"({result['ood_gate']['flag_rate']:.1%}) flagged as unlike the training images (not assessed)."
            ]
            if "ood_gate" in result
            else []
        ),
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
    ]
    for key, value in metrics.items():
        ci = intervals.get(key)
        ci_text = f"{ci['low']:.3f} - {ci['high']:.3f}" if ci and key != "threshold" else ""
        lines.append(f"| {key} | {value:.4f} | {ci_text} |")
    lines += ["", *(f"![{p.removesuffix('.png')}]({p})" for p in plots), ""]
    lines.append(f"Data: {result['data'].get('file', '')} (sha256 {result['data'].get('sha256', '')[:16]}...).")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
