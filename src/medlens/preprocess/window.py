"""Intensity windows: the radiologist's presets for CT, and the file's own VOI LUT or window.

A window maps ``[center - width/2, center + width/2]`` linearly to ``[0, 1]`` and
clips outside, which is both how a reader displays CT and a sound model input
(the network sees the tissue range that matters, not the -1024..3071 HU span).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from medlens.errors import ConfigError
from medlens.registry import Registry

WINDOWS: Registry[tuple[float, float]] = Registry("window preset")
for _name, _center_width in {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft-tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
}.items():
    WINDOWS.add(_name, _center_width)


def window_preset(name: str) -> tuple[float, float]:
    """``(center_hu, width_hu)`` of a named CT preset; an unknown name lists the presets."""
    return WINDOWS.get(name)


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window to ``[0, 1]`` (float32), clipped: DICOM's LINEAR VOI function without its half-unit offsets."""
    if width <= 0:
        raise ConfigError(f"window width must be positive, got {width}; e.g. lung is center -600, width 1500")
    low = center - width / 2.0
    return np.clip((np.asarray(values, dtype=np.float32) - low) / width, 0.0, 1.0)


def apply_dicom_voi(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """The file's own VOI LUT or first WindowCenter/Width (pydicom), scaled to ``[0, 1]``.

    ``values`` are modality-LUT output (e.g. HU), as :func:`medlens.io.dicom.decode_frames` returns them.
    Without a VOI in the file, the values are min-max scaled.
    """
    if "VOILUTSequence" in ds:
        from pydicom.pixels import apply_voi_lut

        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        shown = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0, prefer_lut=True)
        return (np.asarray(shown, dtype=np.float32) / (2**bits - 1)).clip(0.0, 1.0)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return apply_window(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
    low, high = float(values.min()), float(values.max())
    return ((values - low) / (high - low or 1.0)).astype(np.float32)


def _first(value: object) -> float:
    return float(value[0]) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else float(value)  # type: ignore[index, arg-type]
