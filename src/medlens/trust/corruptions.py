"""Acquisition corruptions at five severities, in the spirit of MedMNIST-C (Di Salvo et al. 2024).

Each corruption takes raw images ``(N, C, *spatial)`` in the model's input
intensity range and returns images of the same shape in the same range: noise,
blur, contrast loss, gamma, JPEG compression, resolution loss and an MR bias
field. Severity 1 is a change a radiologist would barely notice; severity 5 is a
clearly degraded study. Sizes are relative to a 28-pixel image, so blur and
resolution loss mean the same thing at 28, 64 or 224 pixels. Deterministic
for a given seed, so every model is scored on the same corrupted images.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

from medlens.errors import ConfigError
from medlens.registry import Registry

CorruptFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
CORRUPTIONS: Registry[CorruptFn] = Registry("corruption")
SEVERITIES = (1, 2, 3, 4, 5)


def _level(values: tuple[float, ...], severity: int) -> float:
    return values[severity - 1]


def _scale(x: np.ndarray) -> float:
    """Image size relative to 28 pixels (the smallest MedMNIST size)."""
    return min(x.shape[2:]) / 28.0


def _per_image_2d(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply a 2D function to every (H, W) plane of every image and channel."""
    flat = x.reshape(-1, *x.shape[-2:])
    return np.stack([fn(plane) for plane in flat]).reshape(x.shape)


def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, _level((0.02, 0.04, 0.06, 0.09, 0.12), severity), x.shape)


def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sigma = _level((0.4, 0.6, 0.8, 1.0, 1.3), severity) * _scale(x)
    return gaussian_filter(x, sigma=(0, 0, *([sigma] * (x.ndim - 2))))


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factor = _level((0.8, 0.65, 0.5, 0.35, 0.2), severity)
    mean = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True)
    return (x - mean) * factor + mean


def gamma(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x, 0, 1) ** _level((1.2, 1.45, 1.75, 2.1, 2.5), severity)


def jpeg(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    quality = int(_level((60, 40, 25, 15, 8), severity))

    def compress(plane: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(np.round(np.clip(plane, 0, 1) * 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
        return np.asarray(Image.open(buffer), dtype=np.float32) / 255.0

    return _per_image_2d(x, compress)


def resolution(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Area-average down by a factor, then linear interpolation back: a coarser acquisition matrix."""
    from skimage.transform import resize

    factor = _level((1.25, 1.5, 2.0, 2.5, 3.0), severity)
    spatial = x.shape[2:]
    low = tuple(max(2, int(round(s / factor))) for s in spatial)
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            small = resize(x[i, c], low, order=1, anti_aliasing=True, preserve_range=True)
            out[i, c] = resize(small, spatial, order=1, anti_aliasing=False, preserve_range=True)
    return out


def bias_field(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative intensity field (MONAI's polynomial bias field), as from an MR receive coil."""
    from monai.transforms import RandBiasField

    strength = _level((0.1, 0.2, 0.3, 0.45, 0.6), severity)
    transform = RandBiasField(degree=3, coeff_range=(-strength, strength), prob=1.0)
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        transform.set_random_state(int(rng.integers(2**31)))
        out[i] = np.asarray(transform(x[i]))
    return out


for _name, _fn in (
    ("gaussian-noise", gaussian_noise),
    ("gaussian-blur", gaussian_blur),
    ("contrast", contrast),
    ("gamma", gamma),
    ("jpeg", jpeg),
    ("resolution", resolution),
    ("bias-field", bias_field),
):
    CORRUPTIONS.add(_name, _fn)


def corrupt(
    images: np.ndarray, name: str, severity: int, intensity_range: tuple[float, float], seed: int = 0
) -> np.ndarray:
    """``images`` (raw, in ``intensity_range``) with corruption ``name`` at ``severity`` 1-5."""
    if severity not in SEVERITIES:
        raise ConfigError(f"corruption severity must be one of {SEVERITIES}, got {severity}")
    fn = CORRUPTIONS.get(name)
    lo, hi = intensity_range
    x01 = (np.asarray(images, dtype=np.float32) - lo) / (hi - lo)
    out = fn(x01, severity, np.random.default_rng(seed))
    return (np.clip(out, 0.0, 1.0) * (hi - lo) + lo).astype(np.float32)
