"""Clinical columns -> model features, fitted on the training split only and stored in the bundle.

Numeric columns: median imputation with a missing-value indicator, then
standardisation (scikit-learn ``SimpleImputer`` + ``StandardScaler``).
Categorical columns: one-hot on the training split's categories
(``OneHotEncoder``); a value the training split never had is an error naming
the row, column, value and the known values, because encoding it as "none of
them" would silently change the prediction. A missing value is allowed
everywhere (clinical data has gaps): an empty cell, ``NA``, ``nan``.

The fitted transformers are saved with skops (``tabular.skops``), which loads
only the scikit-learn and NumPy types it lists rather than running a pickle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens.datasets.folder import FILE_COLUMNS
from medlens.errors import DataError, ModelError

log = logging.getLogger(__name__)
MISSING = ("", "na", "n/a", "nan", "none", "null", "?")
MISSING_CATEGORY = "(missing)"
FILE = "tabular.skops"


@dataclass
class TabularEncoder:
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    numeric_pipeline: Any  # SimpleImputer(add_indicator) + StandardScaler, or None
    onehot: Any  # OneHotEncoder, or None

    @property
    def columns(self) -> tuple[str, ...]:
        return self.numeric + self.categorical

    @property
    def n_features(self) -> int:
        return len(self.feature_names())

    def feature_names(self) -> list[str]:
        names: list[str] = []
        if self.numeric_pipeline is not None:
            names += [str(n) for n in self.numeric_pipeline.get_feature_names_out(list(self.numeric))]
        if self.onehot is not None:
            names += [str(n) for n in self.onehot.get_feature_names_out(list(self.categorical))]
        return names

    def transform(self, rows: list[dict[str, str]], where: str = "input") -> np.ndarray:
        """Encoded features ``(N, n_features)`` float32; ``where`` names the source in error messages."""
        check_columns(rows, self.columns, where)
        parts = []
        if self.numeric_pipeline is not None:
            parts.append(self.numeric_pipeline.transform(_numeric(rows, self.numeric, where)))
        if self.onehot is not None:
            values = _categorical(rows, self.categorical)
            for j, column in enumerate(self.categorical):
                known = set(self.onehot.categories_[j].tolist())
                unknown = [(i, v) for i, v in enumerate(values[:, j]) if v not in known and v != MISSING_CATEGORY]
                if unknown:
                    i, value = unknown[0]
                    raise DataError(
                        f"{where}: row {i + 1}, column {column!r}: category {value!r} was not in the "
                        f"training data (known: {', '.join(sorted(known))}); map it to one of those or "
                        "leave it empty (missing)"
                    )
            parts.append(self.onehot.transform(values))
        return np.hstack(parts).astype(np.float32) if parts else np.zeros((len(rows), 0), np.float32)

    def describe(self) -> dict[str, Any]:
        """What the bundle manifest shows: columns, training medians/means/scales, categories."""
        out: dict[str, Any] = {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "features": self.feature_names(),
            "file": FILE,
        }
        if self.numeric_pipeline is not None:
            imputer, scaler = self.numeric_pipeline[0], self.numeric_pipeline[1]
            out["numeric_fit"] = {
                c: {
                    "median": float(imputer.statistics_[j]),
                    "mean": float(scaler.mean_[j]),
                    "scale": float(scaler.scale_[j]),
                }
                for j, c in enumerate(self.numeric)
            }
        if self.onehot is not None:
            out["categories"] = {
                c: [str(v) for v in self.onehot.categories_[j]] for j, c in enumerate(self.categorical)
            }
        return out

    def save(self, folder: Path) -> Path:
        import skops.io

        path = folder / FILE
        skops.io.dump(
            {
                "numeric": self.numeric_pipeline,
                "categorical": self.onehot,
                "columns": [list(self.numeric), list(self.categorical)],
            },
            path,
        )
        return path


def fit_tabular(
    rows: list[dict[str, str]], numeric: tuple[str, ...], categorical: tuple[str, ...], where: str = "training split"
) -> TabularEncoder:
    """Fit the encoders on ``rows`` (the training split: never validation or test)."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    check_columns(rows, tuple(numeric) + tuple(categorical), where)
    pipeline = onehot = None
    if numeric:
        values = _numeric(rows, numeric, where)
        empty = [c for j, c in enumerate(numeric) if np.isnan(values[:, j]).all()]
        if empty:
            raise DataError(
                f"{where}: numeric column(s) {', '.join(empty)} have no value at all; drop them from numeric_columns"
            )
        pipeline = make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()).fit(values)
    if categorical:
        onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(_categorical(rows, categorical))
    return TabularEncoder(tuple(numeric), tuple(categorical), pipeline, onehot)


def load_tabular(folder: Path) -> TabularEncoder:
    """The encoder a bundle was trained with; refuses a file holding anything but scikit-learn and NumPy types."""
    import skops.io

    path = folder / FILE
    if not path.is_file():
        raise ModelError(
            f"{folder}: the bundle declares clinical inputs but has no {FILE}; re-train or re-copy the bundle"
        )
    untrusted = skops.io.get_untrusted_types(file=path)
    foreign = [t for t in untrusted if not t.startswith(("sklearn.", "numpy."))]
    if foreign:
        raise ModelError(
            f"{path} holds types other than scikit-learn/NumPy ({', '.join(foreign[:3])}); refusing to load it"
        )
    raw = skops.io.load(path, trusted=untrusted)
    numeric, categorical = raw["columns"]
    return TabularEncoder(tuple(numeric), tuple(categorical), raw["numeric"], raw["categorical"])


def check_columns(rows: list[dict[str, str]], columns: tuple[str, ...], where: str) -> None:
    present = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(
            f"{where}: required clinical column(s) {', '.join(missing)} missing (found: "
            f"{', '.join(sorted(present)) or 'none'}); add them, with empty cells where a value is unknown"
        )


def _numeric(rows: list[dict[str, str]], columns: tuple[str, ...], where: str) -> np.ndarray:
    out = np.full((len(rows), len(columns)), np.nan)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            raw = str(row.get(column) if row.get(column) is not None else "").strip()
            if raw.lower() in MISSING:
                continue
            try:
                out[i, j] = float(raw)
            except ValueError:
                raise DataError(
                    f"{where}: row {i + 1}, column {column!r}: {raw!r} is not a number; fix it, leave it "
                    "empty, or declare the column in categorical_columns"
                ) from None
    return out


def _categorical(rows: list[dict[str, str]], columns: tuple[str, ...]) -> np.ndarray:
    def value(row: dict[str, str], column: str) -> str:
        raw = str(row.get(column) if row.get(column) is not None else "").strip()
        return MISSING_CATEGORY if raw.lower() in MISSING else raw

    return np.array([[value(row, c) for c in columns] for row in rows], dtype=object).reshape(len(rows), len(columns))


def leakage_report(
    rows: list[dict[str, str]],
    labels: np.ndarray,
    numeric: tuple[str, ...],
    categorical: tuple[str, ...],
    label_names: list[str],
) -> list[str]:
    """Columns that alone predict a label perfectly on the training split: almost always the label leaking in
    (a diagnosis column, an "abnormal" flag), not medicine. Reported, not refused: the user decides."""
    from sklearn.metrics import roc_auc_score

    targets = labels[:, None] if labels.ndim == 1 else labels
    found: dict[str, list[str]] = {}
    for k in range(targets.shape[1]):
        y = targets[:, k] if labels.ndim > 1 else targets[:, 0]
        for positive in [1] if labels.ndim > 1 else sorted(set(y.tolist())):
            hit = (y == positive).astype(int)
            if hit.sum() < 2 or hit.sum() > len(hit) - 2:
                continue
            name = label_names[k] if labels.ndim > 1 else label_names[int(positive)]
            for j, column in enumerate(numeric):
                x = _numeric(rows, (column,), "leakage check")[:, 0]
                ok = ~np.isnan(x)
                if ok.sum() > 10 and len(set(hit[ok])) == 2 and roc_auc_score(hit[ok], x[ok]) in (0.0, 1.0):
                    found.setdefault(column, []).append(name)
            for column in categorical:
                x = _categorical(rows, (column,))[:, 0]
                groups = {v: set(hit[x == v].tolist()) for v in set(x.tolist())}
                if 1 < len(groups) < len(x) / 5 and all(len(g) == 1 for g in groups.values()):
                    found.setdefault(column, []).append(name)
        if labels.ndim == 1:
            break
    messages = [
        f"{column!r} alone predicts {', '.join(dict.fromkeys(names))} perfectly on the training split"
        for column, names in found.items()
    ]
    for message in messages:
        log.warning("possible label leakage: %s; is it known before the image is read?", message)
    return messages


def encode_rows(
    encoder: TabularEncoder, rows: list[dict[str, str]], wheres: list[str]
) -> tuple[np.ndarray, dict[int, str]]:
    """Encoded features for a batch's clinical rows in one scikit-learn call (measured about 100x faster than row
    by row, which cost as much as the network: benchmarks/results/fused_speed.json). If any row is bad, row by row
    so each error names its own row (``wheres[i]``: where row i came from); returns the features and
    {index: error} for the bad rows."""
    try:
        return encoder.transform(rows, "clinical values"), {}
    except DataError:
        pass
    out, bad = np.zeros((len(rows), encoder.n_features), dtype=np.float32), {}
    for i, (where, row) in enumerate(zip(wheres, rows)):
        try:
            out[i] = encoder.transform([row], where)[0]
        except DataError as exc:
            bad[i] = str(exc)
    return out, bad


class ClinicalTable:
    """A clinical CSV for prediction: one row per image, found by the image's path as given or its file name."""

    def __init__(self, path: Path) -> None:
        import csv

        if not path.is_file():
            raise DataError(
                f"--clinical {path}: no such file; give a CSV with a 'file' column and the model's clinical columns"
            )
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        column = next((c for c in FILE_COLUMNS if rows and c in rows[0]), None)
        if column is None:
            raise DataError(
                f"--clinical {path}: needs a 'file' column naming each image (found: "
                f"{', '.join(rows[0]) if rows else 'no rows'})"
            )
        self.path, self.by_path, self.by_name = path, {}, {}
        for line, row in enumerate(rows, start=2):
            key = row[column].strip()
            if Path(key).name in self.by_name:
                raise DataError(
                    f"--clinical {path}: line {line}: a second row for {Path(key).name!r}; one row per image"
                )
            self.by_path[key] = self.by_name[Path(key).name] = row

    def row(self, image: str) -> dict[str, str]:
        """One image's raw clinical values, found by its path as given or its file name."""
        row = self.by_path.get(image) or self.by_name.get(Path(image).name)
        if row is None:
            raise DataError(
                f"--clinical {self.path}: no row for {Path(image).name!r}; add one (file column = that name)"
            )
        return row

    def where(self, image: str) -> str:
        """How error messages name this image's row."""
        return f"--clinical {self.path} ({Path(image).name})"

    def features(self, encoder: TabularEncoder, image: str) -> np.ndarray:
        """One image's encoded clinical values ``(1, n_features)``, or a DataError saying what is wrong."""
        return encoder.transform([self.row(image)], self.where(image))
