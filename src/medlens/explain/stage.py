"""The explain stage: a bundle and image files -> heatmap overlays (PNG; DICOM Secondary Capture for DICOM input).

Each file is read and checked exactly as ``medlens predict`` does. A file that
fails gets its error in ``explain.json`` and the rest still run. A fused bundle
(image + clinical values) needs each image's clinical row: its heatmap is drawn
with those values held fixed, and ``clinical_effects`` in the report says what
each value did to the probability (:mod:`medlens.explain.clinical`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.errors import ConfigError, MedlensError
from medlens.explain.clinical import WithClinical, clinical_effects, describe_effects
from medlens.explain.maps import ExplainOptions, explain
from medlens.explain.overlay import resize_map, write_overlay_png, write_secondary_capture
from medlens.io import read_image
from medlens.io.dicom import has_dicom_marker
from medlens.preprocess import prepare_image
from medlens.preprocess.pipeline import normalize_intensity

if TYPE_CHECKING:
    from medlens.classify.bundle import ClassifierBundle


def black_level(bundle: ClassifierBundle) -> float:
    """The model-input value of the darkest raw intensity: the "no signal" baseline."""
    return float(normalize_intensity(np.float32(bundle.preprocessing.input_range[0]), bundle.preprocessing))


def explain_files(
    bundle: ClassifierBundle,
    files: list[Path],
    out_dir: Path,
    method: str = "gradcam",
    layer: str | None = None,
    adapt: bool = False,
    clinical: Any = None,
) -> dict[str, Any]:
    """Overlays for each file in ``out_dir``; returns (and writes) the ``explain.json`` report.

    ``clinical``: a :class:`medlens.tabular.encode.ClinicalTable` or :class:`medlens.tabular.dicom.DicomClinical`,
    required by a fused bundle."""

    if bundle.tabular is not None and clinical is None:
        raise ConfigError(
            f"{bundle.path} fuses the image with clinical values ({', '.join(bundle.tabular.columns)}): "
            "give them with --clinical CSV (a 'file' column plus those columns) or --clinical dicom (each DICOM header)"
        )
    opts = ExplainOptions(layer=layer, baseline=black_level(bundle))
    rows = []
    for path in files:
        row: dict[str, Any] = {"file": str(path), "outputs": [], "error": ""}
        try:
            raw = read_image(path, expected_modality=bundle.preprocessing.modality)
            x, row["notes"] = prepare_image(raw, bundle.preprocessing, adapt=adapt)
            model, inputs = bundle.model, x[None]
            if bundle.tabular is not None:
                features = clinical.features(bundle.tabular, str(path))
                model, inputs = WithClinical(bundle.model, features), (x[None], features)
            probs = bundle.predict_proba(inputs)[0]
            row["label"] = bundle.decide(probs)
            row["probabilities"] = {n: float(p) for n, p in zip(bundle.label_names, probs)}
            cls = explained_class(bundle, probs, row["label"])
            row["explained"] = bundle.label_names[cls]
            heat = explain(model, x[None], method, [cls], opts)[0]
            title = f"{path.name}: {method} for '{bundle.label_names[cls]}' (p={probs[cls]:.2f})"
            if bundle.tabular is not None:
                row["clinical_effects"] = clinical_effects(
                    bundle, x, clinical.row(str(path)), cls, clinical.where(str(path))
                )
                title += (
                    f"\neffect on p of each clinical value (vs unknown): {describe_effects(row['clinical_effects'])}"
                )
            if heat.ndim == 2:  # computed at the model's input, drawn on the source image at its own size
                title += f"\n(computed at the model input {heat.shape[1]} x {heat.shape[0]}, drawn on the source)"
                shown, shown_heat = raw, resize_map(heat, raw.shape[1:])
            else:
                shown, shown_heat = x, heat
            png = write_overlay_png(shown, shown_heat, out_dir / f"{_stem(path)}_{method}.png", title)
            row["outputs"].append(str(png))
            if _is_dicom(path) and heat.ndim == 2:
                sc = write_secondary_capture(
                    path,
                    heat,
                    out_dir / f"{_stem(path)}_{method}_sc.dcm",
                    f"medlens {method} {bundle.label_names[cls]}",
                )
                row["outputs"].append(str(sc))
        except MedlensError as exc:
            row["error"] = str(exc)
        except Exception as exc:  # last resort: one strange file must not stop the batch; reported, never silent
            row["error"] = (
                f"{path.name}: could not be explained ({type(exc).__name__}: {str(exc)[:200]}); please report this"
            )
        rows.append(row)
    report = {
        "bundle": str(bundle.path),
        "method": method,
        "layer": layer,
        "files": rows,
        "n_failed": sum(bool(r["error"]) for r in rows),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "explain.json").write_text(json.dumps(report, indent=1))
    return report


def explained_class(bundle: ClassifierBundle, probs: np.ndarray, label: str) -> int:
    """The class a map explains: the decided label (binary); the likeliest finding that passed its threshold
    (multi-label: arg-max could be a finding the bundle did not report), arg-max when none did or otherwise."""
    if bundle.task == "binary":
        return bundle.label_names.index(label)
    if bundle.task == "multilabel" and label:
        found = [bundle.label_names.index(name) for name in label.split("|")]
        return max(found, key=lambda k: probs[k])
    return int(np.argmax(probs))


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() in (".dcm", ".dicom") or has_dicom_marker(path)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
