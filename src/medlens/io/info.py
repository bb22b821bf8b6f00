"""The ``info`` stage: what a study holds, from headers only, with no patient identifiers.

Pixels are not decoded, so a large study is summarised in the time it takes to
parse the headers; slice duplicates are counted by position here, and only the
reader (``convert``) compares their pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medlens.io.dicom_meta import phi_free_meta
from medlens.io.series import DicomScan, Slice, find_dicom_files, group_slices, scan_headers
from medlens.io.volume import ITK_SUFFIXES, NIFTI_SUFFIXES, load_volume
from medlens.types import slices_evenly_spaced


def summarize(path: str | Path) -> dict[str, Any]:
    """A PHI-free summary of a DICOM file/folder or a NIfTI/NRRD/MHA file, as JSON-ready data."""
    path = Path(path)
    if path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES):
        volume = load_volume(path)
        return {
            "source": str(path),
            "series": [
                {
                    "name": volume.meta["name"],
                    "format": path.suffix.lstrip("."),
                    "shape": list(volume.shape),
                    "spacing_mm": _round(volume.spacing_mm),
                    "orientation": volume.orientation,
                }
            ],
            "problems": [],
        }
    scan = DicomScan()
    slices = scan_headers(find_dicom_files(path), scan)
    problems = [{"file": p.path, "message": p.message} for p in scan.problems]
    skipped = sum(1 for note in scan.notes if note.startswith("skipped"))
    groups = sorted(
        group_slices(slices).values(), key=lambda g: (str(g[0].dataset.get("SeriesNumber", "")), str(g[0].path))
    )
    return {
        "source": str(path),
        "series": [_series_summary(g) for g in groups],
        "problems": problems,
        "skipped_not_dicom": skipped,
    }


def _series_summary(group: list[Slice]) -> dict[str, Any]:
    ds = group[0].dataset
    meta = phi_free_meta(ds, n_slices=len(group))
    row: dict[str, Any] = {
        "name": meta["name"],
        "modality": meta.get("Modality", "?"),
        "slices": len(group),
        "rows_cols": [int(ds.get("Rows", 0)), int(ds.get("Columns", 0))],
        "pixel_spacing_mm": _round(group[0].spacing_rc),
        "transfer_syntax": meta.get("TransferSyntax", "?"),
    }
    if group[0].orientation is not None and all(s.position is not None for s in group):
        normal = group[0].normal
        positions = sorted(float(np.dot(s.position, normal)) for s in group)
        unique = sorted(set(round(p, 2) for p in positions))
        row["orientation"] = _plane(normal)
        row["slice_step_mm"] = round(float(np.median(np.diff(unique))), 4) if len(unique) > 1 else None
        row["duplicate_positions"] = len(positions) - len(unique)
        row["evenly_spaced"] = slices_evenly_spaced(tuple(unique))
    else:
        row["orientation"] = "no geometry"
    return row


def _plane(normal: np.ndarray) -> str:
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def _round(values: Any) -> list[float]:
    return [round(float(v), 4) for v in values]
