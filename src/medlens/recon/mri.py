"""Single-coil Cartesian MRI simulation from real magnitude images, fastMRI-style undersampling, zero-filled recon.

The FFTs and the fastMRI masks are MONAI's (``fftn_centered_t``, ``RandomKspaceMask``,
``EquispacedKspaceMask``: phase-encoding columns along the last image axis, a fully
sampled centre). What is simulated is stated: k-space is the centred orthonormal 2D
FFT of a real magnitude image (no coil sensitivities, no phase), so results are an
upper bound on what the same method does on raw scanner data.
"""

from __future__ import annotations

import numpy as np
import torch

from medlens.errors import ConfigError, DataError

MASKS = ("random", "equispaced")


def to_kspace(image: np.ndarray) -> torch.Tensor:
    """Centred 2D FFT of a real ``(H, W)`` magnitude image as ``(1, H, W, 2)`` (real, imaginary)."""
    from monai.networks.blocks.fft_utils_t import fftn_centered_t

    if np.iscomplexobj(image):
        raise DataError(
            "to_kspace expects a magnitude image but got complex values; pass np.abs(image), "
            "or give k-space directly to undersample()"
        )
    if image.ndim != 2:
        raise DataError(f"to_kspace expects one 2D slice (H, W), got shape {image.shape}; loop over slices")
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    complex_image = torch.stack([x, torch.zeros_like(x)], dim=-1)[None]
    return fftn_centered_t(complex_image, spatial_dims=2, is_complex=True)


def undersample(
    kspace: torch.Tensor, mask: str, acceleration: float, center_fraction: float, seed: int = 0
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Mask k-space columns; returns (masked k-space, zero-filled magnitude ``(H, W)``, sampled-column mask ``(W,)``)."""
    from monai.apps.reconstruction.transforms.array import EquispacedKspaceMask, RandomKspaceMask

    if mask not in MASKS:
        raise ConfigError(f"mask {mask!r}: choose one of {', '.join(MASKS)}")
    if kspace.ndim != 4 or kspace.shape[0] != 1 or kspace.shape[-1] != 2:
        raise DataError(
            f"k-space must have shape (1, H, W, 2) (coil, rows, columns, real/imaginary), got {tuple(kspace.shape)}; "
            "make it with to_kspace(image)"
        )
    if not (acceleration >= 1 and 0 <= center_fraction <= 1):
        raise ConfigError(
            f"acceleration {acceleration} must be >= 1 and center_fraction {center_fraction} within [0, 1]"
        )
    if acceleration == 1:  # fully sampled: nothing to mask (MONAI's mask formula divides by zero here)
        return kspace, zero_filled(kspace), np.ones(kspace.shape[2], dtype=bool)
    transform = (RandomKspaceMask if mask == "random" else EquispacedKspaceMask)(
        center_fractions=[center_fraction], accelerations=[acceleration], spatial_dims=2, is_complex=True
    )
    transform.set_random_state(seed)
    masked, magnitude = transform(kspace)
    columns = np.asarray(transform.mask).reshape(-1) > 0
    if not columns.any():
        raise ConfigError(
            f"the {mask} mask at {acceleration}x with centre fraction {center_fraction} samples no k-space "
            "line; lower the acceleration or raise the centre fraction"
        )
    return masked, np.asarray(magnitude, dtype=np.float32).reshape(kspace.shape[1:3]), columns


def zero_filled(masked_kspace: torch.Tensor) -> np.ndarray:
    """Inverse centred FFT of the masked k-space, magnitude ``(H, W)``: the baseline every method must beat."""
    from monai.apps.reconstruction.complex_utils import complex_abs
    from monai.networks.blocks.fft_utils_t import ifftn_centered_t

    return np.asarray(
        complex_abs(ifftn_centered_t(masked_kspace, spatial_dims=2, is_complex=True))[0], dtype=np.float32
    )


CS_METHODS = ("l1-wavelet", "total-variation")


def kspace_to_complex(kspace: torch.Tensor) -> np.ndarray:
    """``(1, H, W, 2)`` real/imaginary tensor -> ``(1, H, W)`` complex array (sigpy's layout: coils first)."""
    array = kspace.detach().cpu().numpy()
    return (array[..., 0] + 1j * array[..., 1]).astype(np.complex64)


def cs_reconstruct(
    masked_kspace: torch.Tensor,
    columns: np.ndarray,
    method: str = "l1-wavelet",
    lamda: float = 1e-4,
    iterations: int = 50,
) -> np.ndarray:
    """Compressed sensing with sigpy (single coil, unit sensitivity): L1-wavelet or total-variation, magnitude ``(H, W)``.

    ``lamda`` is relative to the largest k-space magnitude, so one value suits images of any scale;
    choose it on validation data, not on the test slices.
    """
    import sigpy.mri.app as app

    if method not in CS_METHODS:
        raise ConfigError(f"method {method!r}: choose one of {', '.join(CS_METHODS)}")
    k = kspace_to_complex(masked_kspace)
    if columns.shape != (k.shape[-1],):
        raise DataError(f"column mask has shape {columns.shape}, k-space has {k.shape[-1]} columns")
    weights = np.broadcast_to(columns[None, None, :].astype(np.float32), k.shape)
    scale = float(np.abs(k).max()) or 1.0
    recon_type = app.L1WaveletRecon if method == "l1-wavelet" else app.TotalVariationRecon
    result = recon_type(k, np.ones_like(k), lamda * scale, weights=weights, max_iter=iterations, show_pbar=False).run()
    return np.abs(np.asarray(result)).astype(np.float32)
