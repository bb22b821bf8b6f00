"""Performance per subgroup (site, sex, age band, scanner) with confidence intervals and the largest gap.

Groups come from the metadata columns of a folder dataset's CSV. A group too
small to judge (fewer than ``MIN_CASES`` cases, or fewer than ``MIN_PER_CLASS``
of either class for a binary task) is reported with a warning rather than a
number that looks more certain than it is. Numeric columns named like ``age``
are cut into bands first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medlens.errors import DataError
from medlens.evaluate.bootstrap import bootstrap_intervals

MIN_CASES = 30
MIN_PER_CLASS = 5
AGE_BANDS = (0, 18, 40, 60, 80, 200)
GAP_METRICS = ("auc", "accuracy", "sensitivity", "specificity")


def group_values(metadata: Sequence[dict[str, str]], column: str) -> list[str]:
    """Each case's group under ``column``; ages become bands like ``40-59``; missing values become ``unknown``."""
    values = [str(row.get(column, "")).strip() or "unknown" for row in metadata]
    if "age" in column.lower():
        banded = []
        for v in values:
            try:
                age = float(v.rstrip("YyMmDd"))
            except ValueError:
                banded.append("unknown")
                continue
            k = int(np.searchsorted(AGE_BANDS, age, side="right")) - 1
            banded.append(f"{AGE_BANDS[k]}-{AGE_BANDS[k + 1] - 1}" if k < len(AGE_BANDS) - 2 else f"{AGE_BANDS[k]}+")
        return banded
    return values


def check_columns(metadata: Sequence[dict[str, str]], columns: Sequence[str]) -> None:
    available = sorted({k for row in metadata for k in row})
    if not metadata:
        raise DataError(
            "subgroup analysis needs metadata columns (site, sex, age, ...) in the data's CSV, and this data has none"
        )
    unknown = [c for c in columns if c not in available]
    if unknown:
        raise DataError(f"unknown metadata column(s) {', '.join(unknown)}; the data has: {', '.join(available)}")
    for column in columns:
        if all(not str(row.get(column, "")).strip() for row in metadata):
            raise DataError(
                f"metadata column {column!r} is empty for every case: no group to compare; fill it in "
                "the CSV or leave it out of --groups"
            )


def subgroup_metrics(
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    labels: np.ndarray,
    probs: np.ndarray,
    metadata: Sequence[dict[str, str]],
    columns: Sequence[str],
    task: str = "binary",
    n_bootstrap: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Per column and group: n, metrics, 95% bootstrap CIs, a warning when too small; and the largest gap."""
    check_columns(metadata, columns)
    result: dict[str, Any] = {}
    for column in columns:
        groups = np.asarray(group_values(metadata, column))
        rows = []
        for group in sorted(set(groups.tolist())):
            index = np.where(groups == group)[0]
            y, p = labels[index], probs[index]
            row: dict[str, Any] = {"group": group, "n": int(len(index))}
            warning = _too_small(y, task)
            if warning:
                row["warning"] = warning
            row["metrics"] = metric_fn(y, p)
            if not warning:
                row["ci"] = bootstrap_intervals(metric_fn, y, p, n_resamples=n_bootstrap, seed=seed)
            rows.append(row)
        result[column] = {"groups": rows, "largest_gap": _largest_gaps(rows)}
    return result


def _too_small(y: np.ndarray, task: str) -> str:
    if len(y) < MIN_CASES:
        return f"only {len(y)} cases (< {MIN_CASES}): too few to judge"
    if task == "binary":
        counts = np.bincount(y.astype(int), minlength=2)
        if counts.min() < MIN_PER_CLASS:
            return f"only {counts.min()} case(s) of one class (< {MIN_PER_CLASS}): AUC and sensitivity are unreliable"
    return ""


def _largest_gaps(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """For each metric, the best and worst judged group (too-small groups are left out)."""
    judged = [r for r in rows if "warning" not in r]
    gaps = {}
    for metric in GAP_METRICS:
        values = [(r["metrics"].get(metric, float("nan")), r["group"]) for r in judged]
        values = [(v, g) for v, g in values if np.isfinite(v)]
        if len(values) >= 2:
            (lo, g_lo), (hi, g_hi) = min(values), max(values)
            gaps[metric] = {"gap": float(hi - lo), "best": g_hi, "worst": g_lo}
    return gaps
