"""The one preprocessing function training and inference share, and the network the plan describes."""

from __future__ import annotations

import numpy as np
from torch import nn

from medlens.io.volume import resample_volume
from medlens.segment.plan import SegPlan
from medlens.types import Volume

SPACING_TOLERANCE = 0.01  # relative: closer than 1% to the target spacing is not resampled


def needs_resampling(volume: Volume, plan: SegPlan) -> bool:
    current, target = np.asarray(volume.spacing_mm), np.asarray(plan.target_spacing_mm)
    return bool(np.any(np.abs(current - target) > SPACING_TOLERANCE * target))


def preprocess_image(volume: Volume, plan: SegPlan) -> tuple[np.ndarray, Volume]:
    """Resample to the plan's spacing (SimpleITK, linear) and normalise: ``(1, X, Y, Z)`` float32 and its grid."""
    grid = resample_volume(volume, plan.target_spacing_mm, "linear") if needs_resampling(volume, plan) else volume
    x = np.asarray(grid.array, dtype=np.float32)
    if plan.normalization == "ct":
        low, high = plan.clip_hu or (float(x.min()), float(x.max()))
        x = (np.clip(x, low, high) - (plan.ct_mean or 0.0)) / max(plan.ct_std or 1.0, 1e-6)
    else:  # MR and others: per-image z-score
        x = (x - x.mean()) / max(float(x.std()), 1e-6)
    return np.ascontiguousarray(x[None], dtype=np.float32), grid


def preprocess_label(label: np.ndarray, volume: Volume, plan: SegPlan) -> np.ndarray:
    """The label map on the same grid as :func:`preprocess_image` (nearest neighbour)."""
    if not needs_resampling(volume, plan):
        return label.astype(np.int64)
    grid = resample_volume(volume.with_array(label.astype(np.float32)), plan.target_spacing_mm, "nearest")
    return np.rint(grid.array).astype(np.int64)


def build_unet(plan: SegPlan) -> nn.Module:
    """MONAI's DynUNet (the nnU-Net architecture) with the plan's depth, strides and filters."""
    from monai.networks.nets import DynUNet

    return DynUNet(
        spatial_dims=plan.dims,
        in_channels=1,
        out_channels=plan.n_classes,
        kernel_size=[[3] * plan.dims] * len(plan.strides),
        strides=[list(s) for s in plan.strides],
        upsample_kernel_size=[list(s) for s in plan.strides[1:]],
        filters=list(plan.filters),
        norm_name="instance",
        deep_supervision=False,
        res_block=False,
    )
