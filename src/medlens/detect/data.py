"""Detection datasets: images with labelled boxes, from a Pascal VOC folder, a COCO JSON or a CSV.

Boxes are kept in the image file's pixel coordinates, ``xmin, ymin, xmax, ymax``
(``x`` the column, ``y`` the row; volumes add ``zmin, zmax`` as slice indices),
with the maximum exclusive as in VOC and COCO (a box 10 pixels wide has
``xmax - xmin = 10``). A box a user's data would need fixing for is never
silently dropped and never silently used: a degenerate box (no width or height)
is left out and listed in :attr:`DetectionData.problems`; a box outside its
image, an unknown class or an unreadable annotation file stops loading with
the file named.

    >>> data = load_detection_dataset("microscopy_bccd_detection/")      # VOC: Annotations/, JPEGImages/
    >>> data = load_detection_dataset("boxes.csv")     # file,label,xmin,ymin,xmax,ymax[,zmin,zmax][,split]
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import DataError

SPLITS = ("train", "val", "test")
BOX_COLUMNS_2D = ("xmin", "ymin", "xmax", "ymax")
BOX_COLUMNS_3D = ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")
CARVE = {"val": 0.15, "test": 0.15}  # splits carved by seed when the data names none


@dataclass
class DetectionItem:
    """One image and its boxes (``(N, 4)`` or ``(N, 6)`` float, columns as :data:`BOX_COLUMNS_2D` / ``_3D``)."""

    file: Path
    boxes: np.ndarray
    labels: np.ndarray  # (N,) class indices into DetectionData.label_names
    split: str = "train"
    size: tuple[int, ...] | None = None  # (width, height[, depth]) when the annotation states it

    @property
    def name(self) -> str:
        return self.file.name


@dataclass
class DetectionData:
    """Images with boxes, split into train / val / test, and what was left out and why."""

    name: str
    label_names: tuple[str, ...]
    spatial_dims: int
    items: list[DetectionItem]
    problems: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[DetectionItem]:
        return [item for item in self.items if item.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images and boxes per class in each split (for the bundle and the report)."""
        out: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            items = self.split(split)
            labels = np.concatenate([i.labels for i in items]) if items else np.zeros(0, int)
            out[split] = {"images": len(items), **{n: int((labels == k).sum()) for k, n in enumerate(self.label_names)}}
        return out


def load_detection_dataset(
    source: str | Path, image_dir: str | Path | None = None, seed: int = 0, label_names: tuple[str, ...] | None = None
) -> DetectionData:
    """A VOC folder (``Annotations/*.xml``, ``JPEGImages/``, optional ``ImageSets/Main/{train,val,test}.txt``), a
    COCO JSON (``images``, ``annotations``, ``categories``; an image's ``split`` key if present) or a CSV, by what
    ``source`` is. ``label_names`` fixes the class order (a bundle's); otherwise classes are sorted by name."""
    path = Path(source)
    if path.is_dir():
        if not (path / "Annotations").is_dir():
            raise DataError(
                f"{path}: not a Pascal VOC folder (no Annotations/); give a VOC folder, a COCO .json or a box CSV"
            )
        records, splits_given = _voc_records(path, Path(image_dir) if image_dir else path / "JPEGImages")
    elif path.suffix.lower() == ".json":
        records, splits_given = _coco_records(path, Path(image_dir) if image_dir else path.parent)
    elif path.suffix.lower() == ".csv":
        records, splits_given = _csv_records(path, Path(image_dir) if image_dir else path.parent)
    else:
        raise DataError(f"{path}: not found, or not a VOC folder, a COCO .json or a box .csv")
    return _build(path, records, splits_given, seed, label_names)


@dataclass
class _Record:
    file: Path
    where: str  # the annotation file (and line) to name in messages
    boxes: list[tuple[str, list[float]]]
    split: str | None = None
    size: tuple[int, ...] | None = None


def _voc_records(root: Path, images: Path) -> tuple[list[_Record], bool]:
    lists = root / "ImageSets" / "Main"
    split_of: dict[str, str] = {}
    for split in SPLITS:
        listed = lists / f"{split}.txt"
        if listed.is_file():
            for stem in listed.read_text().split():
                split_of.setdefault(stem, split)
    records = []
    for xml_path in sorted((root / "Annotations").glob("*.xml")):
        try:
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError as exc:
            raise DataError(f"{xml_path}: not a readable VOC annotation ({exc}); fix or remove the file") from exc
        filename = (tree.findtext("filename") or f"{xml_path.stem}.jpg").strip()
        size = tree.find("size")
        dims = tuple(int(float(size.findtext(k) or 0)) for k in ("width", "height")) if size is not None else None
        boxes = []
        for obj in tree.iter("object"):
            box = obj.find("bndbox")
            if box is None:
                raise DataError(f"{xml_path}: an <object> without <bndbox>; every object needs its box")
            boxes.append(
                ((obj.findtext("name") or "").strip(), [_number(box.findtext(k), k, xml_path) for k in BOX_COLUMNS_2D])
            )
        split = split_of.get(xml_path.stem) if split_of else None
        records.append(
            _Record(images / Path(filename).name, str(xml_path), boxes, split, dims if dims and all(dims) else None)
        )
    if not records:
        raise DataError(f"{root / 'Annotations'}: no .xml annotation files; a VOC folder needs one per image")
    return records, bool(split_of)


def _coco_records(path: Path, images: Path) -> tuple[list[_Record], bool]:
    try:
        coco = json.loads(path.read_text())
        categories = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
        by_image = {int(i["id"]): i for i in coco["images"]}
        annotations = coco.get("annotations", [])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a COCO detection file ({exc}); it needs images, annotations, categories") from exc
    boxes: dict[int, list[tuple[str, list[float]]]] = {k: [] for k in by_image}
    for n, ann in enumerate(annotations):
        where = f"{path} annotation {n}"
        image_id, category = ann.get("image_id"), ann.get("category_id")
        if image_id not in boxes or category not in categories:
            raise DataError(f"{where}: image_id {image_id!r} or category_id {category!r} is not listed in the file")
        x, y, w, h = (_number(v, "bbox", where) for v in ann.get("bbox", [None] * 4))
        boxes[image_id].append((categories[category], [x, y, x + w, y + h]))
    records = [
        _Record(
            images / str(info["file_name"]),
            f"{path} image {image_id}",
            boxes[image_id],
            str(info["split"]).lower() if "split" in info else None,
            (int(info["width"]), int(info["height"])) if "width" in info and "height" in info else None,
        )
        for image_id, info in by_image.items()
    ]
    return records, any(r.split for r in records)


def _csv_records(path: Path, images: Path) -> tuple[list[_Record], bool]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"{path}: no rows; a box CSV has a header file,label,xmin,ymin,xmax,ymax and one row per box")
    columns = set(rows[0])
    needed = BOX_COLUMNS_3D if {"zmin", "zmax"} <= columns else BOX_COLUMNS_2D
    missing = [c for c in ("file", "label", *needed) if c not in columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; a box CSV has file,label,xmin,ymin,xmax,ymax "
            "(plus zmin,zmax for volumes; a row with an empty label lists an image without boxes)"
        )
    records: dict[str, _Record] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{path} line {line}"
        record = records.setdefault(row["file"], _Record(images / row["file"], f"{path}", [], None))
        if "split" in columns and row["split"].strip():
            record.split = row["split"].strip().lower()
        if row["label"].strip():
            record.boxes.append((row["label"].strip(), [_number(row[c], c, where) for c in needed]))
    return list(records.values()), "split" in columns


def _number(text: Any, what: str, where: Any) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DataError(f"{where}: box field {what} is {str(text)[:40]!r}, not a number") from None
    if not np.isfinite(value):
        raise DataError(f"{where}: box field {what} is {value}; coordinates must be finite pixel positions")
    return value


def _build(
    path: Path, records: list[_Record], splits_given: bool, seed: int, label_names: tuple[str, ...] | None
) -> DetectionData:
    found = sorted({label for r in records for label, _ in r.boxes})
    names = tuple(label_names) if label_names else tuple(found)
    unknown = [n for n in found if n not in names]
    if unknown:
        raise DataError(f"{path}: class(es) {', '.join(map(repr, unknown))} are not among {', '.join(names)}")
    if not names:
        raise DataError(f"{path}: no boxes at all; a detector needs labelled boxes to learn from")
    bad_splits = sorted({r.split for r in records if r.split and r.split not in SPLITS})
    if bad_splits:
        raise DataError(f"{path}: split value(s) {', '.join(bad_splits)}; allowed: {', '.join(SPLITS)}")
    dims = 3 if any(len(b) == 6 for r in records for _, b in r.boxes) else 2
    problems: list[str] = []
    if not splits_given or all(r.split is None for r in records):
        _carve_splits(records, seed)
    elif any(r.split is None for r in records):  # split lists that leave images out: those stay out, reported
        left = [r for r in records if r.split is None]
        records = [r for r in records if r.split is not None]
        problems.append(
            f"{len(left)} annotated image(s) are in no split list and were not used ({left[0].file.name}, ...)"
        )
    items = []
    for r in records:
        kept, labels = [], []
        for label, box in r.boxes:
            if _degenerate(box):
                problems.append(
                    f"{r.where}: {label} box {_fmt(box)} has no width or height; left out (fix the annotation)"
                )
                continue
            kept.append(box)
            labels.append(names.index(label))
        items.append(
            DetectionItem(
                r.file,
                np.asarray(kept, np.float32).reshape(-1, 2 * dims),
                np.asarray(labels, np.int64),
                r.split or "train",
                r.size,
            )
        )
    data = DetectionData(path.stem if path.is_file() else path.name, names, dims, items, problems, {"path": str(path)})
    for split in ("train", "val"):
        if not data.split(split):
            raise DataError(
                f"{path}: the {split} split has no images; list some, or drop the split lists to carve them"
            )
    return data


def _carve_splits(records: list[_Record], seed: int) -> None:
    order = np.random.default_rng(seed).permutation(len(records))
    n_val, n_test = (max(1, round(len(records) * CARVE[s])) for s in ("val", "test"))
    for rank, i in enumerate(order):
        records[i].split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"


def _degenerate(box: list[float]) -> bool:
    half = len(box) // 2
    return any(box[k + half] <= box[k] for k in range(half))


def _fmt(box: list[float] | np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def check_boxes_inside(item: DetectionItem, shape: tuple[int, ...]) -> np.ndarray:
    """``item``'s boxes checked against its image's spatial ``shape`` (array order: rows, columns for a 2D image;
    X, Y, Z voxels for a volume) and clipped by at most one pixel (VOC's 1-based corners reach one past the edge);
    a box further out is an error."""
    extent = (shape[1], shape[0]) if len(shape) == 2 else tuple(shape)  # x: columns, y: rows; volumes: i, j, k
    half = item.boxes.shape[1] // 2
    low = np.zeros(half, np.float32)
    high = np.asarray(extent[:half], np.float32)
    outside = (item.boxes[:, :half] < low - 1).any(1) | (item.boxes[:, half:] > high + 1).any(1)
    if outside.any():
        box = item.boxes[int(np.argmax(outside))]
        raise DataError(
            f"{item.file}: box {_fmt(box)} lies outside the {' x '.join(map(str, extent[:half]))} image "
            f"({int(outside.sum())} such box(es)); coordinates are pixels from the top-left corner, xmin,ymin,xmax,ymax"
        )
    return np.concatenate([np.clip(item.boxes[:, :half], low, high), np.clip(item.boxes[:, half:], low, high)], 1)
