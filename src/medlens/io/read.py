"""One entry point, :func:`read_image`, that picks the reader by file type.

Every reader returns ``float32`` channel-first arrays, ``(C, H, W)`` or
``(C, D, H, W)``, and refuses NaN/inf so a corrupt file never becomes a
silently wrong prediction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlens.errors import ImageReadError
from medlens.io.dicom import has_dicom_marker, read_dicom
from medlens.io.nifti import read_nifti
from medlens.io.raster import read_raster

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = RASTER_SUFFIXES + NIFTI_SUFFIXES + DICOM_SUFFIXES


def read_image(path: str | Path, expected_modality: str | None = None) -> np.ndarray:
    """Read one image file as float32 ``(C, *spatial)``.

    ``expected_modality`` (a model's, e.g. ``CR``) refuses a DICOM whose
    Modality tag contradicts it; other formats carry no modality. Grey images get one channel; an RGB raster whose three channels are equal
    (grey stored as colour, common for X-ray JPEGs) is reduced to one channel.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file; check the path (relative paths are from the current folder)")
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        array = read_nifti(path)
    elif name.endswith(RASTER_SUFFIXES):
        array = read_raster(path)
    elif name.endswith(DICOM_SUFFIXES) or has_dicom_marker(path):
        array = read_dicom(path, expected_modality)
    else:
        raise ImageReadError(
            f"{path}: unknown image type {path.suffix!r}; medlens reads {', '.join(IMAGE_SUFFIXES)} "
            "and DICOM files without a suffix"
        )
    if not np.isfinite(array).all():
        raise ImageReadError(f"{path}: contains NaN or inf pixel values; the file is corrupt or not an image")
    return array
