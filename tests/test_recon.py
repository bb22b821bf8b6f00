"""MRI undersampling simulation on real PGBM-003 slices: exactness, fastMRI masks, metrics, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.errors import ConfigError, DataError
from medlens.io.series import read_dicom_volume
from medlens.recon.metrics import volume_metrics
from medlens.recon.mri import to_kspace, undersample, zero_filled


@pytest.fixture(scope="module")
def t2(data_dir: Path) -> np.ndarray:
    """The real T2 series as (slices, rows, cols) magnitude."""
    volume = read_dicom_volume(data_dir / "dicom" / "mr_pgbm003" / "37830-T2reg-78532")
    return np.transpose(np.asarray(volume.array), (2, 1, 0))[6:16]


def test_fully_sampled_kspace_gives_the_image_back(t2: np.ndarray) -> None:
    image = t2[5]
    masked, magnitude, columns = undersample(to_kspace(image), "equispaced", 1.0, 1.0)
    assert columns.all()
    assert np.allclose(zero_filled(masked), image, atol=1e-3 * image.max())
    assert np.allclose(magnitude, image, atol=1e-3 * image.max())


@pytest.mark.parametrize("kind", ["random", "equispaced"])
def test_fastmri_masks_and_zero_filled_quality_falls_with_acceleration(t2: np.ndarray, kind: str) -> None:
    scores = {}
    for acceleration, centre in ((4, 0.08), (8, 0.04)):
        recon = []
        for i, image in enumerate(t2):
            masked, _, columns = undersample(to_kspace(image), kind, acceleration, centre, seed=i)
            width = columns.size
            centre_lines = int(round(width * centre))
            start = (width - centre_lines + 1) // 2
            assert columns[start : start + centre_lines].all()  # the fully sampled centre
            assert abs(columns.mean() - 1 / acceleration) < 0.05
            recon.append(zero_filled(masked))
        scores[acceleration] = volume_metrics(t2, np.stack(recon))
    assert scores[8]["psnr"] < scores[4]["psnr"] and scores[8]["ssim"] < scores[4]["ssim"]
    assert 0 < scores[4]["nmse"] < scores[8]["nmse"] < 1


def test_metrics_follow_fastmri_definitions(t2: np.ndarray) -> None:
    perfect = volume_metrics(t2, t2)
    assert perfect["nmse"] == 0 and perfect["psnr"] == float("inf") and perfect["ssim"] == pytest.approx(1.0)
    noisy = t2 + np.random.default_rng(0).normal(0, 0.01 * t2.max(), t2.shape)
    mse = np.mean((noisy - t2) ** 2)
    assert volume_metrics(t2, noisy)["psnr"] == pytest.approx(10 * np.log10(t2.max() ** 2 / mse), rel=1e-6)


def test_bad_inputs(t2: np.ndarray) -> None:
    with pytest.raises(DataError, match="expects a magnitude image but got complex"):
        to_kspace(t2[0].astype(np.complex64))
    with pytest.raises(DataError, match=r"k-space must have shape \(1, H, W, 2\)"):
        undersample(torch.zeros(1, 64, 64), "random", 4, 0.08)
    with pytest.raises(ConfigError, match="samples no k-space line"):
        undersample(to_kspace(t2[0]), "random", 10_000, 0.0)
    with pytest.raises(ConfigError, match="choose one of random, equispaced"):
        undersample(to_kspace(t2[0]), "radial", 4, 0.08)
    with pytest.raises(DataError, match="differs from the reference"):
        volume_metrics(t2, t2[:, :10])


def test_compressed_sensing_beats_zero_filled_with_lambda_chosen_on_another_series(
    t2: np.ndarray, data_dir: Path
) -> None:
    """lambda is picked on a FLAIR slice (validation), then applied to T2 slices (test)."""
    from medlens.recon.mri import cs_reconstruct

    flair = np.asarray(read_dicom_volume(data_dir / "dicom" / "mr_pgbm003" / "36468-FLAIRreg-58706").array)[:, :, 11].T
    masked, _, columns = undersample(to_kspace(flair), "random", 4, 0.08, seed=0)
    best = max(
        (3e-5, 1e-4, 3e-4, 1e-3),
        key=lambda lam: volume_metrics(flair, cs_reconstruct(masked, columns, lamda=lam, iterations=30))["psnr"],
    )
    gains = []
    for i, image in enumerate(t2[:3]):
        masked, _, columns = undersample(to_kspace(image), "random", 4, 0.08, seed=100 + i)
        gains.append(
            volume_metrics(image, cs_reconstruct(masked, columns, lamda=best, iterations=30))["psnr"]
            - volume_metrics(image, zero_filled(masked))["psnr"]
        )
    assert np.mean(gains) > 0.0, gains  # small on magnitude-only simulation at 4x (about +0.3 dB): see README
    with pytest.raises(ConfigError, match="choose one of l1-wavelet, total-variation"):
        cs_reconstruct(masked, columns, method="tikhonov")


@pytest.mark.parametrize(
    "network,kwargs",
    [
        ("unet-recon", {"features": (8, 8, 16, 16, 32, 8)}),
        ("unrolled-unet", {"iterations": 2, "features": (8, 8, 16, 16, 32, 8)}),
        ("varnet", {"cascades": 2, "features": (8, 8, 16, 16, 32, 8)}),
    ],
)
def test_learned_reconstruction_keeps_the_measured_lines(
    t2: np.ndarray, tmp_path: Path, network: str, kwargs: dict
) -> None:
    """A briefly trained network: whatever it predicts, data consistency restores the sampled k-space."""
    from medlens.recon.learn import EnhanceTrainConfig, MRIMaskConfig, data_consistency, mri_reconstruct, train_mri

    cfg = EnhanceTrainConfig(network=network, network_kwargs=kwargs, epochs=1, samples_per_epoch=4, batch_size=2)
    model, info = train_mri(list(t2[:4]), list(t2[4:6]), cfg, tmp_path, MRIMaskConfig(accelerations=(4,)))
    assert len(info["history"]) == 1
    masked, _, columns = undersample(to_kspace(t2[7]), "random", 4, 0.08, seed=3)
    recon = mri_reconstruct(model, masked, columns)
    assert recon.shape == t2[7].shape and np.isfinite(recon).all()
    # data consistency keeps measured lines: the truth passes unchanged, an empty guess becomes the zero-filled image
    assert np.allclose(data_consistency(t2[7], masked, columns), t2[7], atol=1e-3 * t2[7].max())
    assert np.allclose(
        data_consistency(np.zeros_like(t2[7]), masked, columns), zero_filled(masked), atol=1e-3 * t2[7].max()
    )
