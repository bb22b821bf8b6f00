"""Every bad input gets its own exception and a message naming the file and the problem; batches go on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from medlens.cli import app
from medlens.errors import DicomError, GeometryError, ImageReadError, MedlensError, UnsupportedTransferSyntaxError
from medlens.io.convert import convert_dicom
from medlens.io.dicom import decode_frames, read_dataset
from medlens.io.series import read_dicom_volume, read_dicom_volumes
from medlens.io.volume import load_volume
from tests.test_dicom_series import pydicom_test

runner = CliRunner(env={"COLUMNS": "250"})


@pytest.fixture()
def mr_file(data_dir: Path) -> Path:
    return data_dir / "dicom" / "mr_transfer_syntaxes" / "1.dcm"


def _read(path: Path) -> np.ndarray:
    return decode_frames(read_dataset(path), path)


def test_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("radiology report, not an image\n" * 20)
    with pytest.raises(DicomError, match=r"notes.dcm: not a DICOM file"):
        _read(path)


def test_zero_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.touch()
    with pytest.raises(DicomError, match=r"empty.dcm: empty file \(0 bytes\)"):
        _read(path)


@pytest.mark.parametrize("keep_bytes", [200, 1500, 150_000])
def test_truncated(mr_file: Path, tmp_path: Path, keep_bytes: int) -> None:
    path = tmp_path / "cut.dcm"
    path.write_bytes(mr_file.read_bytes()[:keep_bytes])
    with pytest.raises(DicomError, match=r"cut.dcm: .*(truncated|not a DICOM|no pixel data)"):
        _read(path)


def test_no_pixel_data(mr_file: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(mr_file)
    del ds.PixelData
    ds.save_as(tmp_path / "header_only.dcm")
    with pytest.raises(DicomError, match=r"header_only.dcm: no pixel data .*not an image"):
        _read(tmp_path / "header_only.dcm")


def test_transfer_syntax_without_decoder() -> None:
    """12-bit JPEG Extended: only the GPL decoder medlens leaves out handles it."""
    path = pydicom_test("JPGExtended.dcm")
    with pytest.raises(
        UnsupportedTransferSyntaxError,
        match=r"JPGExtended.dcm: pixel data is compressed as JPEG Extended.*GPL-3.0.*gdcmconv",
    ):
        _read(path)


def test_unknown_compression(mr_file: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(mr_file)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2 video: no image decoder
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 100])
    ds.save_as(tmp_path / "video.dcm", enforce_file_format=True)
    with pytest.raises(UnsupportedTransferSyntaxError, match=r"video.dcm: pixel data is compressed as MPEG2"):
        _read(tmp_path / "video.dcm")


@pytest.fixture()
def crop_series(data_dir: Path, tmp_path: Path) -> Path:
    """A copy of the real 40-slice PGBM-003 hippocampus crop series, for tests that damage one file."""
    folder = tmp_path / "series"
    shutil.copytree(data_dir / "dicom" / "mr_pgbm003" / "11_HCropVolume", folder)
    return folder


def _edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _narrow(ds: pydicom.Dataset) -> None:
    ds.PixelData = ds.pixel_array[:, :20].copy().tobytes()
    ds.Columns = 20


def test_series_with_mixed_sizes(crop_series: Path) -> None:
    folder = crop_series
    _edit(folder / "5.dcm", _narrow)
    with pytest.raises(
        GeometryError, match=r"holds 2 volumes .*mixes acquisitions \(columns: matrix sizes 50x20 and 50x34\)"
    ):
        read_dicom_volume(folder)


def test_missing_geometry_tags(crop_series: Path) -> None:
    folder = crop_series
    _edit(folder / "7.dcm", lambda ds: delattr(ds, "ImagePositionPatient"))
    with pytest.raises(
        GeometryError, match=r"7.dcm: ImagePositionPatient or ImageOrientationPatient missing.*cannot be ordered"
    ):
        read_dicom_volume(folder)


def test_corrupt_geometry_tag(crop_series: Path) -> None:
    folder = crop_series
    _edit(folder / "7.dcm", lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, 0]))
    with pytest.raises(DicomError, match=r"7.dcm: ImageOrientationPatient .* is not two unit vectors"):
        read_dicom_volume(folder)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_nifti(tmp_path: Path, bad: float) -> None:
    array = np.zeros((4, 4, 4), dtype=np.float32)
    array[1, 2, 3] = bad
    nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / "map.nii.gz")
    with pytest.raises(ImageReadError, match=r"map.nii.gz: contains NaN or inf"):
        load_volume(tmp_path / "map.nii.gz")


def test_folder_without_images(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="holds no files"):
        read_dicom_volumes(tmp_path)
    (tmp_path / "README.txt").write_text("no images here")
    (tmp_path / "scan").write_bytes(b"\x00" * 300)
    with pytest.raises(DicomError, match=r"scan: not a DICOM file"):  # README.txt is skipped, not an error
        read_dicom_volumes(tmp_path)


def test_batch_goes_on_past_bad_files_and_lists_them(data_dir: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    shutil.copytree(data_dir / "dicom" / "mr_pgbm003" / "11_HCropVolume", study / "crop")
    (study / "crop" / "broken.dcm").write_bytes((study / "crop" / "5.dcm").read_bytes()[:3000])
    (study / "empty").touch()
    report = convert_dicom(study, tmp_path / "out")
    assert len(report["volumes"]) == 1 and report["volumes"][0]["shape"] == [34, 50, 40]
    assert sorted(Path(p["path"]).name for p in report["problems"]) == ["broken.dcm", "empty"]
    assert json.loads((tmp_path / "out" / "convert.json").read_text())["problems"] == report["problems"]
    result = runner.invoke(app, ["convert", str(study), str(tmp_path / "out2")])
    assert result.exit_code == 1
    assert "broken.dcm" in result.output and "2 file(s) could not be converted; the rest was written" in result.output
    assert (tmp_path / "out2" / "01_MR.nii.gz").is_file()


def test_cli_info_and_convert(data_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["info", str(data_dir / "dicom" / "ct_kits_slices")])
    assert result.exit_code == 0, result.output
    assert "CT_s1" in result.output and "axial" in result.output and "1 non-DICOM file(s) skipped" in result.output
    result = runner.invoke(app, ["convert", str(data_dir / "dicom" / "mr_pgbm003"), str(tmp_path / "nii")])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "nii" / "02_MR_s11.json").read_text())
    assert sidecar["shape"] == [280, 320, 22] and sidecar["orientation"] == "LPS" and sidecar["Modality"] == "MR"
    original = pydicom.dcmread(next((data_dir / "dicom" / "mr_pgbm003" / "11-T1post-18670").glob("*.dcm")))
    text = (tmp_path / "nii" / "02_MR_s11.json").read_text()
    assert (
        str(original.PatientID) not in text and str(original.StudyInstanceUID) not in text and "PatientName" not in text
    )


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("source", "patches", "message"),
    [
        (
            "7.dcm",
            [(96, 214), (2655, 55)],
            "the JPEG stream is 384x384.*but the header says 14208x384",
        ),  # GDCM aborted the process
        (
            "4.dcm",
            [(764, 0), (1847, 160), (2010, 153), (2056, 234), (2662, 12)],
            "cannot decode pixel data",
        ),  # Rust RLE panic
    ],
)
def test_fuzzing_regressions(data_dir: Path, tmp_path: Path, source: str, patches: list, message: str) -> None:
    """Files that once crashed the process or escaped the error tree, found by longer fuzzing runs."""
    data = bytearray((data_dir / "dicom" / "mr_transfer_syntaxes" / source).read_bytes())
    for offset, value in patches:
        data[offset] = value
    (tmp_path / "case.dcm").write_bytes(bytes(data))
    with pytest.raises(DicomError, match=message):
        read_dicom_volumes(tmp_path / "case.dcm")


FUZZ_SOURCES = [
    "mr_transfer_syntaxes/1.dcm",
    "mr_transfer_syntaxes/4.dcm",
    "mr_transfer_syntaxes/7.dcm",
    "mr_transfer_syntaxes/9.dcm",
]


@pytest.mark.filterwarnings("ignore")  # as in production: pydicom's and numpy's warnings are not errors there
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    source=st.sampled_from(FUZZ_SOURCES),
    cuts=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), min_size=1, max_size=8),
    truncate=st.one_of(st.none(), st.integers(0, 200_000)),
)
def test_fuzzed_real_files_raise_only_medlens_errors(
    data_dir: Path, tmp_path: Path, source: str, cuts: list, truncate: int | None
) -> None:
    """Mutate header bytes (and sometimes cut the file) of real MR files: anything that escapes is a bug."""
    data = bytearray((data_dir / "dicom" / source).read_bytes())
    for offset, value in cuts:
        data[offset % len(data)] = value
    if truncate is not None:
        data = data[:truncate]
    path = tmp_path / "fuzz.dcm"
    path.write_bytes(bytes(data))
    try:
        read_dicom_volumes(path)
    except MedlensError:
        pass
