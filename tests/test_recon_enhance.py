"""Low-dose CT simulation physics, the reconstruct/denoise/upscale commands on real DICOM, bad input.

Networks here are small and untrained unless the test is about a shipped bundle:
these tests check geometry, units and errors, which do not depend on the weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medlens.cli import app
from medlens.errors import ConfigError, DataError
from medlens.io.series import read_dicom_volume
from medlens.recon.bundle import save_enhance_bundle
from medlens.recon.networks import build_recon_network

runner = CliRunner(env={"COLUMNS": "250"})
TINY = {
    "redcnn": ("ct-denoising", {"width": 4}),
    "residual-unet": ("super-resolution", {"features": [4, 4, 8, 8, 16, 4]}),
    "unet-recon": ("mri-reconstruction", {"features": [4, 4, 8, 8, 16, 4]}),
}


@pytest.fixture(scope="module")
def tiny_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for network, (task, kwargs) in TINY.items():
        out[task] = save_enhance_bundle(
            root / task,
            build_recon_network(network, **kwargs),
            task,
            network,
            kwargs,
            {
                "input": {"scales": [2, 4], "mask": "random"},
                "summary": "untrained",
                "data": {"dataset": "none", "licence": "none"},
            },
        )
    return out


@pytest.fixture()
def kits(data_dir: Path, tmp_path: Path) -> Path:
    """Three real KiTS CT slices (uneven positions) copied into a series folder."""
    folder = tmp_path / "ct"
    folder.mkdir()
    for name in ("CT20.dcm", "CT24.dcm", "CT26.dcm"):
        shutil.copy(data_dir / "dicom" / "ct_kits_slices" / name, folder / name)
    return folder


@pytest.fixture()
def t2_subset(data_dir: Path, tmp_path: Path) -> Path:
    """Three consecutive slices of the real PGBM-003 T2 series."""
    source = data_dir / "dicom" / "mr_pgbm003" / "37830-T2reg-78532"
    folder = tmp_path / "t2"
    folder.mkdir()
    files = sorted(
        source.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
    )
    for f in files[9:12]:
        shutil.copy(f, folder / f.name)
    return folder


def test_low_dose_noise_follows_the_photon_statistics(data_dir: Path) -> None:
    """Quantum noise variance scales as 1/dose: the extra noise added for dose d has variance ~ (1 - d) / d."""
    from skimage.transform import downscale_local_mean

    from medlens.recon.ct import simulate_low_doses

    volume = read_dicom_volume(data_dir / "dicom" / "ct_kits_slices" / "CT20.dcm")
    hu = downscale_local_mean(np.asarray(volume.array[:, :, 0]).T, (2, 2))  # 256 px: a faster projection
    low25, low10 = simulate_low_doses(hu, 2 * volume.spacing_mm[0], [(0.25, 1), (0.10, 2)])
    centre = (slice(96, 160), slice(96, 160))  # soft tissue in the middle of the abdomen
    sd25, sd10 = np.std((low25 - hu)[centre]), np.std((low10 - hu)[centre])
    assert 5 < sd25 < sd10 < 200
    assert sd10 / sd25 == pytest.approx(np.sqrt((0.9 / 0.1) / (0.75 / 0.25)), rel=0.2)  # sqrt(3) = 1.73
    assert abs(np.mean((low10 - hu)[centre])) < 0.2 * sd10  # noise, not a shift of the HU scale


def test_low_dose_simulation_refuses_non_hu_and_bad_doses() -> None:
    from medlens.recon.ct import simulate_low_dose

    stored = np.full((64, 64), 1024.0)
    stored[20:40, 20:40] = 2000
    with pytest.raises(DataError, match="not Hounsfield units"):
        simulate_low_dose(stored, 0.7, 0.25)
    with pytest.raises(ConfigError, match="within \\(0, 1\\)"):
        simulate_low_dose(stored - 2024, 0.7, 1.5)
    with pytest.raises(DataError, match="one 2D slice"):
        simulate_low_dose(np.zeros((4, 64, 64)), 0.7, 0.25)


def test_denoise_writes_a_derived_ct_series_on_the_source_geometry(
    kits: Path, tiny_bundles: dict, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["denoise", str(kits), "--out", str(tmp_path / "out"), "--bundle", str(tiny_bundles["ct-denoising"])]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "out" / "ct_denoised"
    source, derived = read_dicom_volume(kits), read_dicom_volume(out)
    assert np.allclose(source.affine, derived.affine) and source.slice_positions_mm == derived.slice_positions_mm
    assert derived.meta["units"] == "HU"
    src = pydicom.dcmread(kits / "CT20.dcm", stop_before_pixels=True)
    files = sorted(out.iterdir())
    ds = pydicom.dcmread(files[0])
    assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"] and "medlens" in ds.DerivationDescription
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in kits.iterdir()}
    assert {pydicom.dcmread(f).SourceImageSequence[0].ReferencedSOPInstanceUID for f in files} == sources


def test_denoise_refuses_ct_without_rescale_tags(kits: Path, tiny_bundles: dict, tmp_path: Path) -> None:
    bad = kits / "CT24.dcm"
    ds = pydicom.dcmread(bad)
    del ds.RescaleIntercept, ds.RescaleSlope
    ds.save_as(tmp_path / "no_rescale.dcm")
    result = runner.invoke(
        app,
        [
            "denoise",
            str(tmp_path / "no_rescale.dcm"),
            str(kits / "CT20.dcm"),
            "--out",
            str(tmp_path / "out"),
            "--bundle",
            str(tiny_bundles["ct-denoising"]),
        ],
    )
    assert result.exit_code == 1
    assert "no_rescale.dcm: CT without RescaleSlope/RescaleIntercept" in result.output and "dcmodify" in result.output
    assert (tmp_path / "out" / "CT20_denoised").is_dir()  # the good file was still done


def test_upscale_keeps_the_field_of_view_in_dicom_and_nifti(
    t2_subset: Path, tiny_bundles: dict, tmp_path: Path
) -> None:
    from medlens.io.volume import save_nifti

    nifti = save_nifti(read_dicom_volume(t2_subset), tmp_path / "t2.nii.gz")
    result = runner.invoke(
        app,
        [
            "upscale",
            str(t2_subset),
            str(nifti),
            "--scale",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--bundle",
            str(tiny_bundles["super-resolution"]),
        ],
    )
    assert result.exit_code == 0, result.output
    from medlens.io.volume import load_volume

    source = read_dicom_volume(t2_subset)
    for path in (tmp_path / "out" / "t2_upscaled", tmp_path / "out" / "t2_upscaled.nii.gz"):
        up = load_volume(path)
        assert up.shape == (2 * source.shape[0], 2 * source.shape[1], source.shape[2])
        assert np.allclose(up.spacing_mm[:2], np.array(source.spacing_mm[:2]) / 2, atol=1e-4)

        def corner(v, n):  # outer edge of the first voxel: the field of view must not move
            return v.affine[:3, :3] @ np.array([-0.5, -0.5, 0]) + v.affine[:3, 3]

        assert np.allclose(corner(up, 2), corner(source, 1), atol=1e-3)
    refused = runner.invoke(
        app,
        [
            "upscale",
            str(nifti),
            "--scale",
            "3",
            "--out",
            str(tmp_path / "o3"),
            "--bundle",
            str(tiny_bundles["super-resolution"]),
        ],
    )
    assert refused.exit_code == 1 and "trained for 2, 4x" in refused.output


def test_reconstruct_checks_kspace_and_inputs(t2_subset: Path, tiny_bundles: dict, tmp_path: Path) -> None:
    from medlens.recon.mri import kspace_to_complex, to_kspace, undersample

    image = np.transpose(np.asarray(read_dicom_volume(t2_subset).array), (2, 1, 0))[1]
    masked, _, _ = undersample(to_kspace(image), "random", 4, 0.08, seed=1)
    good = tmp_path / "kspace.npy"
    np.save(good, kspace_to_complex(masked)[0])
    np.save(tmp_path / "magnitude.npy", image)
    np.save(tmp_path / "empty.npy", np.zeros((64, 64), dtype=np.complex64))
    np.save(tmp_path / "4d.npy", np.zeros((2, 2, 64, 64), dtype=np.complex64))
    bundle = ["--bundle", str(tiny_bundles["mri-reconstruction"])]
    result = runner.invoke(
        app,
        [
            "reconstruct",
            str(good),
            *(str(tmp_path / n) for n in ("magnitude.npy", "empty.npy", "4d.npy")),
            str(t2_subset),
            "--out",
            str(tmp_path / "out"),
            *bundle,
        ],
    )
    assert result.exit_code == 1
    assert "magnitude.npy: k-space must be complex" in result.output
    assert "the mask samples nothing" in result.output and "(slices, rows, cols)" in result.output
    assert "pass --simulate 4" in result.output  # an image without --simulate
    recon = tmp_path / "out" / "kspace_reconstructed.nii.gz"
    assert recon.is_file()
    simulated = runner.invoke(
        app, ["reconstruct", str(t2_subset), "--simulate", "4", "--out", str(tmp_path / "sim"), *bundle]
    )
    assert simulated.exit_code == 0, simulated.output
    assert read_dicom_volume(tmp_path / "sim" / "t2_reconstructed").shape == read_dicom_volume(t2_subset).shape


def test_a_bundle_of_another_task_is_refused_with_the_right_command(
    tiny_bundles: dict, kits: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["denoise", str(kits), "--out", str(tmp_path), "--bundle", str(tiny_bundles["super-resolution"])]
    )
    assert result.exit_code == 1 and "use `medlens upscale`" in result.output
