"""Augmentation presets by registered name, chosen to suit the images.

Chest X-rays are not flipped left-right by default (the heart is on the
left; a flipped film is a different, rarer anatomy). Volumes and
microscopy/dermoscopy-like photos have no preferred orientation.
Transforms are MONAI's, applied per sample on raw intensities before
normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from medlens.registry import Registry

Transform = Callable[[np.ndarray], np.ndarray]
AUGMENTATIONS: Registry[Callable[[int], Transform | None]] = Registry("augmentation")

# Which preset "auto" picks, by the dataset's modality.
AUTO_BY_MODALITY = {"CR": "xray", "DX": "xray", "CT": "volume", "MR": "volume", "US": "xray"}


def resolve_augmentation(name: str, modality: str, spatial_dims: int) -> str:
    if name != "auto":
        AUGMENTATIONS.get(name)  # unknown names raise with "did you mean"
        return name
    preset = AUTO_BY_MODALITY.get(modality, "photo")
    return "volume" if spatial_dims == 3 else ("photo" if preset == "volume" else preset)


def build_augmentation(name: str, spatial_dims: int, seed: int) -> Transform | None:
    transform = AUGMENTATIONS.get(name)(spatial_dims)
    if transform is not None:
        transform.set_random_state(seed=seed)  # type: ignore[attr-defined]
    return transform


@AUGMENTATIONS.register("none")
def make_none(spatial_dims: int) -> Transform | None:
    return None


def _xray_geometry_and_gamma(spatial_dims: int, shift: float) -> list[Transform]:
    """Small rotations (10 degrees), zoom (10%) and shifts of ``shift`` pixels, then gamma: no flips."""
    from monai.transforms import RandAdjustContrast, RandAffine

    return [
        RandAffine(
            prob=0.8,
            rotate_range=math.radians(10),
            scale_range=0.1,
            translate_range=(shift,) * spatial_dims,
            padding_mode="border",
        ),
        RandAdjustContrast(prob=0.3, gamma=(0.8, 1.25)),
    ]


@AUGMENTATIONS.register("xray")
def make_xray(spatial_dims: int) -> Transform:
    """Small rotations, zoom and shifts, gamma; no flips."""
    from monai.transforms import Compose

    return Compose(_xray_geometry_and_gamma(spatial_dims, shift=2.0))


@AUGMENTATIONS.register("radiograph")
def make_radiograph(spatial_dims: int) -> Transform:
    """For radiographs at 224 px or more, read from files of any size: the ``xray`` geometry (shifts of a few
    per cent), gamma, and what resampling and detectors vary: blur, sharpening, lost resolution, a little noise.
    Without them a model learns one resizer's sharpness (measured: a radiograph resized up and down again
    moved a model trained without them from p=0.94 to 0.43)."""
    from monai.transforms import (
        Compose,
        RandGaussianNoise,
        RandGaussianSharpen,
        RandGaussianSmooth,
        RandSimulateLowResolution,
    )

    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    return Compose(
        [
            *_xray_geometry_and_gamma(spatial_dims, shift=8.0),
            RandGaussianSmooth(prob=0.3, sigma_x=(0.3, 1.5), sigma_y=(0.3, 1.5), sigma_z=(0.3, 1.5)),
            RandGaussianSharpen(prob=0.15, alpha=(0.5, 2.0)),
            RandSimulateLowResolution(prob=0.25, downsample_mode="area", upsample_mode=mode, zoom_range=(0.4, 0.9)),
            RandGaussianNoise(prob=0.2, std=0.01),
        ]
    )


@AUGMENTATIONS.register("photo")
def make_photo(spatial_dims: int) -> Transform:
    """Flips on every axis plus small rotations/zoom: for images with no canonical orientation."""
    from monai.transforms import Compose, RandAffine, RandFlip

    flips = [RandFlip(prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
    return Compose(
        [*flips, RandAffine(prob=0.5, rotate_range=math.radians(15), scale_range=0.1, padding_mode="border")]
    )


@AUGMENTATIONS.register("volume")
def make_volume(spatial_dims: int) -> Transform:
    """Flips on every axis and small shifts: cheap enough for 64^3 volumes on a CPU."""
    from monai.transforms import Compose, RandAffine, RandFlip

    flips = [RandFlip(prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
    return Compose([*flips, RandAffine(prob=0.3, translate_range=(2.0,) * spatial_dims, padding_mode="zeros")])
