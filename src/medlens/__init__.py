"""medlens: deep learning for medical imaging, from DICOM to a validated, deployable model.

The public Python API::

    import medlens

    bundle = medlens.open_bundle("pneumonia-28px")        # any bundle: shipped name or folder
    rows = bundle.predict(["chest.dcm", "xrays/"])   # one row per file, errors in their row
    image = medlens.read_image("chest.dcm")          # (channels, height, width) float32
    volume = medlens.load_volume("brain.nii.gz")     # a Volume: array, affine, spacing
    scan = medlens.read_dicom_volumes("study/")      # every series of a DICOM folder

Importing medlens has no side effects and imports no deep-learning library:
each name is loaded on first use. Errors are :class:`MedlensError` and its
subclasses (see :mod:`medlens.errors`).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from medlens.errors import (
    ConfigError,
    DataError,
    DicomError,
    ImageReadError,
    MedlensError,
    ModelError,
    UnknownNameError,
)

__version__ = "0.1.0"

_LAZY = {
    "open_bundle": "medlens.kinds",
    "read_image": "medlens.io.read",
    "load_volume": "medlens.io.volume",
    "read_dicom_volumes": "medlens.io.series",
}

__all__ = [
    "ConfigError",
    "DataError",
    "DicomError",
    "ImageReadError",
    "MedlensError",
    "ModelError",
    "UnknownNameError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Load a public name on first use (PyTorch and friends are imported only then)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'medlens' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
