"""The shipped reconstruction/enhancement bundles reproduce their benchmark test numbers (same slices, masks, noise)."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.recon.bundle import load_enhancer

TOLERANCE_DB = 0.1  # float16 storage of the weights moves PSNR by a few hundredths of a dB


@pytest.mark.parametrize("acceleration", [4, 8])
def test_mri_bundle_reproduces_its_benchmark(data_dir, acceleration: int) -> None:
    from medlens.recon.data import mri_test_cases
    from medlens.recon.learn import mri_reconstruct
    from medlens.recon.metrics import volume_metrics
    from medlens.recon.mri import zero_filled

    bundle = load_enhancer("mri-recon", "mri-reconstruction")
    cases = mri_test_cases(acceleration)
    truth = np.stack([c[0] for c in cases])
    recon = np.stack([mri_reconstruct(bundle.model, masked, columns) for _, masked, columns in cases])
    expected = bundle.manifest["metrics"]["test"][f"{acceleration}x"]
    got = volume_metrics(truth, recon)
    assert got["psnr"] == pytest.approx(expected["psnr"], abs=TOLERANCE_DB)
    assert got["ssim"] == pytest.approx(expected["ssim"], abs=0.003)
    assert got["psnr"] > volume_metrics(truth, np.stack([zero_filled(m) for _, m, _ in cases]))["psnr"] + 1.0


def test_ct_denoise_bundle_reproduces_its_benchmark_at_10_percent_dose(data_dir) -> None:
    from medlens.recon.ct import ct_metrics
    from medlens.recon.data import ct_pairs
    from medlens.recon.enhance import denoise_ct

    bundle = load_enhancer("ct-denoise", "ct-denoising")
    pairs = ct_pairs("test", realisations=2, doses=(0.1,))
    psnr = np.mean([ct_metrics(hu, denoise_ct(bundle.model, low))["psnr"] for low, hu, _ in pairs])
    noisy = np.mean([ct_metrics(hu, low)["psnr"] for low, hu, _ in pairs])
    assert psnr == pytest.approx(bundle.manifest["metrics"]["test"]["10%"]["psnr"], abs=TOLERANCE_DB)
    assert psnr > noisy


def test_upscale_bundle_reproduces_its_benchmark_on_mr_2x(data_dir) -> None:
    from medlens.recon.data import mr_slices
    from medlens.recon.enhance import bicubic, crop_to_multiple, degrade, upscale
    from medlens.recon.metrics import volume_metrics

    bundle = load_enhancer("upscale", "super-resolution")
    images = mr_slices("test")
    truth = np.stack([crop_to_multiple(im, 2) for im in images])
    lows = [degrade(im, 2) for im in images]
    got = volume_metrics(truth, np.stack([upscale(bundle.model, low, 2) for low in lows]))
    assert got["psnr"] == pytest.approx(bundle.manifest["metrics"]["test"]["MR 2x"]["psnr"], abs=TOLERANCE_DB)
    assert got["psnr"] > volume_metrics(truth, np.stack([bicubic(low, 2) for low in lows]))["psnr"]
