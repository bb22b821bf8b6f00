"""DICOM reading on real files: transfer syntaxes, geometry, sorting, duplicates, enhanced objects, windows."""

from __future__ import annotations

import shutil
import site
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medlens.errors import GeometryError
from medlens.io.dicom import decode_frames, read_dataset
from medlens.io.series import read_dicom_volume, read_dicom_volumes
from medlens.io.volume import (
    equalize_slices,
    from_sitk,
    load_volume,
    reorient_volume,
    resample_volume,
    save_nifti,
    to_sitk,
)
from medlens.preprocess.window import apply_dicom_voi, apply_window, window_preset
from medlens.types import LPS_TO_RAS

PGBM_SERIES = ["11-T1post-18670", "26401-T1prereg-52906", "36468-FLAIRreg-58706", "37830-T2reg-78532", "11_HCropVolume"]


def _package_file(relative: str) -> Path:
    for root in site.getsitepackages():
        if (Path(root) / relative).is_file():
            return Path(root) / relative
    pytest.skip(f"{relative} not installed (pip install -e '.[test]')")


def pydicom_data(name: str) -> Path:
    """A file from the pydicom-data package (real DICOM: CR chest, US, enhanced CT, compressed MR)."""
    return _package_file(f"data_store/data/{name}")


def pydicom_test(name: str) -> Path:
    return _package_file(f"pydicom/data/test_files/{name}")


@pytest.fixture(scope="module")
def dicom_dir(data_dir: Path) -> Path:
    return data_dir / "dicom"


def test_every_transfer_syntax_decodes_to_the_identical_array(dicom_dir: Path) -> None:
    files = sorted((dicom_dir / "mr_transfer_syntaxes").glob("*.dcm"))
    assert len(files) == 9
    syntaxes = {str(read_dataset(f).file_meta.TransferSyntaxUID) for f in files}
    assert {
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
    } <= syntaxes
    arrays = [decode_frames(read_dataset(f), f) for f in files]
    for f, array in zip(files[1:], arrays[1:]):
        assert np.array_equal(array, arrays[0]), f.name
    assert arrays[0].shape == (1, 384, 384) and arrays[0].max() > 1000


def test_unused_high_bits_are_masked(dicom_dir: Path, tmp_path: Path) -> None:
    """12-bit data in 16-bit words: junk in the top 4 bits must not change a value."""
    source = dicom_dir / "mr_transfer_syntaxes" / "1.dcm"
    ds = pydicom.dcmread(source)
    assert ds.BitsStored == 12
    raw = np.frombuffer(ds.PixelData, dtype="<u2") | np.uint16(0xA000)
    ds.PixelData = raw.tobytes()
    ds.save_as(tmp_path / "junk.dcm")
    assert np.array_equal(
        decode_frames(read_dataset(tmp_path / "junk.dcm"), tmp_path / "junk.dcm"),
        decode_frames(read_dataset(source), source),
    )


@pytest.mark.parametrize("series", PGBM_SERIES)
def test_pgbm_geometry_is_what_the_tags_say(dicom_dir: Path, series: str) -> None:
    """Every file's ImagePositionPatient is voxel (0, 0, k) for a distinct k, its pixels are slice k, and the
    far corner lies where IOP x PixelSpacing puts it."""
    folder = dicom_dir / "mr_pgbm003" / series
    volume = read_dicom_volume(folder)
    inverse = np.linalg.inv(volume.affine)
    seen = set()
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ras = LPS_TO_RAS[:3, :3] @ np.asarray(ds.ImagePositionPatient, dtype=float)
        i, j, k = inverse[:3, :3] @ ras + inverse[:3, 3]
        assert abs(i) < 1e-3 and abs(j) < 1e-3 and abs(k - round(k)) < 1e-3, f.name
        seen.add(int(round(k)))
        assert np.array_equal(
            volume.array[:, :, int(round(k))],
            ds.pixel_array.T.astype(np.float32) * float(ds.get("RescaleSlope", 1))
            + float(ds.get("RescaleIntercept", 0)),
        )
        row, col = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        corner_lps = np.asarray(ds.ImagePositionPatient, float) + (ds.Columns - 1) * dc * row + (ds.Rows - 1) * dr * col
        corner = volume.affine @ np.array([ds.Columns - 1, ds.Rows - 1, round(k), 1.0])
        assert np.allclose(corner[:3], LPS_TO_RAS[:3, :3] @ corner_lps, atol=1e-3)
    assert seen == set(range(volume.shape[2]))
    assert volume.regular and not volume.warnings


def test_conversion_matches_dcm2niix(dicom_dir: Path, tmp_path: Path) -> None:
    """Voxels and affine agree with dcm2niix's conversion of the same series after reorienting both to canonical."""
    dcm2niix = shutil.which("dcm2niix")
    if dcm2niix is None:
        pytest.skip("dcm2niix not installed (pip install -e '.[test]')")
    reference = tmp_path / "dcm2niix"
    reference.mkdir()
    subprocess.run(
        [dcm2niix, "-z", "n", "-f", "%s", "-o", str(reference), str(dicom_dir / "mr_pgbm003")],
        check=True,
        capture_output=True,
    )
    for series in PGBM_SERIES[:4]:
        volume = read_dicom_volume(dicom_dir / "mr_pgbm003" / series)
        ours = nib.as_closest_canonical(nib.load(save_nifti(volume, tmp_path / f"{series}.nii")))
        theirs = nib.as_closest_canonical(nib.load(reference / f"{volume.meta['SeriesNumber']}.nii"))
        assert ours.shape == theirs.shape
        assert np.array_equal(ours.get_fdata(), theirs.get_fdata()), series
        assert np.allclose(ours.affine, theirs.affine, atol=1e-3), series


def test_geometry_matches_simpleitk_series_reader(dicom_dir: Path) -> None:
    import SimpleITK as sitk

    folder = dicom_dir / "mr_pgbm003" / "36468-FLAIRreg-58706"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reference = from_sitk(reader.Execute())
    ours = read_dicom_volume(folder)
    assert np.allclose(ours.affine, reference.affine, atol=1e-3)
    assert np.array_equal(ours.array, reference.array)


def test_kits_slices_sorted_in_space_with_the_duplicate_detected(dicom_dir: Path, tmp_path: Path) -> None:
    source = dicom_dir / "ct_kits_slices"
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for i, f in enumerate(sorted(source.glob("CT*.dcm"), reverse=True)):  # file names say nothing about order
        shutil.copy(f, shuffled / f"img{(i * 7) % 11:03d}")
    for folder in (source, shuffled):
        scan = read_dicom_volumes(folder)
        assert len(scan.volumes) == 1 and not scan.problems
        volume = scan.volumes[0]
        assert volume.shape == (512, 512, 10)
        positions = np.asarray(volume.slice_positions_mm)
        assert np.all(np.diff(positions) > 0)
        z = sorted(float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in source.glob("CT*.dcm"))
        assert np.allclose(sorted(positions), sorted(set(z)))
        assert any("duplicates" in n and "identical pixels" in n for n in scan.notes)
        assert not volume.regular and "not evenly spaced" in volume.warnings[0]
    assert volume.meta["units"] == "HU"
    air = np.mean((volume.array > -1030) & (volume.array < -970))
    assert air > 0.05  # air around the patient sits at -1000 HU once RescaleIntercept -1024 is applied


def test_uneven_slices_refused_by_nifti_and_equalized_on_request(dicom_dir: Path, tmp_path: Path) -> None:
    volume = read_dicom_volume(dicom_dir / "ct_kits_slices")
    with pytest.raises(GeometryError, match="not evenly spaced.*equalize"):
        save_nifti(volume, tmp_path / "x.nii.gz")
    even = equalize_slices(volume)
    assert even.regular and even.spacing_mm[2] == pytest.approx(7.5)
    k0 = 0
    assert np.array_equal(even.array[:, :, k0], volume.array[:, :, k0])  # acquired slices survive at their positions
    save_nifti(even, tmp_path / "x.nii.gz")


def test_conflicting_duplicate_is_a_clear_error(dicom_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "series"
    shutil.copytree(dicom_dir / "ct_kits_slices", folder)
    ds = pydicom.dcmread(folder / "CT28.dcm")  # shares CT26's position
    ds.PixelData = (ds.pixel_array + 7).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(folder / "CT28.dcm")
    with pytest.raises(Exception, match=r"CT2[68].dcm and CT2[68].dcm: 2 different slices at the same position"):
        read_dicom_volume(folder)


def test_repeated_acquisition_is_split_into_volumes(dicom_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dynamic"
    folder.mkdir()
    for f in (dicom_dir / "mr_pgbm003" / "11_HCropVolume").glob("*.dcm"):
        shutil.copy(f, folder / f.name)
        ds = pydicom.dcmread(f)
        ds.AcquisitionNumber, ds.InstanceNumber = 2, int(ds.InstanceNumber) + 100
        ds.PixelData = (ds.pixel_array // 2).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(folder / f"late_{f.name}")
    scan = read_dicom_volumes(folder)
    assert [v.meta["repeat"] for v in scan.volumes] == [1, 2]
    assert np.array_equal(scan.volumes[1].array, np.floor(scan.volumes[0].array / 2))


def test_enhanced_multiframe_uses_per_frame_geometry_and_rescale() -> None:
    path = pydicom_data("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    volume = read_dicom_volume(path)
    assert volume.shape == (512, 512, 2)
    frames = ds.PerFrameFunctionalGroupsSequence
    positions = [np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float) for f in frames]
    assert np.allclose(
        volume.affine[:3, 3],
        LPS_TO_RAS[:3, :3] @ min(positions, key=lambda p: float(np.dot(p, volume.affine[:3, 2] * [-1, -1, 1]))),
        atol=1e-3,
    )
    assert volume.meta["units"] == "HU" and volume.array.min() == -1024


def test_monochrome1_radiograph_is_inverted_within_its_bit_range() -> None:
    path = pydicom_data("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    values = decode_frames(read_dataset(path), path)[0]
    assert np.array_equal(values, (2**ds.BitsStored - 1) - ds.pixel_array.astype(np.float32))
    volume = read_dicom_volume(path)  # PixelSpacing is 0\0 in this real file and there is no ImagerPixelSpacing
    assert any("1 mm assumed" in w for w in volume.warnings)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom notes padding and VR fixes on some test files
@pytest.mark.parametrize(
    ("compressed", "reference", "lossless"),
    [
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm", True),
        ("RG1_J2KI.dcm", "RG1_UNCI.dcm", False),
        ("MR2_J2KR.dcm", "MR2_UNCR.dcm", True),
        ("US1_J2KR.dcm", "US1_UNCR.dcm", True),
        ("emri_small_RLE.dcm", "emri_small.dcm", True),
        ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm", True),
        ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm", True),
        ("emri_small_big_endian.dcm", "emri_small.dcm", True),
        ("OBXXXX1A_rle_2frame.dcm", "OBXXXX1A_2frame.dcm", True),
        ("JPEG-LL.dcm", "JPEG-LL.dcm", True),
    ],
)
def test_pydicom_data_compressed_files_decode(compressed: str, reference: str, lossless: bool) -> None:
    a = decode_frames(read_dataset(pydicom_data(compressed)), pydicom_data(compressed))
    b = decode_frames(read_dataset(pydicom_data(reference)), pydicom_data(reference))
    assert a.shape == b.shape
    if lossless:
        assert np.array_equal(a, b)
    else:  # lossy JPEG 2000: close, not equal
        assert np.abs(a - b).mean() < 0.02 * (b.max() - b.min())


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "JPEG2000.dcm",
        "JPEGLSNearLossless_16.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "SC_rgb_rle.dcm",
        "examples_jpeg2k.dcm",
        "rtdose_rle.dcm",
        "693_J2KI.dcm",
    ],
)
def test_pydicom_compressed_test_files_decode(name: str) -> None:
    path = pydicom_test(name)
    values = decode_frames(read_dataset(path), path)
    assert values.dtype == np.float32 and np.isfinite(values).all() and values.std() > 0
    if name.startswith("MR_small_"):
        reference = decode_frames(read_dataset(pydicom_test("MR_small.dcm")), pydicom_test("MR_small.dcm"))
        assert np.array_equal(values, reference)


def test_window_presets_and_file_voi(dicom_dir: Path) -> None:
    path = dicom_dir / "ct_kits_slices" / "CT2.dcm"
    hu = decode_frames(read_dataset(path), path)[0]
    lung = apply_window(hu, *window_preset("lung"))
    assert lung.min() == 0.0 and lung.max() == 1.0
    assert apply_window(np.array([-1350.0, -600.0, 150.0]), *window_preset("lung")).tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(Exception, match="did you mean 'lung'"):
        window_preset("lungs")
    shown = apply_dicom_voi(hu, read_dataset(path))
    assert 0.0 <= shown.min() and shown.max() <= 1.0


def test_volume_round_trips_and_resampling(dicom_dir: Path, tmp_path: Path) -> None:
    volume = read_dicom_volume(dicom_dir / "mr_pgbm003" / "11-T1post-18670")
    back = load_volume(save_nifti(volume, tmp_path / "v.nii.gz"))
    assert np.array_equal(back.array, volume.array) and np.allclose(back.affine, volume.affine, atol=1e-5)
    import SimpleITK as sitk

    sitk.WriteImage(to_sitk(volume), str(tmp_path / "v.nrrd"))
    nrrd = load_volume(tmp_path / "v.nrrd")
    assert np.array_equal(nrrd.array, volume.array) and np.allclose(nrrd.affine, volume.affine, atol=1e-4)
    ras = reorient_volume(volume, "RAS")
    assert ras.orientation == "RAS" and np.allclose(
        ras.affine @ [0, 0, 0, 1], volume.affine @ [volume.shape[0] - 1, volume.shape[1] - 1, 0, 1]
    )
    iso = resample_volume(volume, (1.375, 1.375, 6.5))
    assert iso.shape == (140, 160, 22) and iso.spacing_mm == pytest.approx((1.375, 1.375, 6.5))
    centre = volume.affine @ [139.5, 159.5, 11, 1]
    assert np.allclose(iso.affine @ [69.75, 79.75, 11, 1], centre, atol=1.0)  # same physical extent
    with pytest.raises(GeometryError, match="not three axis codes"):
        reorient_volume(volume, "RAX")


def test_window_as_model_input_preprocessing(dicom_dir: Path) -> None:
    """A bundle trained with window=lung clips HU the same way in training and prediction, and accepts raw HU."""
    import torch

    from medlens.config import TrainConfig
    from medlens.preprocess.pipeline import Preprocessing, normalize_intensity, prepare_image

    path = dicom_dir / "ct_kits_slices" / "CT2.dcm"
    hu = decode_frames(read_dataset(path), path)
    prep = Preprocessing(spatial_shape=hu.shape[1:], window=window_preset("lung"))
    ready, notes = prepare_image(hu, prep)
    assert notes == [] and ready.min() == -1.0 and ready.max() == 1.0
    assert np.allclose(normalize_intensity(torch.from_numpy(hu), prep).numpy(), ready)
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    with pytest.raises(Exception, match="train.window"):
        TrainConfig(window="lungs")
