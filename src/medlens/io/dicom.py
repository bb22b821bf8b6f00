"""Single DICOM files via pydicom: rescale to physical values and undo MONOCHROME1.

Series assembly, geometry and compressed syntaxes beyond what pydicom's
installed plugins decode belong to the I/O issue; this reader covers the one
image a classifier takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from medlens.errors import ImageReadError


def read_dicom(path: Path) -> np.ndarray:
    """Read a DICOM image as float32 ``(C, H, W)`` or ``(1, frames, H, W)``, modality LUT applied."""
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except (InvalidDicomError, AttributeError, ValueError, RuntimeError, OSError) as exc:
        raise ImageReadError(f"{path}: cannot read DICOM pixel data ({exc})") from exc
    array = apply_modality_lut(pixels, ds).astype(np.float32)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # high values are dark: invert to MONOCHROME2
        array = array.max() + array.min() - array
    if ds.get("SamplesPerPixel", 1) == 3:
        return np.ascontiguousarray(np.moveaxis(array, -1, 0))
    return array[None]


def read_dicom_modality(path: Path) -> str | None:
    """The Modality tag (CR, DX, CT, MR, ...) from the header alone, or None when absent/unreadable."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except (InvalidDicomError, OSError, ValueError):
        return None
    return str(ds.get("Modality", "")) or None
