"""Segmentation metrics per case and label (MONAI): Dice, 95% Hausdorff distance (mm), surface Dice at a tolerance."""

from __future__ import annotations

import math

import numpy as np
import torch


def case_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    label_names: dict[int, str],
    spacing_mm: tuple[float, ...],
    surface_tolerance_mm: float = 1.0,
) -> dict[str, float]:
    """``{"dice_<label>", "hd95_<label>", "nsd_<label>"}`` for every foreground label.

    Conventions for empty structures: both empty -> Dice 1, HD95 0; one empty -> Dice 0, HD95 NaN
    (left out of means and reported as a count), so an empty prediction is never silently scored well.
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    labels = [v for v in sorted(label_names) if v]
    n = max(label_names) + 1
    p = _one_hot(pred, n)
    t = _one_hot(truth, n)
    dice = compute_dice(p, t, include_background=True, ignore_empty=False)[0]
    out: dict[str, float] = {}
    for v in labels:
        name = label_names[v]
        has_p, has_t = bool(p[0, v].any()), bool(t[0, v].any())
        out[f"dice_{name}"] = 1.0 if not (has_p or has_t) else float(dice[v])
        if has_p and has_t:
            hd = compute_hausdorff_distance(p[:, [0, v]], t[:, [0, v]], percentile=95, spacing=list(spacing_mm))
            nsd = compute_surface_dice(
                p[:, [0, v]], t[:, [0, v]], class_thresholds=[surface_tolerance_mm], spacing=list(spacing_mm)
            )
            out[f"hd95_{name}"], out[f"nsd_{name}"] = float(hd[0, 0]), float(nsd[0, 0])
        else:
            out[f"hd95_{name}"] = 0.0 if not (has_p or has_t) else math.nan
            out[f"nsd_{name}"] = 1.0 if not (has_p or has_t) else 0.0
    return out


def mean_foreground_dice(pred: np.ndarray, truth: np.ndarray, label_values: list[int]) -> float:
    """Validation score: mean Dice over ``label_values`` (MONAI; both empty counts as 1), no distances."""
    from monai.metrics import compute_dice

    n = max(int(pred.max()), int(truth.max()), *label_values) + 1
    dice = compute_dice(_one_hot(pred, n), _one_hot(truth, n), include_background=True, ignore_empty=False)[0]
    return float(dice[label_values].mean())


def _one_hot(labels: np.ndarray, n: int) -> torch.Tensor:
    from monai.networks.utils import one_hot

    return one_hot(torch.from_numpy(labels.astype(np.int64))[None, None], num_classes=n).float()
