"""NIfTI via nibabel."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medlens.errors import ImageReadError


def read_nifti(path: Path) -> np.ndarray:
    """Read a NIfTI image as float32 ``(1, H, W)`` (2D) or ``(1, X, Y, Z)`` (3D), as stored on disk."""
    try:
        array = np.asanyarray(nib.load(path).dataobj, dtype=np.float32)
    except (ImageFileError, OSError, EOFError, ValueError) as exc:
        raise ImageReadError(f"{path}: cannot read NIfTI ({exc})") from exc
    array = np.squeeze(array)
    if array.ndim not in (2, 3):
        raise ImageReadError(f"{path}: NIfTI has shape {array.shape}; expected a 2D or 3D image")
    return array[None]
