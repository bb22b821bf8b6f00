"""Reconstruction metrics as fastMRI defines them: per volume, with the volume's maximum as data range.

NMSE = ||gt - pred||^2 / ||gt||^2; PSNR and SSIM (scikit-image, 7x7 window) use
``data_range = gt.max()`` over the whole volume, SSIM averaged over slices. Scores
of several volumes are then averaged by the caller.
"""

from __future__ import annotations

import numpy as np

from medlens.errors import DataError


def volume_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``{"nmse", "psnr", "ssim"}`` for a ``(slices, H, W)`` volume (a single 2D slice is one volume)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    gt, pred = np.asarray(gt, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if gt.shape != pred.shape:
        raise DataError(f"reconstruction shape {pred.shape} differs from the reference {gt.shape}")
    if gt.ndim == 2:
        gt, pred = gt[None], pred[None]
    maxval = float(gt.max())
    if maxval <= 0:
        raise DataError("reference volume is all zero or negative; PSNR/SSIM need a positive maximum")
    nmse = float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)
    psnr = float("inf") if nmse == 0 else float(peak_signal_noise_ratio(gt, pred, data_range=maxval))
    ssim = float(np.mean([structural_similarity(g, p, data_range=maxval) for g, p in zip(gt, pred)]))
    return {"nmse": nmse, "psnr": psnr, "ssim": ssim}
