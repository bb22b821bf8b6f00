"""Temperature scaling: one scalar fitted on validation logits so probabilities mean what they say.

Guo et al. (ICML 2017): dividing the logits by a temperature T > 0 leaves the
ranking of cases (hence AUC) unchanged and fixes most of a modern network's
over-confidence. T is fitted by minimising the validation negative
log-likelihood; the bundle stores it, and :class:`medlens.classify.bundle.ClassifierBundle`
applies it to every prediction. The validation-chosen operating threshold is
mapped through the same transform, so calibrated and uncalibrated bundles make
exactly the same decisions: only the reported probability changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from medlens.bundle.manifest import save_bundle
from medlens.classify.gate import fit_classifier_gate
from medlens.errors import DataError
from medlens.evaluate.metrics import classification_metrics
from medlens.models.probs import scale_logits
from medlens.models.uncertainty import SampleOptions, probability_samples, referral_threshold, uncertainty_scores
from medlens.preprocess.pipeline import normalized_inputs

if TYPE_CHECKING:
    from medlens.classify.bundle import ClassifierBundle
    from medlens.datasets import ClassificationData

T_BOUNDS = (0.05, 20.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, task: str) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (validation data only)."""
    if len(logits) == 0:
        raise DataError("temperature scaling needs validation cases; the validation split is empty")
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels)

    def nll(log_t: float) -> float:
        scaled = z / float(np.exp(log_t))
        if task == "multilabel":
            return float(torch.nn.functional.binary_cross_entropy_with_logits(scaled, y.double()))
        return float(torch.nn.functional.cross_entropy(scaled, y.long()))

    result = minimize_scalar(nll, bounds=tuple(np.log(T_BOUNDS)), method="bounded")
    return float(np.exp(result.x))


def map_threshold(threshold: float, temperature: float) -> float:
    """A positive-class threshold on uncalibrated probabilities -> the same decision boundary after scaling.

    For binary softmax and per-label sigmoid, p = sigmoid(margin), so the boundary
    margin = logit(t) becomes margin / T.
    """
    t = float(np.clip(threshold, 1e-7, 1 - 1e-7))
    return float(1.0 / (1.0 + np.exp(-np.log(t / (1 - t)) / temperature)))


def calibrate_bundle(
    bundle: ClassifierBundle,
    data: ClassificationData,
    out: Path,
    referral_fraction: float = 0.1,
    method: str = "softmax",
) -> dict[str, Any]:
    """Fit the temperature and the referral operating point on the validation split, and the out-of-distribution
    gate on the training split (its threshold on validation); write the bundle to ``out``.

    The written bundle is the same network with ``calibration`` and ``referral``
    added to ``bundle.json`` and its thresholds mapped through the temperature,
    so ``medlens predict`` with it reports calibrated probabilities and flags the
    cases to refer. Returns what was fitted, with the validation ECE before and after.
    """

    val = data.split("val")
    inputs: Any = normalized_inputs(val, bundle.preprocessing)
    if bundle.tabular is not None:  # a fused bundle: each validation image with its own clinical values
        inputs = (inputs, bundle.tabular.transform(val.metadata, f"{data.name}: validation split"))
    logits = bundle.predict_logits(inputs)
    raw_thresholds = bundle.manifest.get("calibration", {}).get(
        "uncalibrated_thresholds", bundle.manifest.get("thresholds", [])
    )
    temperature = fit_temperature(logits, val.labels, bundle.task)
    thresholds = [map_threshold(t, temperature) for t in raw_thresholds]
    names = bundle.label_names
    ece = {
        f"val_ece_{k}": classification_metrics(
            bundle.task, val.labels, scale_logits(logits, bundle.task, t), names, th
        )["ece"]
        for k, t, th in (("before", 1.0, list(raw_thresholds)), ("after", temperature, thresholds))
    }
    samples = probability_samples(
        method,
        [bundle.model],
        inputs,
        bundle.task,
        SampleOptions(modality=bundle.preprocessing.modality, temperature=temperature),
    )
    uncertainty = uncertainty_scores(samples, bundle.task, thresholds)
    calibration = {
        "temperature": temperature,
        "method": "temperature scaling on the validation split (NLL)",
        "uncalibrated_thresholds": list(raw_thresholds),
        **ece,
    }
    referral = {
        "method": method,
        "fraction": referral_fraction,
        "threshold": referral_threshold(uncertainty, referral_fraction),
        "chosen_on": f"validation split ({len(val)} cases)",
    }
    gate, gate_info = fit_classifier_gate(bundle.model, data, bundle.preprocessing, bundle.tabular)
    manifest = {k: v for k, v in bundle.manifest.items() if k != "format"}
    manifest.update({"thresholds": thresholds, "calibration": calibration, "referral": referral, "ood_gate": gate_info})
    save_bundle(out, bundle.model, manifest, half=_weights_are_half(bundle.path))
    gate.save(out)
    if bundle.tabular is not None:
        bundle.tabular.save(out)
    return {"calibration": calibration, "referral": referral, "ood_gate": gate_info, "bundle": str(out)}


def _weights_are_half(path: Path) -> bool:
    state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    return any(v.dtype == torch.float16 for v in state.values())
