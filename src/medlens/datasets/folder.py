"""A user's own data: a folder of images (PNG/JPEG/DICOM/NIfTI) plus a CSV of labels.

CSV columns: ``file`` (path relative to the CSV's folder, or to ``image_dir``),
``label`` (a class name; several separated by ``|`` for multi-label; another
column with ``label_column``), and optionally ``split`` (train/val/test).
Other columns are kept as metadata (age, sex, view: clinical inputs for fusion).
For multi-label data ``negative_label`` names the value meaning "no finding"
(an all-zero row, not a class of its own).

Without a split column the rows are split about 70/15/15 with the given seed,
stratified by label, and **by patient** when the CSV has a patient ID column
(``group_column``; by default the first of ``patient_id``, ``PatientID``,
``Patient ID``): a patient's images must never sit in both training and test,
or the test score measures memory of the patient, not the finding. With a
split column, a patient found in two splits is an error naming them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medlens.datasets.base import ClassificationData, Split
from medlens.datasets.catalog import file_sha256
from medlens.errors import DataError, MedlensError
from medlens.io import read_image
from medlens.preprocess import PER_IMAGE, PER_IMAGE_RANGE, rescale_per_image, resize_image

FILE_COLUMNS = ("file", "image", "path", "filename", "image_file")
SPLITS = ("train", "val", "test")
GROUP_COLUMNS = ("patient_id", "PatientID", "Patient ID", "patient")
AUTO = "auto"
NEGATIVE_NAMES = ("normal", "negative", "healthy", "benign", "no finding", "nofinding", "absent", "0", "none", "no")
VAL_CARVED = "carved from the train rows (about 15%, by patient when a patient column is known)"


def binary_label_order(names: list[str], positive: str | None, where: str) -> list[str]:
    """The two labels as (negative, positive): ``positive`` when given; otherwise the label other than one naming
    a negative (normal, negative, healthy, benign, no finding, absent, 0). Neither or both naming a negative is
    an error asking for ``positive_label``: a silently chosen positive class turns sensitivity into specificity."""
    if positive is not None:
        if positive not in names:
            raise DataError(
                f"{where}: positive_label={positive!r} is not one of the labels ({', '.join(names)}); "
                "set it to the label of the finding"
            )
        return [n for n in names if n != positive] + [positive]
    negative = [n for n in names if n.strip().lower().replace("_", " ").replace("-", " ") in NEGATIVE_NAMES]
    if len(negative) != 1:
        raise DataError(
            f"{where}: which of the two labels {names[0]!r} and {names[1]!r} is the finding? Sensitivity, PPV and "
            f"every report depend on it; say it with --set positive_label={names[1]} (or {names[0]})"
        )
    return [negative[0]] + [n for n in names if n != negative[0]]


def _carved(rows: list[dict[str, str]]) -> bool:
    splits = {row.get("split", "").strip().lower() for row in rows}
    return "train" in splits and "val" not in splits


def load_folder_dataset(
    csv_path: str | Path,
    image_dir: str | Path | None = None,
    image_size: tuple[int, ...] | None = None,
    multilabel: bool = False,
    seed: int = 0,
    label_column: str = "label",
    negative_label: str | None = None,
    group_column: str | None = AUTO,
    positive_label: str | None = None,
    intensity: str = "fixed",
) -> ClassificationData:
    """Load images listed in a CSV; all must share a shape unless ``image_size`` resizes them.

    ``positive_label``: a binary task's positive class (see :func:`binary_label_order`); ``intensity``:
    ``per-image`` rescales each image by its own percentiles (:func:`medlens.preprocess.rescale_per_image`),
    as prediction will.
    """
    csv_path = Path(csv_path)
    rows, file_col = _read_rows(csv_path, label_column)
    if label_column != "label":
        rows = [{**{k: v for k, v in row.items() if k != "label"}, "label": row[label_column]} for row in rows]
    root = Path(image_dir) if image_dir is not None else csv_path.parent
    label_names = _label_names(rows, multilabel, negative_label)
    if not multilabel and len(label_names) == 2:
        label_names = binary_label_order(label_names, positive_label, str(csv_path))
    elif positive_label is not None:
        raise DataError(
            f"{csv_path}: positive_label={positive_label!r} is for a task with two labels; "
            f"this CSV has {len(label_names)} ({', '.join(label_names[:6])}); drop the setting"
        )
    group = _group_column(rows, csv_path, group_column)
    splits = _assign_splits(rows, csv_path, seed, group)
    images, failures = [], []
    for line, row in enumerate(rows, start=2):
        path = root / row[file_col]
        if not path.is_file():
            failures.append(f"line {line}: {row[file_col]!r} not found in {root}")
            continue
        try:
            image = read_image(path)
            image = resize_image(image, image_size) if image_size else image
            images.append(rescale_per_image(image) if intensity == PER_IMAGE else image)
        except MedlensError as exc:
            failures.append(f"line {line}: {exc}")
    if failures:
        shown = "; ".join(failures[:5]) + (f"; and {len(failures) - 5} more" if len(failures) > 5 else "")
        raise DataError(f"{csv_path}: {len(failures)} of {len(rows)} images could not be loaded: {shown}")
    _check_same_shape(images, rows, file_col, csv_path)
    data = ClassificationData(
        name=csv_path.stem,
        task="multilabel" if multilabel else ("binary" if len(label_names) == 2 else "multiclass"),
        label_names=tuple(label_names),
        splits=_build_splits(np.stack(images), rows, file_col, label_names, splits, multilabel, negative_label),
        intensity_range=PER_IMAGE_RANGE
        if intensity == PER_IMAGE
        else (float(min(i.min() for i in images)), float(max(i.max() for i in images))),
        source={
            "file": csv_path.name,
            "sha256": file_sha256(csv_path),
            "license": "user data",
            **({"split_by": group} if group else {}),
            **({"validation": VAL_CARVED} if "split" in rows[0] and _carved(rows) else {}),
        },
    )
    data.validate()
    return data


def _read_rows(csv_path: Path, label_column: str = "label") -> tuple[list[dict[str, str]], str]:
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: label CSV not found")
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    file_col = next((c for c in FILE_COLUMNS if c in columns), None)
    if file_col is None or label_column not in columns:
        raise DataError(
            f"{csv_path}: needs a 'file' column (or one of {', '.join(FILE_COLUMNS[1:])}) and a {label_column!r} column "
            f"(another label column: --set label_column=NAME); found columns: {', '.join(columns) or 'none (empty file)'}"
        )
    for line, row in enumerate(rows, start=2):
        if not (row[file_col] or "").strip() or not (row[label_column] or "").strip():
            raise DataError(f"{csv_path}: line {line} has an empty file or label")
    return rows, file_col


def _label_names(rows: list[dict[str, str]], multilabel: bool, negative_label: str | None = None) -> list[str]:
    values = {v.strip() for row in rows for v in (row["label"].split("|") if multilabel else [row["label"]])}
    values.discard(negative_label if multilabel else None)
    return sorted(values, key=lambda v: (not v.lstrip("-").isdigit(), int(v) if v.lstrip("-").isdigit() else 0, v))


def _group_column(rows: list[dict[str, str]], csv_path: Path, group_column: str | None) -> str | None:
    """The patient ID column: the one named, or the first known name present (``auto``), or none."""
    columns = list(rows[0]) if rows else []
    if group_column == AUTO:
        return next((c for c in GROUP_COLUMNS if c in columns), None)
    if group_column and group_column not in columns:
        raise DataError(
            f"{csv_path}: group_column {group_column!r} is not a column (found: {', '.join(columns)}); "
            "name the patient ID column, or --set group_column=none to split image by image"
        )
    return group_column or None


def _assign_splits(rows: list[dict[str, str]], csv_path: Path, seed: int, group: str | None = None) -> list[str]:
    if "split" in rows[0]:
        splits = [row["split"].strip().lower() for row in rows]
        bad = sorted({s for s in splits if s not in SPLITS})
        if bad:
            raise DataError(f"{csv_path}: column 'split' has value(s) {bad}; allowed: train, val, test")
        if group:
            _check_patients_in_one_split(rows, splits, group, csv_path)
        if _carved(rows):
            splits = _carve_validation(rows, splits, csv_path, seed, group)
        return splits
    if group:
        return _grouped_splits(rows, csv_path, seed, group)
    from sklearn.model_selection import train_test_split

    index = np.arange(len(rows))
    labels = [row["label"] for row in rows]
    try:
        train, rest = train_test_split(index, test_size=0.3, stratify=labels, random_state=seed)
        val, test = train_test_split(rest, test_size=0.5, stratify=[labels[i] for i in rest], random_state=seed)
    except ValueError as exc:
        raise DataError(f"{csv_path}: cannot split stratified by label ({exc}); add a 'split' column") from exc
    splits = [""] * len(rows)
    for name, part in (("train", train), ("val", val), ("test", test)):
        for i in part:
            splits[i] = name
    return splits


def _carve_validation(
    rows: list[dict[str, str]], splits: list[str], csv_path: Path, seed: int, group: str | None
) -> list[str]:
    """A split column with train (and test) rows but no val: about 15% of the train rows become validation,
    whole patients at a time when the patient column is known, stratified by label; the test rows stay as they are."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    train = [i for i, s in enumerate(splits) if s == "train"]
    labels = [rows[i]["label"] for i in train]
    if group:
        folds = StratifiedGroupKFold(n_splits=7, shuffle=True, random_state=seed)
        _, val = next(folds.split(np.zeros(len(train)), labels, [rows[i][group].strip() for i in train]))
    else:
        try:
            _, val = train_test_split(np.arange(len(train)), test_size=0.15, stratify=labels, random_state=seed)
        except ValueError as exc:
            raise DataError(
                f"{csv_path}: cannot carve a validation split from the train rows ({exc}); add 'val' rows"
            ) from exc
    carved = list(splits)
    for j in val:
        carved[train[j]] = "val"
    return carved


def _grouped_splits(rows: list[dict[str, str]], csv_path: Path, seed: int, group: str) -> list[str]:
    """Folds of whole patients, stratified by the label string: one of 7 folds tests, one validates (~70/15/15)."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = [row[group].strip() for row in rows]
    empty = [i + 2 for i, g in enumerate(groups) if not g]
    if empty:
        raise DataError(
            f"{csv_path}: {len(empty)} row(s) without a {group!r} (lines {empty[:5]}); fill them in, "
            "or --set group_column=none to split image by image"
        )
    if len(set(groups)) < 7:
        raise DataError(
            f"{csv_path}: only {len(set(groups))} patients in {group!r}: too few for a patient-level "
            "train/val/test split; add a 'split' column"
        )
    import warnings

    folds = StratifiedGroupKFold(n_splits=7, shuffle=True, random_state=seed)
    splits = ["train"] * len(rows)
    with warnings.catch_warnings():  # rare label combinations cannot be in every fold; the split still holds
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        parts = [part for _, part in folds.split(np.zeros(len(rows)), [row["label"] for row in rows], groups)]
    for fold, part in enumerate(parts):
        for i in part:
            splits[i] = "test" if fold == 0 else "val" if fold == 1 else "train"
    return splits


def _check_patients_in_one_split(rows: list[dict[str, str]], splits: list[str], group: str, csv_path: Path) -> None:
    seen: dict[str, set[str]] = {}
    lines: dict[str, list[int]] = {}
    for line, (row, split) in enumerate(zip(rows, splits), start=2):
        seen.setdefault(row[group].strip(), set()).add(split)
        lines.setdefault(row[group].strip(), []).append(line)
    shared = [g for g, where in seen.items() if len(where) > 1]
    if shared:  # CSV lines, not the IDs: patient identifiers stay out of messages and logs
        raise DataError(
            f"{csv_path}: {len(shared)} patient(s) in {group!r} have images in more than one split, so "
            f"test images would share patients with training (e.g. lines {lines[shared[0]][:4]}); put each "
            "patient in one split, or drop the 'split' column to split by patient"
        )


def _check_same_shape(images: list[np.ndarray], rows: list[dict[str, str]], file_col: str, csv_path: Path) -> None:
    first = images[0].shape
    for image, row in zip(images, rows):
        if image.shape != first:
            raise DataError(
                f"{csv_path}: {row[file_col]!r} has shape {image.shape}, {rows[0][file_col]!r} has {first}; "
                "images of one dataset must share a shape: set image_size (--set image_size=H,W) to resize them all"
            )


def _build_splits(
    images: np.ndarray,
    rows: list[dict[str, str]],
    file_col: str,
    label_names: list[str],
    splits: list[str],
    multilabel: bool,
    negative_label: str | None = None,
) -> dict[str, Split]:
    index = {name: i for i, name in enumerate(label_names)}
    if multilabel:
        labels = np.zeros((len(rows), len(label_names)), dtype=np.int64)
        for r, row in enumerate(rows):
            for v in row["label"].split("|"):
                if v.strip() != negative_label:
                    labels[r, index[v.strip()]] = 1
    else:
        labels = np.array([index[row["label"].strip()] for row in rows], dtype=np.int64)
    result = {}
    for name in SPLITS:
        mask = np.array([s == name for s in splits])
        if mask.any():
            picked = np.where(mask)[0]
            ids = [rows[i][file_col] for i in picked]
            extra = [{k: v for k, v in rows[i].items() if k not in (file_col, "label", "split")} for i in picked]
            result[name] = Split(images=images[mask], labels=labels[mask], ids=ids, metadata=extra)
    missing = [s for s in ("train", "val") if s not in result]
    if missing:
        raise DataError(f"no rows in split(s) {', '.join(missing)}; train and val are required")
    return result
