"""Segmentation datasets: the Medical Segmentation Decathlon layout, or a CSV of image-label pairs.

Before anything is planned or trained, :func:`check_dataset` reads every pair
and reports what is wrong (geometry disagreeing, label values not declared,
NaN, empty label maps) in one list, so a user fixes a dataset once instead of
meeting its problems one crash at a time.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import DataError, MedlensError
from medlens.io.volume import load_volume
from medlens.types import Volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
MSD_KNOWN = {  # what the Decathlon's dataset.json says, for copies that lost it
    "hippocampus": {
        "labels": {0: "background", 1: "anterior", 2: "posterior"},
        "modality": "MR",
        "licence": "CC BY-SA 4.0",
        "name": "MSD Task04 Hippocampus",
    }
}


@dataclass(frozen=True)
class SegCase:
    case_id: str
    image: Path
    label: Path | None


@dataclass
class SegDataset:
    """Cases plus what the labels mean; ``modality`` drives intensity normalisation (CT vs MR/other)."""

    root: Path
    cases: list[SegCase]
    label_names: dict[int, str]
    modality: str = "MR"
    licence: str = "unknown"
    name: str = "dataset"
    problems: list[str] = field(default_factory=list)


def load_seg_dataset(path: str | Path) -> SegDataset:
    """An MSD folder (``imagesTr/``, ``labelsTr/``, optional ``dataset.json``) or a CSV with ``image``, ``label``."""
    root = Path(path)
    if root.is_file() and root.suffix.lower() == ".csv":
        return _from_csv(root)
    if not (root / "imagesTr").is_dir():
        raise DataError(
            f"{root}: expected a Medical Segmentation Decathlon folder (imagesTr/, labelsTr/) or a CSV "
            "with 'image' and 'label' columns"
        )
    info = json.loads((root / "dataset.json").read_text()) if (root / "dataset.json").is_file() else {}
    cases = []
    for image in sorted(
        p
        for p in (root / "imagesTr").iterdir()
        if p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.startswith(".")
    ):
        label = root / "labelsTr" / image.name
        cases.append(SegCase(_case_id(image), image, label if label.is_file() else None))
    if not cases:
        raise DataError(f"{root / 'imagesTr'}: no images ({', '.join(IMAGE_SUFFIXES)}); check the folder")
    if not info:  # a copy that lost its dataset.json: what the Decathlon's says, when the folder name tells
        info = next((v for k, v in MSD_KNOWN.items() if k in root.name.lower()), {})
    labels = {int(k): str(v) for k, v in info.get("labels", {}).items()}
    modality = str(
        info["modality"] if isinstance(info.get("modality"), str) else next(iter(info.get("modality", {}).values()), "")
    ) or _guess_modality(root)
    return SegDataset(
        root,
        cases,
        labels,
        modality.upper() if modality.upper() == "CT" else "MR",
        str(info.get("licence", info.get("license", "unknown"))),
        str(info.get("name", root.name)),
    )


def _from_csv(path: Path) -> SegDataset:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise DataError(f"{path}: needs a header with 'image' and 'label' columns (paths relative to the CSV)")
    cases = [
        SegCase(_case_id(Path(r["image"])), path.parent / r["image"], path.parent / r["label"] if r["label"] else None)
        for r in rows
    ]
    return SegDataset(path.parent, cases, {}, "CT" if "ct" in path.stem.lower() else "MR", name=path.stem)


def _case_id(image: Path) -> str:
    name = image.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return image.stem


def _guess_modality(root: Path) -> str:
    return "CT" if "ct" in root.name.lower() else "MR"


def read_pair(case: SegCase) -> tuple[Volume, np.ndarray | None]:
    """Image volume and integer label array (same grid), or a DataError naming the case and what disagrees."""
    image = load_volume(case.image)
    if case.label is None:
        return image, None
    label = load_volume(case.label)
    if label.shape != image.shape:
        raise DataError(
            f"{case.case_id}: label shape {label.shape} differs from image shape {image.shape}; "
            "labels must be on the image's voxel grid"
        )
    if not np.allclose(label.affine, image.affine, atol=1e-3):
        raise DataError(
            f"{case.case_id}: label and image geometry (affine) differ by up to "
            f"{np.abs(label.affine - image.affine).max():.3g} mm; resample the label onto the image"
        )
    values = label.array
    if not np.array_equal(values, np.round(values)):
        raise DataError(f"{case.case_id}: label map holds non-integer values; labels must be integer classes")
    return image, values.astype(np.uint8)


def check_dataset(dataset: SegDataset) -> dict[str, Any]:
    """Read every case; returns counts, label values seen, and a list of problems (one line each)."""
    problems: list[str] = []
    seen: set[int] = set()
    shapes, spacings, codes = [], [], []
    declared = set(dataset.label_names) if dataset.label_names else None
    for case in dataset.cases:
        if case.label is None:
            problems.append(f"{case.case_id}: no label file")
            continue
        try:
            image, label = read_pair(case)
        except MedlensError as exc:
            problems.append(str(exc))
            continue
        values = set(np.unique(label).tolist())
        seen |= values
        if declared is not None and not values <= declared:
            problems.append(
                f"{case.case_id}: label values {sorted(values - declared)} are not declared in dataset.json "
                f"({sorted(declared)})"
            )
        if values <= {0}:
            problems.append(f"{case.case_id}: label map is empty (background only)")
        shapes.append(image.shape)
        spacings.append(image.spacing_mm)
        codes.append(image.orientation)
    common = max(set(codes), key=codes.count) if codes else ""
    return {
        "cases": len(dataset.cases),
        "usable": len(shapes),
        "label_values": sorted(seen),
        "problems": problems,
        "shapes": shapes,
        "spacings_mm": spacings,
        "axis_codes": common,
    }
