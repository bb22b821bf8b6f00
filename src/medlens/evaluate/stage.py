"""The evaluate stage: a bundle on a dataset split -> metrics.json, report.md, plots."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.datasets import ClassificationData
from medlens.errors import InputMismatchError
from medlens.evaluate.bootstrap import bootstrap_intervals
from medlens.evaluate.metrics import classification_metrics
from medlens.evaluate.report import write_plots, write_report
from medlens.models.ood import logits_and_embeddings
from medlens.models.probs import scale_logits
from medlens.preprocess.pipeline import normalized_inputs

if TYPE_CHECKING:
    from medlens.classify.bundle import ClassifierBundle


def evaluate_bundle(
    bundle: ClassifierBundle,
    data: ClassificationData,
    out_dir: Path,
    split: str = "test",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score a bundle on one split with its own thresholds and write the report to ``out_dir``."""
    _check_compatible(bundle, data)
    part = data.split(split)
    images = normalized_inputs(part, bundle.preprocessing)
    inputs: Any = images
    if bundle.tabular is not None:  # a fused model reads each image's clinical values from the dataset's CSV
        inputs = (images, bundle.tabular.transform(part.metadata, f"{data.name}: {split} split"))
    logits, features = logits_and_embeddings(bundle.model, inputs)
    probs = scale_logits(logits, bundle.task, bundle.temperature)
    labels = bundle.label_names
    metric_fn = partial(classification_metrics, bundle.task, label_names=labels, thresholds=bundle.thresholds)
    metrics = metric_fn(part.labels, probs)
    intervals = bootstrap_intervals(metric_fn, part.labels, probs, n_resamples=n_bootstrap, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "model": bundle.manifest.get("name", bundle.path.name),
        "bundle": str(bundle.path),
        "dataset": data.name,
        "split": split,
        "n": len(part),
        "task": bundle.task,
        "label_names": labels,
        **({"positive_label": bundle.positive_label} if bundle.positive_label else {}),
        "thresholds": bundle.thresholds,
        "n_bootstrap": n_bootstrap,
        "metrics": metrics,
        "confidence_intervals": intervals,
        "data": data.source,
        "prevalence": _prevalence(bundle.task, part.labels, len(labels)),
    }
    if bundle.gate is not None:  # every image of a labelled split is in distribution: what the gate turns away is lost
        flagged = int((~bundle.gate.inside(features)).sum())
        result["ood_gate"] = {"flagged": flagged, "flag_rate": flagged / max(len(part), 1)}
    plots = write_plots(out_dir, bundle.task, part.labels, probs, labels, bundle.thresholds)
    result["report"] = str(write_report(out_dir, result, plots))
    np.save(out_dir / "probabilities.npy", probs)
    return result


def _prevalence(task: str, labels: np.ndarray, n_classes: int) -> list[float]:
    if task == "multilabel":
        return labels.mean(axis=0).tolist()
    return (np.bincount(labels, minlength=n_classes) / len(labels)).tolist()


def _check_compatible(bundle: ClassifierBundle, data: ClassificationData) -> None:
    prep = bundle.preprocessing
    if tuple(data.image_shape) != tuple(prep.spatial_shape) or data.n_channels != prep.channels:
        raise InputMismatchError(
            f"bundle {bundle.path.name} expects {prep.channels}-channel images of "
            f"{'x'.join(map(str, prep.spatial_shape))}, dataset {data.name} has {data.n_channels}-channel "
            f"{'x'.join(map(str, data.image_shape))}; evaluate on the same kind of data it was trained on"
        )
    if list(data.label_names) != bundle.label_names:
        raise InputMismatchError(
            f"bundle {bundle.path.name} predicts {bundle.label_names}, dataset {data.name} is labelled "
            f"{list(data.label_names)}; evaluate on data with the same labels"
        )
