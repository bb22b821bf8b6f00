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

import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medlens import errors
from medlens.errors import DataError, DicomError, GeometryError, ImageReadError
from medlens.io.dicom import check_numeric_tags, decode_frames, has_dicom_marker, read_dataset
from medlens.io.dicom_meta import phi_free_meta
from medlens.types import Volume, affine_lps_to_ras, slices_evenly_spaced

POSITION_TOLERANCE_MM = 0.01
SKIP_NAMES = {"DICOMDIR"}
NOT_DICOM_SUFFIXES = {".txt", ".md", ".json", ".csv", ".xml", ".pdf", ".html", ".nii", ".gz", ".png", ".jpg",
                      ".jpeg", ".bmp", ".tif", ".tiff", ".zip", ".py", ".log", ".bval", ".bvec"}


@dataclass
class FileProblem:
    """A file that could not be used, and why (the message names the file)."""

    path: str
    error: str
    message: str


@dataclass
class Slice:
    """One 2D frame with its geometry in LPS millimetres."""

    path: Path
    frame: int
    dataset: Dataset
    position: np.ndarray | None
    orientation: np.ndarray | None
    spacing_rc: tuple[float, float]
    instance: int
    spacing_known: bool = True

    @property
    def normal(self) -> np.ndarray:
        assert self.orientation is not None
        return np.cross(self.orientation[:3], self.orientation[3:])


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
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in SKIP_NAMES and not p.name.startswith("."))
    if not files:
        raise ImageReadError(f"{root}: the folder holds no files; point to the folder with the DICOM series")
    return files


def read_dicom_volumes(path: str | Path, workers: int = 1) -> DicomScan:
    """Read every series below ``path``; files that fail are listed in ``problems`` with the reason.

    ``workers`` > 1 decodes files on threads (the compressed-pixel decoders release the GIL).
    Raises :class:`ImageReadError` only when nothing at all could be read.
    """
    files = find_dicom_files(path)
    scan = DicomScan()
    slices: list[Slice] = []
    for file in files:
        try:
            slices.extend(slices_of(file, read_dataset(file, pixels=False)))
        except DicomError as exc:
            if file.suffix.lower() in NOT_DICOM_SUFFIXES and not has_dicom_marker(file):
                scan.notes.append(f"skipped {file.name}: not DICOM")
                continue
            scan.problems.append(FileProblem(str(file), type(exc).__name__, str(exc)))
    groups = group_slices(slices)
    per_series = Counter(key[0] for key in groups)
    for uid, count in per_series.items():
        if count > 1:
            parts = [k for k in groups if k[0] == uid]
            scan.notes.append(f"{_series_label(groups[parts[0]][0])} mixes acquisitions ({_split_reason(parts)}): "
                              f"split into {count} volumes")
    for key, members in sorted(groups.items(), key=lambda kv: _series_order(kv[1])):
        try:
            scan.volumes.extend(assemble_volumes(members, workers=workers, notes=scan.notes, problems=scan.problems))
        except (GeometryError, DicomError) as exc:
            scan.problems.append(FileProblem(_names(members), type(exc).__name__, str(exc)))
        except Exception as exc:  # last resort, so one strange series cannot stop a batch: reported, never silent
            scan.problems.append(FileProblem(_names(members), "DicomError", f"{_names(members)}: could not be assembled "
                                             f"({type(exc).__name__}: {str(exc)[:200]}); please report this file"))
    if not scan.volumes:
        if len(scan.problems) == 1:
            raise getattr(errors, scan.problems[0].error, ImageReadError)(scan.problems[0].message)
        detail = "; ".join(p.message for p in scan.problems[:3])
        raise ImageReadError(f"{path}: no DICOM image could be read from {len(files)} file(s): {detail}")
    return scan


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
    return DicomError(f"{path}: {len(scan.problems)} file(s) could not be used: " + "; ".join(p.message for p in scan.problems[:5]))


def group_slices(slices: Iterable[Slice]) -> dict[tuple, list[Slice]]:
    """Group by series, then split by what dcm2niix splits on: echo, magnitude/phase, orientation, matrix size."""
    groups: dict[tuple, list[Slice]] = defaultdict(list)
    for s in slices:
        ds = s.dataset
        orientation = tuple(np.round(s.orientation, 3)) if s.orientation is not None else None
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        part = next((p for p in ("PHASE", "P", "REAL", "R", "IMAGINARY", "I") if p in image_type[2:]), "M")
        key = (str(ds.get("SeriesInstanceUID", "")), str(ds.get("EchoNumbers", "")), part, orientation,
               int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), int(ds.get("SamplesPerPixel", 1)))
        groups[key].append(s)
    return groups


def assemble_volumes(slices: list[Slice], workers: int = 1, notes: list[str] | None = None,
                     problems: list[FileProblem] | None = None) -> list[Volume]:
    """Sort one group along its normal, resolve duplicates, and stack it into volumes (several for repeated scans).

    A file whose pixels cannot be decoded is left out and added to ``problems``
    (the gap it leaves is then reported as uneven spacing); with ``problems=None`` it is an error.
    """
    notes = [] if notes is None else notes
    no_geometry = any(s.position is None or s.orientation is None for s in slices)
    if no_geometry and len({s.path for s in slices}) == 1:  # cine / multi-frame without geometry: frames in file order
        pixels = _decode_all(slices, workers, problems)
        if not pixels:
            raise DicomError(f"{slices[0].path}: pixel data could not be decoded")
        return [_build([replace(s, position=None, orientation=None) for s in slices], pixels, notes)]
    if len(slices) > 1 and no_geometry:
        missing = next(s for s in slices if s.position is None or s.orientation is None)
        raise GeometryError(
            f"{missing.path}: ImagePositionPatient or ImageOrientationPatient missing, so the {len(slices)} slices "
            "of this series cannot be ordered in space; the files are not a volume (or were stripped by a bad export)"
        )
    pixels = _decode_all(slices, workers, problems)
    slices = [s for s in slices if s.path in pixels]
    if not slices:
        return []  # every file failed to decode; each is already listed in problems
    if len(slices) == 1 or slices[0].position is None:
        return [_build(slices, pixels, notes)]
    normal = slices[0].normal
    distance = {id(s): float(np.dot(s.position, normal)) for s in slices}
    ordered = sorted(slices, key=lambda s: (round(distance[id(s)], 2), s.instance, str(s.path), s.frame))
    runs = _runs_at_same_position(ordered, distance)
    unique = [_drop_identical(run, pixels, notes) for run in runs]
    repeats = {len(run) for run in unique}
    if repeats == {1}:
        return [_build([run[0] for run in unique], pixels, notes)]
    if len(repeats) == 1:  # the same positions acquired k times (dynamic, repeated): k volumes
        k = repeats.pop()
        notes.append(f"{_series_label(slices[0])}: every position acquired {k} times; split into {k} volumes")
        by_time = [sorted(run, key=_acquisition_order) for run in unique]
        return [_build([run[i] for run in by_time], pixels, notes, repeat=i + 1) for i in range(k)]
    worst = max(unique, key=len)
    raise GeometryError(
        f"{worst[0].path.name} and {worst[1].path.name}: {len(worst)} different slices at the same position "
        f"({distance[id(worst[0])]:.2f} mm along the normal) while other positions have one; the series mixes "
        "acquisitions medlens cannot tell apart: export each acquisition as its own series"
    )


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
        raise DicomError(f"{path}: no pixel data (SOP class {getattr(ds.get('SOPClassUID'), 'name', 'unknown')}); "
                         "it is not an image, e.g. a report or presentation state: leave it out")
    check_numeric_tags(ds, path)
    instance = _int(ds.get("InstanceNumber"), 0)
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    out = []
    for f in range(frames):
        group = per_frame[f] if f < len(per_frame) else None
        position = _vector(_functional(group, shared, "PlanePositionSequence", "ImagePositionPatient") or ds.get("ImagePositionPatient"), 3, path)
        orientation = _vector(_functional(group, shared, "PlaneOrientationSequence", "ImageOrientationPatient") or ds.get("ImageOrientationPatient"), 6, path)
        candidates = (_functional(group, shared, "PixelMeasuresSequence", "PixelSpacing"), ds.get("PixelSpacing"), ds.get("ImagerPixelSpacing"))
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
        raise DicomError(f"{path}: ImageOrientationPatient {list(vector)} is not two unit vectors; the header is corrupt")
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


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _decode_all(slices: list[Slice], workers: int, problems: list[FileProblem] | None) -> dict[Path, np.ndarray]:
    paths = list(dict.fromkeys(s.path for s in slices))
    datasets = {s.path: s.dataset for s in slices}

    def decode(path: Path) -> np.ndarray | DicomError:
        try:
            return decode_frames(datasets[path], path)
        except DicomError as exc:
            if problems is None:
                raise
            return exc

    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            arrays = list(pool.map(decode, paths))
    else:
        arrays = [decode(p) for p in paths]
    pixels = {}
    for path, array in zip(paths, arrays):
        if isinstance(array, DicomError):
            problems.append(FileProblem(str(path), type(array).__name__, str(array)))  # type: ignore[union-attr]
        else:
            pixels[path] = array
    return pixels


def _runs_at_same_position(ordered: list[Slice], distance: dict[int, float]) -> list[list[Slice]]:
    runs: list[list[Slice]] = [[ordered[0]]]
    for s in ordered[1:]:
        if abs(distance[id(s)] - distance[id(runs[-1][0])]) <= POSITION_TOLERANCE_MM:
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def _drop_identical(run: list[Slice], pixels: dict[Path, np.ndarray], notes: list[str]) -> list[Slice]:
    kept: list[Slice] = []
    for s in run:
        twin = next((k for k in kept if np.array_equal(pixels[k.path][k.frame], pixels[s.path][s.frame])), None)
        if twin is None:
            kept.append(s)
        else:
            notes.append(f"{_series_label(s)}: {s.path.name} duplicates {twin.path.name} (same position, identical pixels); kept one")
    return kept


def _acquisition_order(s: Slice) -> tuple:
    ds = s.dataset
    return (_int(ds.get("AcquisitionNumber"), 0), str(ds.get("AcquisitionTime", "")), float(ds.get("TriggerTime") or 0.0), s.instance, str(s.path))


def _build(slices: list[Slice], pixels: dict[Path, np.ndarray], notes: list[str], repeat: int = 0) -> Volume:
    first = slices[0]
    stack = np.stack([pixels[s.path][s.frame] for s in slices])  # (k, rows, cols[, 3])
    array = np.ascontiguousarray(np.swapaxes(stack, 0, 2) if stack.ndim == 3 else np.transpose(stack, (2, 1, 0, 3)))
    row_mm, col_mm = first.spacing_rc
    warnings: list[str] = [] if first.spacing_known else ["no valid PixelSpacing/ImagerPixelSpacing: 1 mm assumed"]
    if first.orientation is None:  # a projection radiograph or secondary capture: pixel spacing only
        affine_lps = np.diag([col_mm, row_mm, 1.0, 1.0])
        warnings.append("no ImagePositionPatient/ImageOrientationPatient: pixel grid only, not placed in the patient")
        positions = None
    else:
        normal = first.normal
        positions = tuple(float(np.dot(s.position, normal)) for s in slices)
        step = float(np.median(np.diff(positions))) if len(slices) > 1 else _single_slice_step(first.dataset)
        affine_lps = np.eye(4)
        affine_lps[:3, 0] = first.orientation[:3] * col_mm
        affine_lps[:3, 1] = first.orientation[3:] * row_mm
        affine_lps[:3, 2] = normal * step
        affine_lps[:3, 3] = first.position
        if not slices_evenly_spaced(positions):
            steps = np.diff(positions)
            warnings.append(f"slices are not evenly spaced (steps {steps.min():.2f} to {steps.max():.2f} mm): "
                            "gaps or missing slices; equalize before treating it as a regular grid")
    meta = phi_free_meta(first.dataset, n_slices=len(slices), repeat=repeat)
    notes.extend(f"{meta['name']}: {w}" for w in warnings)
    return Volume(array=array, affine=affine_lps_to_ras(affine_lps), meta=meta, slice_positions_mm=positions,
                  warnings=tuple(warnings))


def _single_slice_step(ds: Dataset) -> float:
    return float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)


def _names(slices: list[Slice]) -> str:
    return ", ".join(sorted({str(s.path) for s in slices})[:3])


def _split_reason(keys: list[tuple]) -> str:
    fields = ("series", "echo numbers", "magnitude/phase", "orientation", "rows", "columns", "samples per pixel")
    differing = [name for i, name in enumerate(fields) if len({k[i] for k in keys}) > 1]
    sizes = sorted({f"{k[4]}x{k[5]}" for k in keys})
    return ", ".join(differing) + (f": matrix sizes {' and '.join(sizes)}" if len(sizes) > 1 else "")


def _series_label(s: Slice) -> str:
    return f"series {s.dataset.get('SeriesNumber', '?')}"


def _series_order(slices: list[Slice]) -> tuple:
    ds = slices[0].dataset
    return (_int(ds.get("SeriesNumber"), 0), str(ds.get("SeriesInstanceUID", "")), str(ds.get("EchoNumbers", "")), str(slices[0].path))


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)
