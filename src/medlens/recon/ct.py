"""Low-dose CT simulated in the projection domain from real full-dose slices, and CT image-quality metrics.

The simulation (Zeng et al., Med Phys 2015 "A simple low-dose x-ray CT simulation from
high-dose scan"): HU -> linear attenuation (mu_water 0.0192/mm, about 70 keV), parallel-beam
line integrals with scikit-image's ``radon``, Poisson counts, log, filtered back-projection
with ``iradon`` (ramp filter). The real slice already carries full-dose noise, so only the
*extra* noise of the lower dose is added: Poisson at an effective flux ``I0 * d / (1 - d)``
for dose fraction ``d`` makes the total noise variance that of flux ``d * I0``. Only that
noise image (FBP of noisy minus FBP of clean projections) is added, so the anatomy and
texture stay those of the real scan and FBP's own blur does not count as "dose".
Stated assumptions: monoenergetic, parallel beam, no electronic noise, no bowtie filter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medlens.errors import ConfigError, DataError

MU_WATER_PER_MM = 0.0192


@dataclass(frozen=True)
class DoseSimulation:
    """``full_dose_photons``: incident photons per detector ray and view at full dose (stated, not measured)."""

    full_dose_photons: float = 1e7
    views: int = 512  # over 180 degrees

    def to_dict(self) -> dict:
        return asdict(self)


def _check_hu(hu: np.ndarray) -> np.ndarray:
    hu = np.asarray(hu, dtype=np.float64)
    if hu.ndim != 2:
        raise DataError(f"low-dose simulation works on one 2D slice (H, W), got shape {hu.shape}; loop over slices")
    if np.iscomplexobj(hu) or not np.isfinite(hu).all():
        raise DataError("CT slice has complex or non-finite values; it must be real Hounsfield units")
    if hu.min() >= 0 and hu.max() > 500:
        raise DataError(
            f"CT slice ranges {hu.min():.0f}..{hu.max():.0f} with no negative value: it looks like raw stored "
            "values, not Hounsfield units (air is -1000 HU); apply RescaleSlope/RescaleIntercept first"
        )
    return hu


def _circle(shape: tuple[int, int]) -> np.ndarray:
    """The reconstruction circle of ``radon(circle=True)`` (the inscribed disc)."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    radius = min(shape) // 2
    return (rows - shape[0] // 2) ** 2 + (cols - shape[1] // 2) ** 2 <= radius**2


def simulate_low_dose(
    hu: np.ndarray, pixel_mm: float, dose_fraction: float, seed: int = 0, sim: DoseSimulation = DoseSimulation()
) -> np.ndarray:
    """A ``dose_fraction`` (e.g. 0.25, 0.1) version of a real full-dose slice in HU, float32 ``(H, W)``."""
    return simulate_low_doses(hu, pixel_mm, [(dose_fraction, seed)], sim)[0]


def simulate_low_doses(
    hu: np.ndarray, pixel_mm: float, settings: list[tuple[float, int]], sim: DoseSimulation = DoseSimulation()
) -> list[np.ndarray]:
    """Several ``(dose_fraction, seed)`` realisations of one slice; the forward projection is done once."""
    from skimage.transform import iradon, radon

    hu = _check_hu(hu)
    for dose_fraction, _ in settings:
        if not 0 < dose_fraction < 1:
            raise ConfigError(
                f"dose_fraction {dose_fraction} must be within (0, 1): 0.25 is a quarter of the full dose"
            )
    if pixel_mm <= 0:
        raise DataError(f"pixel spacing {pixel_mm} mm must be positive (DICOM PixelSpacing)")
    size = max(hu.shape)
    square = np.full((size, size), -1000.0)  # pad to a square with air; radon's circle is then the inscribed disc
    top, left = (size - hu.shape[0]) // 2, (size - hu.shape[1]) // 2
    square[top : top + hu.shape[0], left : left + hu.shape[1]] = hu
    mu = np.clip(MU_WATER_PER_MM * (1 + square / 1000.0), 0, None) * pixel_mm * _circle(square.shape)
    theta = np.linspace(0.0, 180.0, sim.views, endpoint=False)
    line_integrals = radon(mu, theta, circle=True)
    out = []
    for dose_fraction, seed in settings:
        flux = sim.full_dose_photons * dose_fraction / (1 - dose_fraction)
        counts = np.random.default_rng(seed).poisson(flux * np.exp(-line_integrals))
        noisy = -np.log(np.maximum(counts, 1) / flux)  # zero counts (photon starvation) clipped to one photon
        noise_mu = iradon(noisy - line_integrals, theta, circle=True, filter_name="ramp", output_size=size)
        noise_hu = noise_mu / (MU_WATER_PER_MM * pixel_mm) * 1000.0
        out.append((hu + noise_hu[top : top + hu.shape[0], left : left + hu.shape[1]]).astype(np.float32))
    return out


WINDOW_HU = (-160.0, 240.0)  # abdominal soft tissue, W400 L40


def ct_metrics(
    reference_hu: np.ndarray, test_hu: np.ndarray, window: tuple[float, float] = WINDOW_HU
) -> dict[str, float]:
    """RMSE in HU over the whole image; PSNR and SSIM after clipping both to ``window`` (data range = its width)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref, test = np.asarray(reference_hu, dtype=np.float64), np.asarray(test_hu, dtype=np.float64)
    if ref.shape != test.shape:
        raise DataError(f"image shape {test.shape} differs from the reference {ref.shape}")
    low, high = window
    ref_w, test_w = np.clip(ref, low, high), np.clip(test, low, high)
    if ref.ndim == 2:
        ref_w, test_w = ref_w[None], test_w[None]
    rmse = float(np.sqrt(np.mean((ref - test) ** 2)))
    psnr = float(peak_signal_noise_ratio(ref_w, test_w, data_range=high - low)) if rmse > 0 else float("inf")
    ssim = float(np.mean([structural_similarity(r, t, data_range=high - low) for r, t in zip(ref_w, test_w)]))
    return {"rmse_hu": rmse, "psnr": psnr, "ssim": ssim}


def nlm_denoise(hu: np.ndarray, strength: float = 0.8, patch: int = 5, distance: int = 6) -> np.ndarray:
    """Non-local means (scikit-image) with the noise sigma estimated from the image; ``strength`` scales h."""
    from skimage.restoration import denoise_nl_means, estimate_sigma

    hu = np.asarray(hu, dtype=np.float32)
    sigma = float(estimate_sigma(hu))
    return denoise_nl_means(
        hu, h=strength * sigma, sigma=sigma, patch_size=patch, patch_distance=distance, fast_mode=True
    ).astype(np.float32)
