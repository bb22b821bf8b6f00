"""Risk score, risk group and survival probabilities for new patients from a survival bundle.

Each image is read like any medlens input, checked against the training
image shape, scaled with the training intensity window, and (for fused
models) joined with its row of the clinical CSV. A file that fails gets its
error in its row and the others are still predicted.

A clinical-only Cox model (``inputs=clinical``) reads no image: every row of
the clinical CSV is a patient. On Lung1 it was the best of the survival
models (README), so it must be usable, not only a line in a benchmark.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.datasets.folder import FILE_COLUMNS
from medlens.errors import DataError, MedlensError, ModelError
from medlens.io import read_image
from medlens.models.probs import predict_logits
from medlens.survival.data import ID_COLUMNS
from medlens.survival.heads import HEADS
from medlens.survival.metrics import HORIZONS_DAYS, risk_groups
from medlens.tabular.encode import check_columns, encode_rows

if TYPE_CHECKING:
    from medlens.survival.bundle import SurvivalBundle


def _risk_fields(output: np.ndarray, manifest: dict[str, Any]) -> dict[str, Any]:
    """One case's ``risk``, ``risk_group`` (cut at the training-risk quantiles) and ``survival_<days>d``."""
    settings, head = manifest["settings"], HEADS.get(manifest["head"])
    risk = head.risk(output, settings)
    curve = head.survival(output, settings, np.asarray(HORIZONS_DAYS))
    return {
        "risk": float(risk[0]),
        "risk_group": manifest["risk_group_names"][int(risk_groups(risk, manifest["risk_cutoffs"])[0])],
        **{f"survival_{int(h)}d": float(p) for h, p in zip(HORIZONS_DAYS, curve[0])},
    }


def predict_survival_files(bundle: SurvivalBundle, files: list[Path], clinical: Any = None) -> list[dict[str, Any]]:
    """One row per file: ``risk``, ``risk_group``, ``survival_<days>d`` at each horizon, ``error``."""
    path, manifest, model, encoder = bundle.path, bundle.manifest, bundle.model, bundle.tabular
    if model is None:
        raise ModelError(
            f"{path}: a clinical-only Cox model holds no network and reads no image; predict with "
            "`medlens predict BUNDLE --clinical CSV` (one row per patient, no image files)"
        )
    if encoder is not None and clinical is None:
        raise DataError(
            f"{path} predicts from the image and clinical values ({', '.join(encoder.columns)}): give them "
            "with --clinical CSV (a 'file' column plus those columns)"
        )
    settings = manifest["settings"]
    shape = tuple(settings["network"]["image_shape"])
    low, high = settings["intensity"]["low"], settings["intensity"]["high"]
    rows: list[dict[str, Any]] = []
    for file in files:
        row: dict[str, Any] = {"file": str(file), "error": ""}
        rows.append(row)
        try:
            image = read_image(file)
            if tuple(image.shape[1:]) != shape or image.shape[0] != settings["network"]["in_channels"]:
                raise DataError(
                    f"{file.name}: image of shape {tuple(image.shape)}, the model was trained on "
                    f"({settings['network']['in_channels']}, {', '.join(map(str, shape))}); crop or resize it the same way"
                )
            x = np.clip((image[None] - low) / max(high - low, 1e-6) * 2 - 1, -1, 1).astype(np.float32)
            inputs = (x, clinical.features(encoder, str(file))) if encoder is not None else x
            output = predict_logits(model, inputs)
        except MedlensError as exc:
            row["error"] = str(exc)
            continue
        row |= _risk_fields(output, manifest)
    return rows


def predict_survival_clinical(bundle: SurvivalBundle, csv_path: Path) -> list[dict[str, Any]]:
    """One row per CSV row for a clinical-only Cox bundle: ``case`` (the row's ID or file column, else its line),
    ``line``, ``risk``, ``risk_group``, ``survival_<days>d``, ``error``. A bad row gets its error; the rest go on."""
    path, manifest = bundle.path, bundle.manifest
    if manifest["inputs"] != "clinical":
        raise DataError(f"{path} predicts from images: give image files as well as --clinical {csv_path}")
    if not csv_path.is_file():
        raise DataError(
            f"--clinical {csv_path}: no such file; give a CSV with one row per patient and the model's clinical columns"
        )
    encoder = bundle.tabular
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        table = list(csv.DictReader(f))
    if not table:
        raise DataError(f"--clinical {csv_path}: no rows; give one row per patient with {', '.join(encoder.columns)}")
    check_columns(table, encoder.columns, f"--clinical {csv_path}")  # a missing column is the whole file's error
    key = next((c for c in ID_COLUMNS + FILE_COLUMNS if c in table[0]), None)
    settings = manifest["settings"]
    lines = range(2, len(table) + 2)
    features, bad = encode_rows(encoder, table, [f"--clinical {csv_path} line {line}" for line in lines])
    log_hazard = (features - np.asarray(settings["feature_means"])) @ np.asarray(
        settings["coefficients"]
    )  # as lifelines
    rows: list[dict[str, Any]] = []
    for i, (line, values) in enumerate(zip(lines, table)):
        row: dict[str, Any] = {"case": values[key] if key else f"line {line}", "line": line, "error": bad.get(i, "")}
        if not row["error"]:
            row |= _risk_fields(log_hazard[i : i + 1, None], manifest)
        rows.append(row)
    return rows


def survival_fields(clinical_only: bool) -> list[str]:
    """The columns of survival predictions: per CSV line and case for a clinical-only model, else per file."""
    first = ["line", "case"] if clinical_only else ["file"]
    return [*first, "risk", "risk_group", *(f"survival_{int(h)}d" for h in HORIZONS_DAYS), "error"]


def write_survival_rows(rows: list[dict[str, Any]], fields: list[str], out: Path) -> Path:
    """Survival predictions as JSON (``.json``) or CSV (anything else)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, indent=1))
        return out
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return out
