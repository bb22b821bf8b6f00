"""Predict on image files with a bundle: one row per file, bad files reported, never skipped silently."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.errors import ConfigError, DataError, MedlensError
from medlens.io import IMAGE_SUFFIXES, read_image
from medlens.models.ood import OUTSIDE_NOTE, embeddings
from medlens.models.uncertainty import SampleOptions, probability_samples, uncertainty_scores
from medlens.preprocess.pipeline import fit_image, normalize_intensity
from medlens.runtime.backends import choose_backend, predict_raw
from medlens.tabular.encode import encode_rows

if TYPE_CHECKING:
    from medlens.classify.bundle import ClassifierBundle


@dataclass
class FilePrediction:
    file: str
    probabilities: dict[str, float] = field(default_factory=dict)
    label: str = ""
    notes: list[str] = field(default_factory=list)
    error: str = ""
    refer: bool | None = None  # None: the bundle has no referral operating point
    in_distribution: bool | None = None  # None: the bundle has no out-of-distribution gate


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given; a folder becomes its image files (sorted, recursively); a folder without any is an error."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                raise DataError(
                    f"{item}: the folder holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                    "point to the folder with the images, or name the files"
                )
            files += found
        else:
            files.append(item)
    return files


def predict_files(
    bundle: ClassifierBundle,
    files: list[Path],
    adapt: bool = False,
    batch_size: int = 64,
    backend: str = "auto",
    reader: Callable[..., Iterable[Any]] = map,
    clinical: Any = None,
) -> list[FilePrediction]:
    """Read, check and predict each file; a file that fails gets a row with its error and the batch goes on.

    ``backend``: ``torch``, ``onnxruntime`` (needs ``medlens export``) or ``auto`` (ONNX Runtime when exported).
    ``reader``: how files are read, e.g. a thread pool's ``map`` for parallel decoding.
    ``clinical``: a :class:`medlens.tabular.encode.ClinicalTable` or :class:`medlens.tabular.dicom.DicomClinical`,
    required by a fused bundle (a file
    without a valid clinical row gets its error, like an unreadable image).
    """

    if bundle.tabular is not None and clinical is None:
        raise ConfigError(
            f"{bundle.path} fuses the image with clinical values ({', '.join(bundle.tabular.columns)}): "
            "give them with --clinical CSV (a 'file' column plus those columns) or --clinical dicom (each DICOM header)"
        )
    backend = choose_backend(bundle, backend)
    rows = [FilePrediction(file=str(f)) for f in files]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ready, arrays, clinical_rows = [], [], []
        for row, (array, notes, error) in zip(chunk, reader(partial(_read_checked, bundle, adapt), chunk)):
            row.notes, row.error = notes, error
            if not error and bundle.tabular is not None:
                try:
                    clinical_rows.append(clinical.row(row.file))
                except MedlensError as exc:
                    row.error = str(exc)
            if not row.error:
                ready.append(row)
                arrays.append(array)
        clinical_features = None
        if arrays and bundle.tabular is not None:
            clinical_features, bad = encode_rows(bundle.tabular, clinical_rows, [clinical.where(r.file) for r in ready])
            keep = [i for i in range(len(ready)) if i not in bad]
            for i, message in bad.items():
                ready[i].error = message
            ready, arrays, clinical_features = (
                [ready[i] for i in keep],
                [arrays[i] for i in keep],
                clinical_features[keep],
            )
        if arrays:
            raw = np.stack(arrays)
            referred = referral_flags(bundle, raw, clinical_features)
            inside = gate_flags(bundle, raw, clinical_features)
            probabilities = predict_raw(bundle, raw, backend, clinical_features)
            for i, (row, probs) in enumerate(zip(ready, probabilities)):
                row.probabilities = {name: float(p) for name, p in zip(bundle.label_names, probs)}
                row.label = bundle.decide(probs)
                if inside is not None:
                    row.in_distribution = bool(inside[i])
                    if not row.in_distribution:  # a probability for an image unlike the training data means nothing
                        row.label, row.refer = "", None
                        row.notes.append(OUTSIDE_NOTE)
                        continue
                if referred is not None:
                    row.refer = bool(referred[i])
                    if row.refer:
                        row.notes.append("uncertain: refer to a radiologist")
    return rows


def _read_checked(
    bundle: ClassifierBundle, adapt: bool, row: FilePrediction
) -> tuple[np.ndarray | None, list[str], str]:
    """(raw checked image, notes, error) for one file; errors are returned, so a thread pool can run it."""
    try:
        image = read_image(row.file, expected_modality=bundle.preprocessing.modality)
        array, notes = fit_image(image, bundle.preprocessing, adapt=adapt)
    except MedlensError as exc:
        return None, [], str(exc)
    return array, notes, ""


def referral_flags(bundle: ClassifierBundle, raw: np.ndarray, clinical: np.ndarray | None = None) -> np.ndarray | None:
    """True where a (raw, checked) case is less certain than the bundle's referral point (``medlens calibrate``);
    ``clinical``: the cases' encoded clinical values, for a fused bundle."""
    referral = bundle.manifest.get("referral")
    if not referral:
        return None

    opts = SampleOptions(modality=bundle.preprocessing.modality, temperature=bundle.temperature)
    inputs = normalize_intensity(np.asarray(raw, dtype=np.float32), bundle.preprocessing)
    samples = probability_samples(
        referral["method"], [bundle.model], inputs if clinical is None else (inputs, clinical), bundle.task, opts
    )
    return uncertainty_scores(samples, bundle.task, bundle.thresholds) >= float(referral["threshold"])


def gate_flags(bundle: ClassifierBundle, raw: np.ndarray, clinical: np.ndarray | None = None) -> np.ndarray | None:
    """True where a (raw, checked) image lies within the training distribution (None: the bundle has no gate)."""
    gate = bundle.gate
    if gate is None:
        return None
    inputs = normalize_intensity(np.asarray(raw, dtype=np.float32), bundle.preprocessing)
    return gate.inside(embeddings(bundle.model, inputs if clinical is None else (inputs, clinical)))


RECORD_COLUMNS = ("label", "refer", "in_distribution", "notes", "error")


def prediction_record(row: FilePrediction, label_names: list[str]) -> dict[str, Any]:
    """One output row: ``file``, a probability per label, ``label``, ``refer``, ``in_distribution``, ``notes``,
    ``error``; ``label`` is empty for an image the out-of-distribution gate turned away."""
    return {
        "file": row.file,
        **{n: row.probabilities.get(n, "") for n in label_names},
        "label": row.label,
        "refer": "" if row.refer is None else row.refer,
        "in_distribution": "" if row.in_distribution is None else row.in_distribution,
        "notes": "; ".join(row.notes),
        "error": row.error,
    }


def write_predictions(rows: list[FilePrediction], label_names: list[str], path: Path) -> None:
    """CSV (``file``, one probability column per label, then :data:`RECORD_COLUMNS`) or JSON/JSONL by suffix.

    ``refer`` is empty for bundles without a referral operating point, ``in_distribution`` for bundles without
    an out-of-distribution gate.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [prediction_record(r, label_names) for r in rows]
    suffix = path.suffix.lower()
    if suffix == ".json":
        path.write_text(json.dumps(records, indent=1))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["file", *label_names, *RECORD_COLUMNS])
            writer.writeheader()
            writer.writerows(records)


def read_prediction_rows(path: Path, label_names: list[str]) -> list[FilePrediction]:
    """Rows of a CSV/JSONL prediction file back as :class:`FilePrediction` (for display)."""
    if path.suffix.lower() == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        with path.open(newline="") as f:
            records = list(csv.DictReader(f))
    rows = []
    for r in records:
        probs = {n: float(r[n]) for n in label_names if r.get(n) not in ("", None)}
        notes = [n for n in str(r.get("notes", "")).split("; ") if n]
        inside = str(r.get("in_distribution", "")).lower()
        row = FilePrediction(r["file"], probs, r.get("label", ""), notes, r.get("error", ""))
        row.in_distribution = None if inside in ("", "none") else inside == "true"
        rows.append(row)
    return rows
