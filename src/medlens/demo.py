"""The main job on a fresh machine: the shipped 28-px pneumonia model on the real PneumoniaMNIST test set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.classify.bundle import load_classifier
from medlens.classify.predict import FilePrediction, predict_files, write_predictions
from medlens.datasets import load_medmnist
from medlens.errors import DatasetNotFoundError
from medlens.evaluate.stage import evaluate_bundle

DEMO_MODEL = "pneumonia-28px"
N_SAMPLES = 6


@dataclass
class DemoResult:
    model: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    predictions: list[FilePrediction] = field(default_factory=list)
    sample_labels: list[str] = field(default_factory=list)
    missing_data: str = ""


def run_demo(out_dir: Path, data_dir: str | Path | None = None, n_bootstrap: int = 1000) -> DemoResult:
    """Evaluate the shipped model on the test split, then predict a few test images saved as PNG files.

    Without the data (offline, nothing local) it returns the model card and
    the message that says where to get the file, instead of failing.
    """
    bundle = load_classifier(DEMO_MODEL)
    result = DemoResult(model=bundle.manifest)
    try:
        data = load_medmnist("pneumoniamnist", size=28, data_dir=data_dir)
    except DatasetNotFoundError as exc:
        result.missing_data = str(exc)
        return result
    evaluation = evaluate_bundle(bundle, data, out_dir / "evaluation", split="test", n_bootstrap=n_bootstrap)
    result.metrics, result.intervals = evaluation["metrics"], evaluation["confidence_intervals"]
    result.report = Path(evaluation["report"])
    files, result.sample_labels = _write_samples(data.split("test"), data.label_names, out_dir / "samples")
    result.predictions = predict_files(bundle, files)
    write_predictions(result.predictions, bundle.label_names, out_dir / "predictions.csv")
    return result


def _write_samples(split: Any, label_names: tuple[str, ...], folder: Path) -> tuple[list[Path], list[str]]:
    """A few test images of each class as PNG files, the way a user would bring them."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    chosen = [
        int(i)
        for c in range(len(label_names))
        for i in rng.choice(np.where(split.labels == c)[0], N_SAMPLES // 2, replace=False)
    ]
    files, truths = [], []
    for index in chosen:
        path = folder / f"test_{index:04d}.png"
        Image.fromarray(split.images[index, 0]).save(path)
        files.append(path)
        truths.append(label_names[int(split.labels[index])])
    return files, truths
