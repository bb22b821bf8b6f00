"""Learned CT denoising and super-resolution: patch training, whole-image inference, the classical baselines.

Intensity conventions are fixed here and recorded in the bundle, because a network
only works on the scale it was trained on:
- CT denoising works in HU / 1000 (air -1, water 0), so one model serves any CT;
- super-resolution scales each image by its low-resolution input's 0.5-99.5 percentile
  range (known at inference time) and undoes it after, so CT and MR share one model.

Super-resolution degrades by area averaging (what a coarser detector or thicker
acquisition grid does) and the network refines the bicubic upsampling of that,
so bicubic interpolation is both the baseline and the network's starting point.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from medlens.errors import DataError

CT_SCALE_HU = 1000.0


class PatchPairs(torch.utils.data.Dataset):
    """Whole batches of random aligned (input, target) patches with random flips, from whole-image pairs.

    ``noise_scale = (low, high)`` multiplies each patch's degradation (input - target) by a random
    factor: for CT this is dose augmentation, since quantum noise amplitude goes as
    sqrt((1 - d) / d) (Gaussian approximation of Poisson at clinical counts), so a denoiser
    trained on one patient's noise level also meets the lower and higher levels of other
    patients and body parts.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[np.ndarray, np.ndarray]],
        patch: int,
        batches: int,
        batch_size: int,
        seed: int,
        noise_scale: tuple[float, float] | None = None,
    ) -> None:
        self.noise_scale = noise_scale
        small = [p[0].shape for p in pairs if min(p[0].shape) < patch]
        if small:
            raise DataError(
                f"training images {small[:3]} are smaller than the {patch}-pixel patch; lower the patch size"
            )
        self.pairs, self.patch, self.batches, self.batch_size = list(pairs), patch, batches, batch_size
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = [], []
        for _ in range(self.batch_size):
            x, y = self.pairs[int(self.rng.integers(len(self.pairs)))]
            r = int(self.rng.integers(x.shape[0] - self.patch + 1))
            c = int(self.rng.integers(x.shape[1] - self.patch + 1))
            px, py = x[r : r + self.patch, c : c + self.patch], y[r : r + self.patch, c : c + self.patch]
            if self.rng.random() < 0.5:
                px, py = px[:, ::-1], py[:, ::-1]
            if self.rng.random() < 0.5:
                px, py = px[::-1], py[::-1]
            if self.noise_scale is not None:
                px = py + self.rng.uniform(*self.noise_scale) * (px - py)
            inputs.append(np.ascontiguousarray(px))
            targets.append(np.ascontiguousarray(py))
        return torch.from_numpy(np.stack(inputs))[:, None].float(), torch.from_numpy(np.stack(targets))[:, None].float()


@torch.no_grad()
def _apply(model: nn.Module, image: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None])[0, 0].numpy()


def denoise_ct(model: nn.Module, hu: np.ndarray) -> np.ndarray:
    """A low-dose slice in HU -> denoised slice in HU (float32, same shape)."""
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 2:
        raise DataError(f"denoise_ct takes one 2D slice (H, W), got shape {hu.shape}")
    return (_apply(model, hu / CT_SCALE_HU) * CT_SCALE_HU).astype(np.float32)


def degrade(image: np.ndarray, scale: int) -> np.ndarray:
    """Area-average downsampling by an integer factor (the image is cropped to a multiple of it)."""
    from skimage.transform import downscale_local_mean

    image = crop_to_multiple(np.asarray(image, dtype=np.float32), scale)
    return downscale_local_mean(image, (scale, scale)).astype(np.float32)


def crop_to_multiple(image: np.ndarray, scale: int) -> np.ndarray:
    rows, cols = (image.shape[0] // scale) * scale, (image.shape[1] // scale) * scale
    if rows == 0 or cols == 0:
        raise DataError(f"image {image.shape} is smaller than the scale factor {scale}")
    return image[:rows, :cols]


def bicubic(low: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic upsampling (scikit-image, order 3) to ``scale`` times the size: the baseline."""
    from skimage.transform import resize

    shape = (low.shape[0] * scale, low.shape[1] * scale)
    return resize(
        np.asarray(low, dtype=np.float32), shape, order=3, mode="reflect", anti_aliasing=False, preserve_range=True
    ).astype(np.float32)


def intensity_range(image: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(image, [0.5, 99.5])
    return float(low), float(max(high - low, 1e-6))


def sr_pair(image: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(normalised bicubic input, normalised target) for training, both scaled by the low-resolution input."""
    target = crop_to_multiple(np.asarray(image, dtype=np.float32), scale)
    low = degrade(target, scale)
    offset, width = intensity_range(low)
    return (bicubic(low, scale) - offset) / width, (target - offset) / width


def upscale(model: nn.Module, low: np.ndarray, scale: int) -> np.ndarray:
    """A low-resolution slice -> ``scale`` times larger, in the input's units."""
    if low.ndim != 2:
        raise DataError(f"upscale takes one 2D slice (H, W), got shape {low.shape}")
    offset, width = intensity_range(low)
    return (_apply(model, (bicubic(low, scale) - offset) / width) * width + offset).astype(np.float32)
