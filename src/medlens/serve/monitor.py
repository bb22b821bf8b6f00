"""Drift monitoring: what each model sees and says over time, against its validation data.

Every finished study leaves an observation: its mean raw input intensity, the
model's probabilities and the penultimate-layer embedding (mean over the
study's images). Studies are grouped in consecutive windows of ``window``
studies; each window is scored with the trust module's shift scores
(:class:`medlens.trust.shift.BatchShiftScorer`: confidence change and
embedding distance). The alarm level of each score is the 99th percentile of
the same score on random windows of the model's own *validation* images, so a
model on data like its validation data raises a false alarm in about 1 window
in 100. Without its validation data (no ``MEDLENS_DATA_DIR``), a model is
monitored without alarms, and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens.classify.data import dataset_for_bundle, training_data
from medlens.errors import MedlensError
from medlens.io import read_image
from medlens.models.fusion import image_network
from medlens.models.ood import embeddings
from medlens.models.probs import predict_proba
from medlens.preprocess.pipeline import fit_image, normalize_intensity, normalized_inputs
from medlens.trust.shift import BatchShiftScorer, batch_indices

log = logging.getLogger(__name__)
FALSE_ALARM_QUANTILE = 0.99
CALIBRATION_WINDOWS = 400


@dataclass
class Reference:
    scorer: Any  # BatchShiftScorer
    alarm_confidence: float
    alarm_embedding: float
    n_validation: int


def observe(model: Any, files: list[Path], probabilities: np.ndarray) -> dict[str, Any]:
    """One study's observation: mean raw intensity and mean embedding over its images, with the job's mean probabilities."""

    bundle = model.bundle
    raw = np.stack(
        [
            fit_image(read_image(f, expected_modality=bundle.preprocessing.modality), bundle.preprocessing, adapt=True)[
                0
            ]
            for f in files
        ]
    ).astype(np.float32)
    return {
        "input_mean": float(raw.mean()),
        "probabilities": np.asarray(probabilities).mean(axis=0).tolist(),
        "embedding": embeddings(image_network(bundle.model), normalize_intensity(raw, bundle.preprocessing))
        .mean(axis=0)
        .round(5)
        .tolist(),
    }


def build_reference(model: Any, window: int, data_dir: str | Path | None = None, seed: int = 0) -> Reference | None:
    """Scores of random validation windows give the alarm levels; None when the validation data is not available."""

    bundle = model.bundle
    try:
        data = dataset_for_bundle(bundle, training_data(bundle.manifest, bundle.path), data_dir=data_dir)
        val = data.splits["val"]
        clinical = bundle.tabular.transform(val.metadata, "validation split") if bundle.tabular is not None else None
    except (MedlensError, KeyError, OSError) as exc:
        log.warning("model %s: no validation data for drift alarms (%s)", model.name, type(exc).__name__)
        return None
    inputs = normalized_inputs(val, bundle.preprocessing)
    probs = predict_proba(
        bundle.model, inputs if clinical is None else (inputs, clinical), bundle.task, temperature=bundle.temperature
    )
    emb = embeddings(image_network(bundle.model), inputs)
    scorer = BatchShiftScorer(probs, emb)
    windows = batch_indices(len(inputs), window, CALIBRATION_WINDOWS, seed)
    confidence = [scorer.confidence_score(probs[w]) for w in windows]
    embedding = [scorer.embedding_score(emb[w]) for w in windows]
    return Reference(
        scorer,
        float(np.quantile(confidence, FALSE_ALARM_QUANTILE)),
        float(np.quantile(embedding, FALSE_ALARM_QUANTILE)),
        len(inputs),
    )


def drift_report(
    observations: list[dict[str, Any]], reference: Reference | None, window: int, positive: int
) -> dict[str, Any]:
    """Per consecutive window of studies: input mean, positive rate, both shift scores and whether they alarm."""
    windows = []
    for start in range(0, len(observations) - window + 1, window):
        part = observations[start : start + window]
        probs = np.array([o["probabilities"] for o in part])
        row: dict[str, Any] = {
            "first_job": part[0]["job_id"],
            "last_job": part[-1]["job_id"],
            "studies": len(part),
            "input_mean": float(np.mean([o["input_mean"] for o in part])),
            "mean_probability": float(probs[:, positive].mean()),
        }
        if reference is not None:
            confidence = reference.scorer.confidence_score(probs)
            embedding = reference.scorer.embedding_score(np.array([o["embedding"] for o in part]))
            row.update(
                {
                    "confidence_score": confidence,
                    "embedding_score": embedding,
                    "alarm": bool(confidence > reference.alarm_confidence or embedding > reference.alarm_embedding),
                }
            )
        windows.append(row)
    return {
        "studies": len(observations),
        "window": window,
        "windows": windows,
        "alarm": bool(windows and windows[-1].get("alarm", False)),
        "reference": None
        if reference is None
        else {
            "validation_images": reference.n_validation,
            "alarm_confidence": reference.alarm_confidence,
            "alarm_embedding": reference.alarm_embedding,
            "false_alarm_rate_per_window": 1 - FALSE_ALARM_QUANTILE,
        },
        "note": "" if reference is not None else "no validation data found (set MEDLENS_DATA_DIR): no alarms",
    }
