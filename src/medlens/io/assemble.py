"""Slices of one acquisition -> volumes: sort in space, resolve duplicates, decode straight into the volume.

Geometry comes from the headers alone, so the order and the duplicates are
known before any pixel is decoded; each file is then decoded once, into its
place in a preallocated float32 array (one volume of memory, not three). Only
slices that share a position are decoded early, to compare their pixels.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medlens.errors import DicomError, GeometryError
from medlens.io.dicom import decode_frames
from medlens.io.dicom_meta import phi_free_meta
from medlens.types import Volume, affine_lps_to_ras, slices_evenly_spaced

POSITION_TOLERANCE_MM = 0.01


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


class _Decoder:
    """Decodes each file once; failures become problems (or errors when there is no problem list)."""

    def __init__(self, problems: list[FileProblem] | None) -> None:
        self.problems = problems
        self.cache: dict[Path, np.ndarray | DicomError] = {}

    def frames(self, s: Slice) -> np.ndarray | DicomError:
        """Decode and keep (for slices compared at a shared position)."""
        if s.path not in self.cache:
            self.cache[s.path] = self._decode(s.path, s.dataset)
        return self.cache[s.path]

    def take(self, s: Slice) -> np.ndarray | DicomError:
        """Decode for filling the volume, keeping nothing, so only one file's pixels exist beside the volume."""
        return self.cache.pop(s.path) if s.path in self.cache else self._decode(s.path, s.dataset)

    def _decode(self, path: Path, ds: Dataset) -> np.ndarray | DicomError:
        try:
            frames = decode_frames(ds, path, header_checked=True)
            _release_pixels(ds)
            return frames
        except DicomError as exc:
            if self.problems is None:
                raise
            self.problems.append(FileProblem(str(path), type(exc).__name__, str(exc)))
            return exc


def _release_pixels(ds: Dataset) -> None:
    """Drop the raw bytes and pydicom's cached array once the frames are in the volume (the header stays)."""
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            del ds[keyword]
    ds._pixel_array = None  # pydicom caches the decoded array on the dataset
    ds._pixel_id = {}


def assemble_volumes(
    slices: list[Slice], notes: list[str] | None = None, problems: list[FileProblem] | None = None
) -> list[Volume]:
    """Sort one group along its normal, resolve duplicates, and stack it into volumes (several for repeated scans).

    A file whose pixels cannot be decoded is left out and added to ``problems``
    (the gap it leaves is then reported as uneven spacing); with ``problems=None`` it is an error.
    """
    notes = [] if notes is None else notes
    decoder = _Decoder(problems)
    no_geometry = any(s.position is None or s.orientation is None for s in slices)
    if no_geometry and len({s.path for s in slices}) == 1:  # cine / multi-frame without geometry: frames in file order
        return _built([replace(s, position=None, orientation=None) for s in slices], decoder, notes)
    if len(slices) > 1 and no_geometry:
        missing = next(s for s in slices if s.position is None or s.orientation is None)
        raise GeometryError(
            f"{missing.path}: ImagePositionPatient or ImageOrientationPatient missing, so the {len(slices)} slices "
            "of this series cannot be ordered in space; the files are not a volume (or were stripped by a bad export)"
        )
    if len(slices) == 1:
        return _built(slices, decoder, notes)
    normal = slices[0].normal
    distance = {id(s): float(np.dot(s.position, normal)) for s in slices}
    ordered = sorted(slices, key=lambda s: (round(distance[id(s)], 2), s.instance, str(s.path), s.frame))
    runs = [_drop_identical(run, decoder, notes) for run in _runs_at_same_position(ordered, distance)]
    runs = [run for run in runs if run]
    repeats = {len(run) for run in runs}
    if repeats <= {1}:
        return _built([run[0] for run in runs], decoder, notes)
    if len(repeats) == 1:  # the same positions acquired k times (dynamic, repeated): k volumes
        k = repeats.pop()
        notes.append(f"{series_label(slices[0])}: every position acquired {k} times; split into {k} volumes")
        by_time = [sorted(run, key=_acquisition_order) for run in runs]
        return [v for i in range(k) for v in _built([run[i] for run in by_time], decoder, notes, repeat=i + 1)]
    worst = max(runs, key=len)
    raise GeometryError(
        f"{worst[0].path.name} and {worst[1].path.name}: {len(worst)} different slices at the same position "
        f"({distance[id(worst[0])]:.2f} mm along the normal) while other positions have one; the series mixes "
        "acquisitions medlens cannot tell apart: export each acquisition as its own series"
    )


def _runs_at_same_position(ordered: list[Slice], distance: dict[int, float]) -> list[list[Slice]]:
    runs: list[list[Slice]] = [[ordered[0]]]
    for s in ordered[1:]:
        if abs(distance[id(s)] - distance[id(runs[-1][0])]) <= POSITION_TOLERANCE_MM:
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def _drop_identical(run: list[Slice], decoder: _Decoder, notes: list[str]) -> list[Slice]:
    """Slices at one position: identical pixels are one slice; undecodable ones are dropped (and listed)."""
    if len(run) == 1:
        return run
    kept: list[tuple[Slice, np.ndarray]] = []
    for s in run:
        frames = decoder.frames(s)
        if isinstance(frames, DicomError):
            continue
        twin = next((k for k, pixels in kept if np.array_equal(pixels, frames[s.frame])), None)
        if twin is None:
            kept.append((s, frames[s.frame]))
        else:
            notes.append(
                f"{series_label(s)}: {s.path.name} duplicates {twin.path.name} (same position, identical pixels); kept one"
            )
    return [s for s, _ in kept]


def _acquisition_order(s: Slice) -> tuple:
    ds = s.dataset
    return (
        int_or(ds.get("AcquisitionNumber"), 0),
        str(ds.get("AcquisitionTime", "")),
        float(ds.get("TriggerTime") or 0.0),
        s.instance,
        str(s.path),
    )


def _built(slices: list[Slice], decoder: _Decoder, notes: list[str], repeat: int = 0) -> list[Volume]:
    """Decode into one preallocated array; slices whose file failed are removed. Empty list when none survived."""
    first = slices[0].dataset
    rows, cols, samples = int(first.Rows), int(first.Columns), int(first.get("SamplesPerPixel", 1))
    # slice-major memory (each decoded frame is one contiguous copy), seen as (X, Y, Z): NIfTI's own Fortran order
    stack = np.empty((len(slices), rows, cols) + ((samples,) if samples > 1 else ()), dtype=np.float32)
    where: dict[Path, list[int]] = defaultdict(list)
    for k, s in enumerate(slices):
        where[s.path].append(k)
    failed = _fill(stack, slices, where, ((p, decoder.take(slices[where[p][0]])) for p in where))
    if failed:
        keep = [k for k in range(len(slices)) if k not in failed]
        if not keep:
            return []
        stack, slices = stack[keep], [slices[k] for k in keep]
    array = stack.transpose((2, 1, 0, 3) if stack.ndim == 4 else (2, 1, 0))
    return [_volume(array, slices, notes, repeat)]


def _fill(stack: np.ndarray, slices: list[Slice], where: dict[Path, list[int]], decoded: Any) -> set[int]:
    failed: set[int] = set()
    for path, frames in decoded:
        if isinstance(frames, DicomError):
            failed.update(where[path])
            continue
        for k in where[path]:
            frame = frames[slices[k].frame]
            if frame.shape != stack.shape[1:]:
                raise DicomError(
                    f"{path}: decoded frame has shape {frame.shape}, the series {stack.shape[1:]}; the file is corrupt"
                )
            stack[k] = frame
    return failed


def _volume(array: np.ndarray, slices: list[Slice], notes: list[str], repeat: int) -> Volume:
    first = slices[0]
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
            warnings.append(
                f"slices are not evenly spaced (steps {steps.min():.2f} to {steps.max():.2f} mm): "
                "gaps or missing slices; equalize before treating it as a regular grid"
            )
    meta = phi_free_meta(first.dataset, n_slices=len(slices), repeat=repeat)
    notes.extend(f"{meta['name']}: {w}" for w in warnings)
    return Volume(
        array=array,
        affine=affine_lps_to_ras(affine_lps),
        meta=meta,
        slice_positions_mm=positions,
        warnings=tuple(warnings),
    )


def _single_slice_step(ds: Dataset) -> float:
    return float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)


def series_label(s: Slice) -> str:
    return f"series {s.dataset.get('SeriesNumber', '?')}"


def int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
