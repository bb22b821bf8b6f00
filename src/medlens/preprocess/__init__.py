"""Preprocessing shared by training and prediction: one spec, one function."""

from medlens.preprocess.pipeline import (
    PER_IMAGE,
    PER_IMAGE_RANGE,
    Preprocessing,
    normalize_intensity,
    prepare_image,
    rescale_per_image,
    resize_image,
)

__all__ = [
    "PER_IMAGE",
    "PER_IMAGE_RANGE",
    "Preprocessing",
    "rescale_per_image",
    "normalize_intensity",
    "prepare_image",
    "resize_image",
]
