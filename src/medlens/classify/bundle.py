"""A classifier bundle: the network in eval mode, its preprocessing, labels, thresholds and calibration.

Binary, multi-class and multi-label classifiers, image-only or fused with
clinical values (``fusion: intermediate``, whose clinical encoder is
``tabular``). Probabilities and decisions follow :mod:`medlens.models.probs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from medlens.bundle.manifest import BundleBase, load_weights, read_manifest
from medlens.classify.data import dataset_for_bundle, training_data
from medlens.classify.predict import expand_inputs, predict_files, prediction_record
from medlens.errors import ModelError
from medlens.evaluate.stage import evaluate_bundle
from medlens.models.fusion import FusionNet
from medlens.models.networks import NetworkSpec, build_network
from medlens.models.ood import OodGate
from medlens.models.probs import decide_label, predict_logits, predict_proba
from medlens.preprocess import Preprocessing
from medlens.runtime.onnx_export import export_onnx
from medlens.runtime.quantize import quantize_bundle
from medlens.tabular.encode import load_tabular


@dataclass
class ClassifierBundle(BundleBase):
    """A loaded classifier. ``predict(files)`` gives one row per file (see :meth:`predict`)."""

    kind: ClassVar[str] = "classifier"
    supports: ClassVar[frozenset[str]] = frozenset(
        {"predict", "evaluate", "explain", "calibrate", "audit", "export", "quantize", "select", "serve", "federate"}
    )
    model: nn.Module
    preprocessing: Preprocessing
    tabular: Any = None  # the clinical-feature encoder of a fused bundle (medlens.tabular.encode.TabularEncoder)
    _datasets: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False, compare=False)
    _gate: OodGate | None = field(default=None, repr=False, compare=False)

    @property
    def modality(self) -> str:
        """The modality the network was trained on (``CR``, ``CT``, ...; empty when unknown)."""
        return str(self.manifest.get("expected_input", {}).get("modality") or "")

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["label_names"])

    @property
    def thresholds(self) -> list[float]:
        """Operating threshold(s) chosen on validation: one for binary, one per label for multi-label."""
        return [float(t) for t in self.manifest.get("thresholds", [])]

    @property
    def temperature(self) -> float:
        """Temperature fitted on validation by ``medlens calibrate`` (1.0: not calibrated)."""
        return float(self.manifest.get("calibration", {}).get("temperature", 1.0))

    @property
    def positive_label(self) -> str | None:
        """A binary task's positive class (the finding): stored since format 2, else the second label."""
        if self.task != "binary":
            return None
        return str(self.manifest.get("positive_label") or self.label_names[1])

    @property
    def gate(self) -> OodGate | None:
        """The out-of-distribution gate fitted on the training data (None for bundles made before it existed)."""
        if "ood_gate" not in self.manifest:
            return None
        if self._gate is None:
            self._gate = OodGate.load(self.path)
        return self._gate

    @classmethod
    def from_manifest(
        cls, path: Path, manifest: dict[str, Any], device: str | torch.device = "cpu"
    ) -> ClassifierBundle:
        """Rebuild the network the manifest describes and load the weights (``path``: the bundle folder)."""
        raw_spec = dict(manifest["network"])
        raw_spec["image_shape"] = tuple(raw_spec["image_shape"])
        model = build_network(NetworkSpec(**raw_spec))
        tabular = None
        if manifest.get("fusion") == "intermediate":
            tabular = load_tabular(path)
            model = FusionNet(model, len(manifest["tabular"]["features"]), len(manifest["label_names"]))
        load_weights(model, path, f"the network in {path.name}/bundle.json")
        model.to(device).eval()
        return cls(path, manifest, model, Preprocessing.from_dict(manifest["preprocessing"]), tabular)

    @classmethod
    def summary(cls, manifest: dict[str, Any]) -> dict[str, str]:
        """What ``medlens models`` shows, from the manifest alone."""
        test, shape = manifest.get("metrics", {}).get("test", {}), manifest["expected_input"]["spatial_shape"]
        return {
            "task": manifest["task"],
            "labels": ", ".join(manifest["label_names"]),
            "input": f"{manifest['expected_input']['modality']} {'x'.join(map(str, shape))}",
            "score": f"AUC {test.get('auc', float('nan')):.3f}",
            "accuracy": f"{test.get('accuracy', float('nan')):.3f}",
        }

    def predict_proba(self, inputs: np.ndarray | tuple[np.ndarray, ...], batch_size: int = 256) -> np.ndarray:
        """Class probabilities for already-normalised inputs ``(N, C, ...)`` (calibrated bundles: at their temperature)."""
        return predict_proba(self.model, inputs, self.task, batch_size, self.temperature)

    def predict_logits(self, inputs: np.ndarray | tuple[np.ndarray, ...], batch_size: int = 256) -> np.ndarray:
        return predict_logits(self.model, inputs, batch_size)

    def decide(self, probs: np.ndarray) -> str:
        """The label this bundle gives one case's probabilities (:func:`medlens.models.probs.decide_label`)."""
        return decide_label(self.task, self.label_names, self.thresholds, probs)

    def predict(
        self, files: list[str | Path], adapt: bool = False, backend: str = "auto", clinical: Any = None
    ) -> list[dict[str, Any]]:
        """One row per image file (a folder: its images): ``file``, a probability per label, ``label``,
        ``refer``, ``notes``, ``error``. A file that cannot be read gets its error; the others are still predicted.

        >>> rows = medlens.open_bundle("pneumonia-28px").predict(["chest.dcm"])  # doctest: +SKIP
        """
        rows = predict_files(self, expand_inputs(list(files)), adapt=adapt, backend=backend, clinical=clinical)
        return [prediction_record(row, self.label_names) for row in rows]

    def evaluate(
        self,
        data: str,
        out: str | Path,
        split: str = "test",
        size: int | None = None,
        n_bootstrap: int = 1000,
        seed: int = 0,
        data_dir: str | Path | None = None,
    ) -> dict[str, Any]:
        """Score on a split of ``data`` (a MedMNIST name or a label CSV, loaded as the bundle was trained) with the
        bundle's thresholds; writes ``metrics.json``, ``report.md`` and plots to ``out``."""
        dataset = dataset_for_bundle(self, data, size, data_dir)
        result = evaluate_bundle(self, dataset, Path(out), split=split, n_bootstrap=n_bootstrap, seed=seed)
        return {**result, "title": f"{split} (n={result['n']})", "where": f"report: {result['report']}"}

    def export(
        self, data: str | None = None, check_images: int = 64, data_dir: str | Path | None = None, **_: Any
    ) -> dict[str, Any]:
        """Write ``model.onnx`` (preprocessing and calibration in the graph) into the bundle, checked against PyTorch
        on ``check_images`` real validation images of ``data`` (default: the bundle's own training data)."""
        val = self._dataset(data, data_dir).split("val")
        clinical = None
        if self.tabular is not None:
            clinical = self.tabular.transform(val.metadata[:check_images], f"{self.name}: validation split")
        record = export_onnx(self, val.images[:check_images].astype("float32"), check_clinical=clinical)
        return {**record, "checked": f"on {record['checked_images']} real validation images"}

    def quantize(self, kind: str, data: str | None = None, data_dir: str | Path | None = None) -> dict[str, Any]:
        """An int8 ONNX graph (``dynamic`` or ``static``), kept only if validation AUC drops <= 0.005 and it is faster."""
        dataset = self._dataset(data, data_dir)
        val, test = dataset.split("val"), dataset.split("test")
        clinical = None
        if self.tabular is not None:  # a fused graph is calibrated and scored with each image's own clinical values
            clinical = (
                self.tabular.transform(val.metadata, f"{dataset.name}: validation split"),
                self.tabular.transform(test.metadata, f"{dataset.name}: test split"),
            )
        return quantize_bundle(self, kind, (val.images, val.labels), (test.images, test.labels), clinical=clinical)

    def _dataset(self, data: str | None, data_dir: str | Path | None) -> Any:
        """The data to check an export on, read once for export and quantize alike."""
        key = (str(data or training_data(self.manifest, self.path)), str(data_dir))
        if key not in self._datasets:
            self._datasets[key] = dataset_for_bundle(self, key[0], None, data_dir)
        return self._datasets[key]


def load_classifier(name_or_path: str | Path, device: str | torch.device = "cpu") -> ClassifierBundle:
    """Load a classifier bundle by shipped name or path, rebuild its network and load the weights."""
    path, manifest = read_manifest(name_or_path)
    if manifest["kind"] != ClassifierBundle.kind:
        raise ModelError(f"{path} is a {manifest['kind']} bundle, not a classifier")
    return ClassifierBundle.from_manifest(path, manifest, device)
