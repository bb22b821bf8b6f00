"""Preprocessing shared by training and prediction: one spec, one function."""

from medlens.preprocess.pipeline import Preprocessing, normalize_intensity, prepare_image, resize_image

__all__ = ["Preprocessing", "normalize_intensity", "prepare_image", "resize_image"]
