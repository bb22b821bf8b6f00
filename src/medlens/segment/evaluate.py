"""The segmentation evaluation stage: segment each case from its raw files, score it (per-case CSV + summary with CIs)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.errors import ConfigError
from medlens.evaluate.bootstrap import bootstrap_intervals
from medlens.segment.data import load_seg_dataset, read_pair
from medlens.segment.infer import label_volumes_ml, segment_volume
from medlens.segment.metrics import case_metrics
from medlens.segment.plan import SegPlan

if TYPE_CHECKING:
    from medlens.segment.bundle import SegmenterBundle


def evaluate_segmentation(
    bundle: SegmenterBundle,
    data: str | Path,
    out_dir: str | Path,
    split: str = "test",
    tta: bool = False,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Segment the split's cases from their raw files (the same path users take), score against the labels.

    Writes ``per_case.csv`` and ``metrics.json`` (means and percentile-bootstrap 95% CIs over cases).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_seg_dataset(data)
    ids = bundle.manifest.get("split", {}).get(split) if split in ("train", "val", "test") else None
    if split == "all":
        ids = [c.case_id for c in dataset.cases if c.label is not None]
    if not ids:
        raise ConfigError(
            f"split {split!r}: the bundle records no such cases; use --split all to score every labelled case"
        )
    by_id = {c.case_id: c for c in dataset.cases}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ConfigError(
            f"{len(missing)} case(s) of split {split!r} are not in {data} (e.g. {missing[0]}); wrong dataset?"
        )
    rows, seconds = [], []
    for case_id in ids:
        volume, label = read_pair(by_id[case_id])
        started = time.perf_counter()
        pred = segment_volume(bundle.model, volume, bundle.plan, bundle.postprocess, tta=tta)
        seconds.append(time.perf_counter() - started)
        metrics = case_metrics(pred.array.astype(np.uint8), label, bundle.plan.label_names, volume.spacing_mm)
        rows.append(
            {
                "case": case_id,
                **metrics,
                **{f"ml_{k}": v for k, v in label_volumes_ml(pred, bundle.plan.label_names).items()},
            }
        )
    summary = _summarise(rows, bundle.plan, n_bootstrap, seed)
    summary.update({"split": split, "n": len(rows), "tta": tta, "seconds_per_case": float(np.mean(seconds))})
    with (out / "per_case.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    return summary


def _summarise(rows: list[dict[str, Any]], plan: SegPlan, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Means over cases (finite values only) and percentile-bootstrap 95% CIs (the project's bootstrap)."""
    keys = [k for k in rows[0] if k != "case" and not k.startswith("ml_")]
    table = np.asarray([[r[k] for k in keys] for r in rows], dtype=float)
    fg = [plan.label_names[v] for v in plan.label_names if v]
    dice_cols = [keys.index(f"dice_{n}") for n in fg]

    def summary(sample: np.ndarray, _: np.ndarray) -> dict[str, float]:
        means = dict(zip(keys, _column_means(sample).tolist()))
        return {**means, "mean_dice": float(np.mean(sample[:, dice_cols]))}

    return {
        "metrics": summary(table, table),
        "confidence_intervals": bootstrap_intervals(summary, table, table, n_resamples=n_bootstrap, seed=seed),
        "undefined_hd95": {n: int(np.isnan(table[:, keys.index(f"hd95_{n}")]).sum()) for n in fg},
    }


def _column_means(table: np.ndarray) -> np.ndarray:
    """Means over finite values per column; NaN where a column has none (e.g. HD95 when a label is never found)."""
    finite = np.isfinite(table)
    counts = finite.sum(axis=0)
    sums = np.where(finite, table, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
