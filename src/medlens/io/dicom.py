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

from medlens.errors import ImageReadError, InputMismatchError


RADIOGRAPHY = {"CR", "DX", "DR"}  # one kind of image under several Modality codes


def read_dicom(path: Path, expected_modality: str | None = None) -> np.ndarray:
    """Read a DICOM image as float32 ``(C, H, W)`` or ``(1, frames, H, W)``, modality LUT applied.

    With ``expected_modality`` (a model's), a contradicting Modality tag (a CT
    slice into a chest X-ray model) is refused before the pixels are decoded.
    """
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, ValueError, OSError) as exc:
        raise ImageReadError(f"{path}: cannot read DICOM ({exc})") from exc
    _check_modality(path, str(ds.get("Modality", "")), expected_modality)
    try:
        pixels = ds.pixel_array
    except (AttributeError, ValueError, RuntimeError) as exc:
        raise ImageReadError(f"{path}: cannot read DICOM pixel data ({exc})") from exc
    array = apply_modality_lut(pixels, ds).astype(np.float32)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # high values are dark: invert to MONOCHROME2
        array = array.max() + array.min() - array
    if ds.get("SamplesPerPixel", 1) == 3:
        return np.ascontiguousarray(np.moveaxis(array, -1, 0))
    return array[None]



def _check_modality(path: Path, found: str, expected: str | None) -> None:
    if not found or expected in (None, "", "unknown") or found == expected or {found, expected} <= RADIOGRAPHY:
        return
    raise InputMismatchError(
        f"{path.name}: DICOM Modality is {found}, the model was trained on {expected} images; "
        "use a model trained for this modality"
    )
