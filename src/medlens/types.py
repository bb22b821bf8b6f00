"""The :class:`Volume`: voxels plus the geometry that places them in the patient.

One convention everywhere, nibabel's: ``array[i, j, k]`` with ``i`` along a
DICOM row (the column index), ``j`` down the columns (the row index) and ``k``
through the slices, and ``affine`` mapping ``(i, j, k, 1)`` to RAS+ millimetres.
DICOM and SimpleITK speak LPS; the conversions live here and nowhere else, so a
flipped axis cannot creep in at a second place.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    """A 3D image (``(X, Y, Z)``, or ``(X, Y, Z, C)`` for colour) with a RAS affine and PHI-free metadata.

    ``slice_positions_mm`` are the measured positions along the slice normal when
    the volume came from DICOM slices; a volume whose slices are not evenly
    spaced says so in :attr:`regular` and its ``warnings``, and writers refuse
    it until :func:`medlens.io.volume.equalize_slices` puts it on a regular grid.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    slice_positions_mm: tuple[float, ...] | None = None
    warnings: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def origin_ras(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def direction_ras(self) -> np.ndarray:
        """Unit vectors of the i, j, k axes in RAS, as columns."""
        return self.affine[:3, :3] / np.array(self.spacing_mm)

    @property
    def orientation(self) -> str:
        """Axis codes such as ``LPS`` or ``RAS``: where each voxel axis points (nibabel's aff2axcodes)."""
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    @property
    def regular(self) -> bool:
        """True when the slices are evenly spaced (always for volumes not read from slices)."""
        return slices_evenly_spaced(self.slice_positions_mm)

    def with_array(self, array: np.ndarray, affine: np.ndarray | None = None, **changes: Any) -> Volume:
        return replace(self, array=array, affine=self.affine if affine is None else affine, **changes)


def slices_evenly_spaced(positions_mm: tuple[float, ...] | None, tolerance: float = 0.01) -> bool:
    """Whether consecutive slice steps agree within ``tolerance`` (relative) or 0.01 mm."""
    if positions_mm is None or len(positions_mm) < 3:
        return True
    steps = np.diff(np.asarray(positions_mm))
    median = float(np.median(steps))
    return bool(np.all(np.abs(steps - median) <= max(0.01, tolerance * abs(median))))


def affine_lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    return LPS_TO_RAS @ affine_lps
