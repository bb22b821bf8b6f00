"""``medlens detect``: boxes for a batch of files, in the files' own pixel coordinates.

Writes ``detections.csv`` (``file,label,score,xmin,ymin,xmax,ymax`` and, for
volumes, ``zmin,zmax`` in voxel indices plus sizes in mm), ``counts.csv`` (per
file and class, at each class's validation-chosen counting threshold), an
overlay PNG per 2D image, and a DICOM SR (TID 1500) for each DICOM input. A file
that cannot be read is reported in ``problems.csv`` and the batch goes on.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, ImageDraw

from medlens.detect.preprocess import DetectPreprocessing, detect_images, prepare_image
from medlens.detect.sr import write_detection_sr
from medlens.errors import MedlensError
from medlens.io import read_image
from medlens.io.dicom import has_dicom_marker
from medlens.io.volume import load_volume

COLORS = ((230, 57, 70), (29, 161, 242), (255, 183, 3), (46, 196, 182), (155, 93, 229), (255, 112, 67))


@dataclass
class FileDetections:
    """One file's boxes at or above their class's counting threshold, source pixels, best score first."""

    file: Path
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    spacing_mm: tuple[float, ...] | None = None
    outputs: dict[str, str] = field(default_factory=dict)


def kept_detections(det: dict[str, np.ndarray], thresholds: list[float]) -> dict[str, np.ndarray]:
    """The detections at or above their class's counting threshold."""
    keep = det["scores"] >= np.asarray(thresholds)[det["labels"]] if len(det["labels"]) else np.zeros(0, bool)
    return {k: v[keep] for k, v in det.items()}


def detect_file(bundle: Any, path: Path) -> FileDetections:
    """``bundle``'s kept boxes for one file (raises a :class:`MedlensError` for a file it cannot read)."""
    image, scale = prepare_image(path, bundle.preprocessing)
    det = detect_images(bundle.model, [image], bundle.preprocessing, [scale], bundle.device)[0]
    kept = kept_detections(det, bundle.count_thresholds)
    return FileDetections(path, kept["boxes"], kept["labels"], kept["scores"], _spacing(path, bundle.preprocessing))


def _spacing(path: Path, pre: DetectPreprocessing) -> tuple[float, ...] | None:
    """Pixel spacing in mm (x, y[, z]) where the file states it: DICOM PixelSpacing, a volume's affine."""
    if pre.spatial_dims == 3:
        return load_volume(path).spacing_mm
    if not has_dicom_marker(path):
        return None
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        row, col = (float(v) for v in spacing)  # row spacing (between rows: y), column spacing (x)
    except (TypeError, ValueError):
        return None
    return (col, row) if row > 0 and col > 0 else None


def detect_files(bundle: Any, files: list[Path], out: Path) -> dict[str, Any]:
    """Detect in every file; write the CSVs, overlays and SRs into ``out``. Returns the rows and the problems."""
    out.mkdir(parents=True, exist_ok=True)
    results, problems = [], []
    for path in files:
        try:
            found = detect_file(bundle, path)
            if bundle.preprocessing.spatial_dims == 2:
                found.outputs["overlay"] = str(write_overlay(path, found, bundle.label_names, out))
            if has_dicom_marker(path):
                sr = out / "sr" / f"{path.stem}.dcm"
                found.outputs["sr"] = str(write_detection_sr(path, found, bundle, sr))
        except MedlensError as exc:
            problems.append({"file": str(path), "message": str(exc)})
            continue
        results.append(found)
    _write_csvs(results, problems, bundle, out)
    return {"results": results, "problems": problems}


def detection_rows(found: FileDetections, label_names: list[str]) -> list[dict[str, Any]]:
    """``detections.csv`` rows for one file: source pixel corners, and sizes in mm where the spacing is known."""
    half = found.boxes.shape[1] // 2 if len(found.boxes) else 2
    axes = ("x", "y", "z")[:half]
    rows = []
    for box, label, score in zip(found.boxes, found.labels, found.scores):
        row: dict[str, Any] = {
            "file": str(found.file),
            "label": label_names[int(label)],
            "score": round(float(score), 4),
        }
        row.update({f"{a}min": round(float(box[k]), 1) for k, a in enumerate(axes)})
        row.update({f"{a}max": round(float(box[k + half]), 1) for k, a in enumerate(axes)})
        if found.spacing_mm:
            sizes = [(box[k + half] - box[k]) * found.spacing_mm[k] for k in range(half)]
            row.update({f"size_{a}_mm": _significant(s) for a, s in zip(axes, sizes)})
            row["longest_mm"] = _significant(max(sizes))
        rows.append(row)
    return rows


def _significant(value: float) -> float:
    """Four significant digits: a blood cell (0.007 mm) and a lung nodule (12 mm) both keep their precision."""
    return float(f"{float(value):.4g}")


def _write_csvs(results: list[FileDetections], problems: list[dict[str, str]], bundle: Any, out: Path) -> None:
    names = bundle.label_names
    axes = ("x", "y", "z")[: bundle.preprocessing.spatial_dims]
    fields = ["file", "label", "score", *(f"{a}min" for a in axes), *(f"{a}max" for a in axes)]
    rows = [r for f in results for r in detection_rows(f, names)]
    if any("longest_mm" in r for r in rows):
        fields += [*(f"size_{a}_mm" for a in axes), "longest_mm"]
    with (out / "detections.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    with (out / "counts.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", *names])
        writer.writeheader()
        for found in results:
            writer.writerow(
                {"file": str(found.file), **{n: int((found.labels == k).sum()) for k, n in enumerate(names)}}
            )
    if problems:
        with (out / "problems.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["file", "message"])
            writer.writeheader()
            writer.writerows(problems)


def write_overlay(path: Path, found: FileDetections, label_names: list[str], out: Path) -> Path:
    """The source image at its own size with each kept box outlined in its class's colour and labelled."""
    image = read_image(path)
    grey = image if image.shape[0] in (1, 3) else image[:3]
    low, high = np.percentile(grey, [0.5, 99.5])
    pixels = np.clip((grey - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)
    picture = Image.fromarray(
        np.repeat(pixels, 3, 0).transpose(1, 2, 0) if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    )
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 320))
    for box, label, score in zip(found.boxes, found.labels, found.scores):
        color = COLORS[int(label) % len(COLORS)]
        draw.rectangle([float(box[0]), float(box[1]), float(box[2]), float(box[3])], outline=color, width=width)
        draw.text((float(box[0]) + 2, float(box[1]) + 1), f"{label_names[int(label)]} {score:.2f}", fill=color)
    target = out / "overlays" / f"{path.stem}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    picture.save(target)
    return target
