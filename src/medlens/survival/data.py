"""Survival data: an image per patient, a time to event or censoring, an event flag, clinical columns.

A survival dataset is a folder with one ``.npz`` (``images`` ``(N, H, W)`` or
``(N, C, H, W)``, ``patient_id``, ``survival_days``, ``event``) and,
optionally, one clinical CSV whose first ID-like column (``PatientID``,
``patient_id``) matches ``patient_id``; that is the layout of
``ct_lung1_survival`` (NSCLC-Radiomics, Aerts et al. 2014). Every patient has
one image, so a seeded split by patient, stratified by event, keeps a patient
in one split.

Times must be positive and finite, events 0/1, and training needs events:
a censored-only cohort has nothing to learn a hazard from.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.datasets.catalog import file_sha256, resolve_data_dir
from medlens.errors import DataError

ID_COLUMNS = ("PatientID", "patient_id", "Patient ID", "id")
# NSCLC-Radiomics on TCIA: where users online get the CT volumes and clinical table this folder was cut from
LUNG1_SOURCE = {
    "name": "NSCLC-Radiomics (Lung1)",
    "doi": "10.7937/K9/TCIA.2015.PF0M9REI",
    "url": "https://www.cancerimagingarchive.net/collection/nsclc-radiomics/",
    "license": "CC BY-NC 3.0 (non-commercial) and the TCIA data usage policy: benchmarks and tests only",
}


@dataclass
class SurvivalData:
    name: str
    images: np.ndarray  # (N, C, H, W) float32, raw intensities
    time: np.ndarray  # (N,) days, > 0
    event: np.ndarray  # (N,) 1 = event (death), 0 = censored
    ids: list[str]
    metadata: list[dict[str, str]]
    splits: dict[str, np.ndarray] = field(default_factory=dict)  # split -> row indices
    source: dict[str, Any] = field(default_factory=dict)

    def subset(self, split: str) -> "SurvivalData":
        index = self.splits[split]
        return SurvivalData(
            self.name,
            self.images[index],
            self.time[index],
            self.event[index],
            [self.ids[i] for i in index],
            [self.metadata[i] for i in index],
            {},
            self.source,
        )


def check_survival(time: np.ndarray, event: np.ndarray, ids: list[str], where: str, training: bool = True) -> None:
    """Refuse what would train or score a silently wrong model, naming rows by position (not patient ID)."""
    bad_time = np.where(~np.isfinite(time) | (time <= 0))[0]
    if len(bad_time):
        raise DataError(
            f"{where}: {len(bad_time)} row(s) have a survival time that is not positive (rows "
            f"{(bad_time[:5] + 1).tolist()}, e.g. {time[bad_time[0]]!r}); times are days from baseline "
            "to event or censoring and must be > 0: fix them or drop those rows"
        )
    bad_event = np.where(~np.isin(event, (0, 1)))[0]
    if len(bad_event):
        raise DataError(
            f"{where}: the event column must be 1 (event) or 0 (censored); rows {(bad_event[:5] + 1).tolist()} "
            f"hold {sorted(set(event[bad_event].tolist()))[:3]}"
        )
    if training and not event.sum():
        raise DataError(
            f"{where}: all {len(event)} patients are censored (no event): a hazard cannot be learned; "
            "check the event column's coding (1 = event)"
        )


def load_survival_folder(
    folder: str | Path, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> SurvivalData:
    """Read the folder's npz (+ clinical CSV), check it, and split patients (stratified by event)."""
    folder = Path(folder)
    if not folder.exists() and len(folder.parts) == 1:  # a dataset name: look in $MEDLENS_DATA_DIR
        folder = Path(resolve_data_dir(None) or ".") / folder
    arrays = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    if len(arrays) != 1:
        raise DataError(
            f"{folder}: expected one .npz with images, patient_id, survival_days, event "
            f"(found {len(arrays)}); see medlens.survival.data for the layout"
        )
    with np.load(arrays[0], allow_pickle=False) as raw:
        missing = [k for k in ("images", "patient_id", "survival_days", "event") if k not in raw.files]
        if missing:
            raise DataError(f"{arrays[0]}: missing array(s) {', '.join(missing)} (has {', '.join(raw.files)})")
        images = raw["images"].astype(np.float32)
        ids = [str(v) for v in raw["patient_id"]]
        time, event = raw["survival_days"].astype(float), raw["event"].astype(int)
    images = images[:, None] if images.ndim == 3 else images
    check_survival(time, event, ids, str(arrays[0]))
    if len(set(ids)) != len(ids):
        raise DataError(f"{arrays[0]}: patient_id repeats; one image per patient is expected (pick one per patient)")
    metadata, clinical_file = _clinical(folder, ids)
    data = SurvivalData(
        folder.name,
        images,
        time,
        event,
        ids,
        metadata,
        source={
            "folder": folder.name,
            "images_file": arrays[0].name,
            "sha256": file_sha256(arrays[0]),
            **({"clinical_file": clinical_file} if clinical_file else {}),
            **(LUNG1_SOURCE if "lung1" in folder.name.lower() else {"license": "user data"}),
        },
    )
    data.splits = patient_splits(event, seed, val_fraction, test_fraction)
    return data


def _clinical(folder: Path, ids: list[str]) -> tuple[list[dict[str, str]], str | None]:
    tables = sorted(folder.glob("*.csv"))
    if not tables:
        return [{} for _ in ids], None
    with tables[0].open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    column = next((c for c in ID_COLUMNS if rows and c in rows[0]), None)
    if column is None:
        raise DataError(
            f"{tables[0]}: needs a patient ID column ({', '.join(ID_COLUMNS)}) matching the images' patient_id"
        )
    by_id = {r[column].strip(): r for r in rows}
    absent = [i for i, pid in enumerate(ids) if pid not in by_id]
    if absent:
        raise DataError(
            f"{tables[0]}: no clinical row for {len(absent)} of {len(ids)} images (image rows "
            f"{[i + 1 for i in absent[:5]]}); add them, with empty cells for unknown values"
        )
    return [by_id[pid] for pid in ids], tables[0].name


def patient_splits(event: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(event))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=event, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=event[rest], random_state=seed
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
