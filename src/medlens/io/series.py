"""A file, folder or tree of DICOM files becomes a list of :class:`~medlens.types.Volume`.

The rules follow dcm2niix, the converter neuroimagers trust: group by
SeriesInstanceUID, split a series that mixes acquisitions (echo, magnitude/phase,
orientation, matrix size), sort slices along the normal of ImageOrientationPatient
by their ImagePositionPatient (never by InstanceNumber or file name), drop a
duplicate slice only when its pixels are identical, and report uneven spacing
instead of hiding it. Bad files are collected, not fatal: a study with one broken
file still converts, and the broken file is listed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medlens import errors
from medlens.errors import DataError, DicomError, GeometryError, ImageReadError
from medlens.io.assemble import FileProblem, Slice, assemble_volumes, int_or, series_label
from medlens.io.dicom import check_numeric_tags, has_dicom_marker, read_dataset
from medlens.types import Volume

SKIP_NAMES = {"DICOMDIR"}
NOT_DICOM_SUFFIXES = {
    ".txt",
    ".md",
    ".json",
    ".csv",
    ".xml",
    ".pdf",
    ".html",
    ".nii",
    ".gz",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".zip",
    ".py",
    ".log",
    ".bval",
    ".bvec",
}


@dataclass
class DicomScan:
    """What a folder holds: volumes that were built and problems that were found."""

    volumes: list[Volume] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_dicom_files(path: str | Path) -> list[Path]:
    """A file, or every file below a folder (any suffix: DICOM files often have none), sorted for repeatability."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder; check the path")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.name not in SKIP_NAMES and not p.name.startswith(".")
    )
    if not files:
        raise ImageReadError(f"{root}: the folder holds no files; point to the folder with the DICOM series")
    return files


def read_dicom_volumes(path: str | Path) -> DicomScan:
    """Read every series below ``path``; files that fail are listed in ``problems`` with the reason.

    Raises :class:`ImageReadError` only when nothing at all could be read.
    """
    files = find_dicom_files(path)
    scan = DicomScan()
    slices = scan_headers(files, scan)
    groups = group_slices(slices)
    per_series = Counter(key[0] for key in groups)
    for uid, count in per_series.items():
        if count > 1:
            parts = [k for k in groups if k[0] == uid]
            scan.notes.append(
                f"{series_label(groups[parts[0]][0])} mixes acquisitions ({_split_reason(parts)}): "
                f"split into {count} volumes"
            )
    for key, members in sorted(groups.items(), key=lambda kv: _series_order(kv[1])):
        try:
            scan.volumes.extend(assemble_volumes(members, notes=scan.notes, problems=scan.problems))
        except (GeometryError, DicomError) as exc:
            scan.problems.append(FileProblem(_names(members), type(exc).__name__, str(exc)))
        except Exception as exc:  # last resort, so one strange series cannot stop a batch: reported, never silent
            scan.problems.append(
                FileProblem(
                    _names(members),
                    "DicomError",
                    f"{_names(members)}: could not be assembled "
                    f"({type(exc).__name__}: {str(exc)[:200]}); please report this file",
                )
            )
    if not scan.volumes:
        if len(scan.problems) == 1:
            raise getattr(errors, scan.problems[0].error, ImageReadError)(scan.problems[0].message)
        detail = "; ".join(p.message for p in scan.problems[:3])
        raise ImageReadError(f"{path}: no DICOM image could be read from {len(files)} file(s): {detail}")
    return scan


def scan_headers(files: list[Path], scan: DicomScan) -> list[Slice]:
    """Every file's slices from its header (pixels deferred); non-DICOM files are noted, broken ones are problems."""
    slices: list[Slice] = []
    for file in files:
        try:
            slices.extend(slices_of(file, read_dataset(file, pixels=False)))
        except DicomError as exc:
            if file.suffix.lower() in NOT_DICOM_SUFFIXES and not has_dicom_marker(file):
                scan.notes.append(f"skipped {file.name}: not DICOM")
            else:
                scan.problems.append(FileProblem(str(file), type(exc).__name__, str(exc)))
    return slices


def read_dicom_volume(path: str | Path) -> Volume:
    """Exactly one volume from ``path``; several series or any bad file is an error naming them."""
    scan = read_dicom_volumes(path)
    if scan.problems:
        raise scan_error(path, scan)
    if len(scan.volumes) != 1:
        shapes = ", ".join(f"{v.meta['name']} {'x'.join(map(str, v.shape))}" for v in scan.volumes)
        raise GeometryError(
            f"{path}: holds {len(scan.volumes)} volumes ({shapes}); {' '.join(scan.notes)} "
            "Point to one series folder, or use read_dicom_volumes / `medlens convert` for all of them"
        )
    return scan.volumes[0]


def scan_error(path: str | Path, scan: DicomScan) -> DicomError:
    return DicomError(
        f"{path}: {len(scan.problems)} file(s) could not be used: " + "; ".join(p.message for p in scan.problems[:5])
    )


def group_slices(slices: Iterable[Slice]) -> dict[tuple, list[Slice]]:
    """Group by series, then split by what dcm2niix splits on: echo, magnitude/phase, orientation, matrix size."""
    groups: dict[tuple, list[Slice]] = defaultdict(list)
    for s in slices:
        ds = s.dataset
        orientation = tuple(np.round(s.orientation, 3)) if s.orientation is not None else None
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        part = next((p for p in ("PHASE", "P", "REAL", "R", "IMAGINARY", "I") if p in image_type[2:]), "M")
        key = (
            str(ds.get("SeriesInstanceUID", "")),
            str(ds.get("EchoNumbers", "")),
            part,
            orientation,
            int(ds.get("Rows", 0)),
            int(ds.get("Columns", 0)),
            int(ds.get("SamplesPerPixel", 1)),
        )
        groups[key].append(s)
    return groups


def slices_of(path: Path, ds: Dataset) -> list[Slice]:
    """The frames of one file with their geometry; a corrupt nested value becomes a DicomError naming the file."""
    try:
        return _frames_with_geometry(path, ds)
    except DicomError:
        raise
    except Exception as exc:  # lazily parsed nested values (functional groups) fail on first access
        raise DicomError(f"{path}: corrupt header value ({str(exc)[:200]}); the file is damaged") from exc


def _frames_with_geometry(path: Path, ds: Dataset) -> list[Slice]:
    frames = int(ds.get("NumberOfFrames") or 1)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomError(
            f"{path}: no pixel data (SOP class {getattr(ds.get('SOPClassUID'), 'name', 'unknown')}); "
            "it is not an image, e.g. a report or presentation state: leave it out"
        )
    check_numeric_tags(ds, path)
    instance = int_or(ds.get("InstanceNumber"), 0)
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    out = []
    for f in range(frames):
        group = per_frame[f] if f < len(per_frame) else None
        position = _vector(
            _functional(group, shared, "PlanePositionSequence", "ImagePositionPatient")
            or ds.get("ImagePositionPatient"),
            3,
            path,
        )
        orientation = _vector(
            _functional(group, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
            or ds.get("ImageOrientationPatient"),
            6,
            path,
        )
        candidates = (
            _functional(group, shared, "PixelMeasuresSequence", "PixelSpacing"),
            ds.get("PixelSpacing"),
            ds.get("ImagerPixelSpacing"),
        )
        spacing = next((sp for sp in (_spacing(c, path) for c in candidates) if sp is not None), None)
        if frames > 1 and position is not None and group is None and orientation is not None:
            position = position + _frame_offset(ds, f) * np.cross(orientation[:3], orientation[3:])
        out.append(Slice(path, f, ds, position, orientation, spacing or (1.0, 1.0), instance, spacing is not None))
    return out


def _functional(group: Any, shared: Any, sequence: str, keyword: str) -> Any:
    for g in (group, shared):
        if g is not None and g.get(sequence):
            value = g.get(sequence)[0].get(keyword)
            if value is not None:
                return value
    return None


def _frame_offset(ds: Dataset, frame: int) -> float:
    """Legacy multi-frame without per-frame positions: GridFrameOffsetVector, else SpacingBetweenSlices."""
    grid = ds.get("GridFrameOffsetVector")
    if grid is not None and len(grid) > frame:
        return float(grid[frame])
    return frame * float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)


def _vector(value: Any, n: int, path: Path) -> np.ndarray | None:
    if value is None or value == "":
        return None
    try:
        vector = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{path}: geometry tag holds {value!r}, not {n} numbers; the header is corrupt") from exc
    if vector.shape != (n,) or not np.isfinite(vector).all():
        raise DicomError(f"{path}: geometry tag holds {value!r}, not {n} finite numbers; the header is corrupt")
    if n == 6 and (abs(np.linalg.norm(vector[:3]) - 1) > 0.01 or abs(np.linalg.norm(vector[3:]) - 1) > 0.01):
        raise DicomError(
            f"{path}: ImageOrientationPatient {list(vector)} is not two unit vectors; the header is corrupt"
        )
    return vector


def _spacing(value: Any, path: Path) -> tuple[float, float] | None:
    """Two positive millimetre values, or None (missing, or zeros as some CR writers store) to try the next tag."""
    if value is None or value == "":
        return None
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{path}: PixelSpacing holds {value!r}, not two numbers; the header is corrupt") from exc
    if not (row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col)):
        return None
    return (row, col)


def _names(slices: list[Slice]) -> str:
    return ", ".join(sorted({str(s.path) for s in slices})[:3])


def _split_reason(keys: list[tuple]) -> str:
    fields = ("series", "echo numbers", "magnitude/phase", "orientation", "rows", "columns", "samples per pixel")
    differing = [name for i, name in enumerate(fields) if len({k[i] for k in keys}) > 1]
    sizes = sorted({f"{k[4]}x{k[5]}" for k in keys})
    return ", ".join(differing) + (f": matrix sizes {' and '.join(sizes)}" if len(sizes) > 1 else "")


def _series_order(slices: list[Slice]) -> tuple:
    ds = slices[0].dataset
    return (
        int_or(_value(ds, "SeriesNumber"), 0),
        str(_value(ds, "SeriesInstanceUID") or ""),
        str(_value(ds, "EchoNumbers") or ""),
        str(slices[0].path),
    )


def _value(ds: Dataset, keyword: str) -> Any:
    """A header value for sorting; a corrupt one (pydicom converts lazily and may raise) sorts as missing."""
    try:
        return ds.get(keyword)
    except Exception:
        return None
