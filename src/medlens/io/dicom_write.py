"""Write a processed volume back as a DICOM series derived from its source series.

Each output instance is a copy of its source instance's header with new pixels, so
patient, study and frame-of-reference stay and a viewer shows it beside the source;
it gets a new series and SOP instance UID, ``ImageType`` DERIVED\\SECONDARY, a
``DerivationDescription``, a ``SourceImageSequence`` pointing at the source instance,
and a series description saying what medlens did. Pixels are written uncompressed as
signed 16-bit with a rescale slope chosen so the values fit (CT keeps 1 HU steps).
An in-plane zoom (super-resolution) updates Rows, Columns, PixelSpacing and moves
ImagePositionPatient to the centre of the new first pixel.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medlens import __version__
from medlens.errors import DicomError, GeometryError
from medlens.io.dicom import read_dataset
from medlens.io.series import find_dicom_files
from medlens.types import LPS_TO_RAS, Volume

_DROP = (
    "LargestImagePixelValue",
    "SmallestImagePixelValue",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "IconImageSequence",
)


def write_derived_series(
    source: str | Path, volume: Volume, out_dir: str | Path, what: str, zoom: int = 1
) -> list[Path]:
    """One file per source slice in ``out_dir``; ``volume`` is the processed source (same slices, in-plane ``zoom``)."""
    headers = []
    for f in find_dicom_files(source):
        try:
            ds = read_dataset(f, pixels=False)
        except DicomError:  # the reader skipped it too (not DICOM, unreadable): nothing to derive from
            continue
        if "PixelData" in ds:
            headers.append((f, ds))
    if not headers:
        raise DicomError(f"{source}: no DICOM images to derive from")
    if any(int(ds.get("NumberOfFrames") or 1) > 1 for _, ds in headers):
        raise DicomError(
            f"{source}: multi-frame (enhanced) DICOM output is not written by medlens yet; "
            "write NIfTI instead (--format nifti)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series_uid, written = generate_uid(), []
    values = np.asarray(volume.array, dtype=np.float64)
    slope = max(1.0, float(np.abs(values).max()) / 32767.0) if values.size else 1.0
    inverse = np.linalg.inv(volume.affine)
    done: set[int] = set()
    for path, ds in headers:
        index = _slice_index(ds, inverse, volume, zoom, path)
        if index in done:  # a duplicate the reader dropped (same position, identical pixels)
            continue
        done.add(index)
        pixels = np.clip(np.rint(values[:, :, index].T / slope), -32768, 32767).astype(np.int16)
        derived = _derive(ds, pixels, slope, series_uid, what, zoom)
        target = out / f"{index + 1:04d}.dcm"
        derived.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def _slice_index(ds: Dataset, inverse: np.ndarray, volume: Volume, zoom: int, path: Path) -> int:
    if "ImagePositionPatient" not in ds:
        if volume.shape[2] == 1:
            return 0
        raise GeometryError(f"{path}: no ImagePositionPatient, so its slice in the volume is unknown")
    position = np.asarray(ds.ImagePositionPatient, dtype=float)
    ras = LPS_TO_RAS[:3, :3] @ position
    k = inverse[:3, :3] @ ras + inverse[:3, 3]
    index = int(round(k[2]))
    if volume.slice_positions_mm is not None and "ImageOrientationPatient" in ds:  # uneven slices: match by position
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        distances = np.abs(np.asarray(volume.slice_positions_mm) - float(np.dot(position, np.cross(iop[:3], iop[3:]))))
        index = int(np.argmin(distances)) if distances.min() < 1e-2 else -1
    # the source's first pixel centre lies (zoom - 1) / 2 new pixels into a zoomed grid
    expected = (zoom - 1) / 2
    if abs(k[0] - expected) > 1e-2 or abs(k[1] - expected) > 1e-2 or not 0 <= index < volume.shape[2]:
        raise GeometryError(f"{path}: this slice is not on the processed volume's grid; was the volume resampled?")
    return index


def _derive(ds: Dataset, pixels: np.ndarray, slope: float, series_uid: str, what: str, zoom: int) -> Dataset:
    new = copy.deepcopy(ds)
    for keyword in _DROP:
        if keyword in new:
            delattr(new, keyword)
    source_ref = Dataset()
    source_ref.ReferencedSOPClassUID = ds.SOPClassUID
    source_ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    new.SourceImageSequence = [source_ref]
    new.SOPInstanceUID = generate_uid()
    new.SeriesInstanceUID = series_uid
    new.SeriesNumber = int(ds.get("SeriesNumber") or 0) + 1000
    new.SeriesDescription = f"{ds.get('SeriesDescription', '')} medlens {what}".strip()[:64]
    image_type = [str(v) for v in (ds.get("ImageType") or ["ORIGINAL", "PRIMARY"])]
    new.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    new.DerivationDescription = f"medlens {__version__}: {what}; research use, not for diagnosis"[:1024]
    new.PhotometricInterpretation = "MONOCHROME2"
    new.SamplesPerPixel = 1
    new.BitsAllocated, new.BitsStored, new.HighBit, new.PixelRepresentation = 16, 16, 15, 1
    new.Rows, new.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    new.RescaleSlope, new.RescaleIntercept = f"{slope:.6g}", "0"
    if zoom > 1:
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        new.PixelSpacing = [f"{row_mm / zoom:.6g}", f"{col_mm / zoom:.6g}"]
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
            shift = (zoom - 1) / (2 * zoom)
            ipp = np.asarray(ds.ImagePositionPatient, dtype=float) - shift * (iop[:3] * col_mm + iop[3:] * row_mm)
            new.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
    new.PixelData = pixels.tobytes()
    new["PixelData"].VR = "OW"
    new.file_meta = FileMetaDataset()
    new.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    new.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    new.file_meta.MediaStorageSOPInstanceUID = new.SOPInstanceUID
    if "LossyImageCompression" in ds:
        new.LossyImageCompression = ds.LossyImageCompression  # once lossy, always lossy (PS3.3 C.7.6.1.1.5)
    return new
