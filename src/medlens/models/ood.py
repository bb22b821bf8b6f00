"""The out-of-distribution gate: is this image like the ones the model was trained on?

A classifier answers every input with a probability, a skin photograph pushed
into a chest X-ray model included. The gate measures how far an image's
penultimate features (the input of the network's last linear layer) lie from
the training images' features: the Mahalanobis distance to the nearest class
mean under one shared, shrunk covariance (Lee et al., NeurIPS 2018; Ledoit-Wolf
shrinkage from scikit-learn, since there are more features than training
images). The means and covariance are fitted on the training split only; the
threshold is the distance that the validation images exceed at the allowed false
flag rate (1% by default), so at most about that share of real in-distribution
images is turned away. The gate is stored beside the weights
(:data:`GATE_FILE`) and described in ``bundle.json`` under ``ood_gate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.errors import ModelError

GATE_FILE = "ood_gate.npz"
FALSE_FLAG_RATE = 0.01
METHOD = "Mahalanobis distance of penultimate features to the nearest training class mean (Ledoit-Wolf covariance)"
OUTSIDE_NOTE = "outside what the model was trained on: not assessed"


def final_linear(model: nn.Module) -> nn.Linear:
    """The classifier's last fully connected layer (its input is the embedding)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError("features for the gate or shift detection need a network ending in a linear layer")
    return linears[-1]


@torch.no_grad()
def logits_and_embeddings(
    model: nn.Module, inputs: np.ndarray | tuple[np.ndarray, ...], batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs ``(N, classes)`` and penultimate features ``(N, F)`` of normalised inputs, in one pass."""
    captured: list[torch.Tensor] = []
    hook = final_linear(model).register_forward_hook(
        lambda _m, args, _out: captured.append(args[0].detach().flatten(1).float().cpu())
    )
    model.eval()
    device = next(model.parameters()).device
    parts = inputs if isinstance(inputs, tuple) else (inputs,)
    logits = []
    try:
        for start in range(0, len(parts[0]), batch_size):
            batch = [torch.as_tensor(p[start : start + batch_size], dtype=torch.float32, device=device) for p in parts]
            logits.append(model(*batch).float().cpu())
    finally:
        hook.remove()
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return torch.cat(logits).numpy(), torch.cat(captured).numpy()


def embeddings(model: nn.Module, inputs: np.ndarray | tuple[np.ndarray, ...], batch_size: int = 128) -> np.ndarray:
    """Penultimate features ``(N, F)``: the input of the final linear layer."""
    return logits_and_embeddings(model, inputs, batch_size)[1]


@dataclass
class OodGate:
    """Class means ``(K, F)``, a shared precision matrix ``(F, F)`` and the distance threshold."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row to the nearest class mean."""
        features = np.asarray(features, dtype=np.float64)
        best = np.full(len(features), np.inf)
        for mean in self.means:
            d = features - mean
            best = np.minimum(best, np.einsum("nf,fg,ng->n", d, self.precision, d))
        return best

    def inside(self, features: np.ndarray) -> np.ndarray:
        """True where an image's features are within what the training images showed."""
        return self.distance(features) <= self.threshold

    def save(self, folder: Path, half: bool = False) -> None:
        """``half``: the precision matrix in float16 (shipped bundles; distances change by about 1e-5)."""
        np.savez(
            folder / GATE_FILE,
            means=self.means.astype(np.float32),
            precision=self.precision.astype(np.float16 if half else np.float32),
            threshold=np.float64(self.threshold),
        )

    @classmethod
    def load(cls, folder: Path) -> OodGate:
        path = folder / GATE_FILE
        try:
            with np.load(path) as raw:
                return cls(
                    raw["means"].astype(np.float64), raw["precision"].astype(np.float64), float(raw["threshold"])
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(
                f"{folder}: the out-of-distribution gate ({GATE_FILE}) is missing or damaged ({exc}); "
                "refit it with `medlens calibrate` or re-download the bundle"
            ) from exc


def fit_gate(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    false_flag_rate: float = FALSE_FLAG_RATE,
) -> tuple[OodGate, dict[str, Any]]:
    """Fit means and covariance on training features; set the threshold on validation features.

    Multi-label (2-D) labels use one mean for all images; single-label data one mean per class.
    Returns the gate and its description for ``bundle.json``.
    """
    from sklearn.covariance import LedoitWolf

    if len(train_features) < 2 or len(val_features) == 0:
        raise ModelError("the out-of-distribution gate needs training and validation images")
    train_features = np.asarray(train_features, dtype=np.float64)
    labels = np.asarray(train_labels)
    groups = [np.arange(len(labels))] if labels.ndim == 2 else [np.where(labels == c)[0] for c in np.unique(labels)]
    means = np.stack([train_features[g].mean(axis=0) for g in groups])
    centred = np.concatenate([train_features[g] - m for g, m in zip(groups, means)])
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    gate = OodGate(means, precision, float("inf"))
    val_distance = gate.distance(val_features)
    gate.threshold = float(np.quantile(val_distance, 1.0 - false_flag_rate))
    info = {
        "method": METHOD,
        "file": GATE_FILE,
        "fitted_on": f"training split ({len(train_features)} images, {len(groups)} mean(s))",
        "threshold": gate.threshold,
        "threshold_chosen_on": f"validation split ({len(val_features)} images), at most {false_flag_rate:.0%} flagged",
        "val_flag_rate": float(np.mean(val_distance > gate.threshold)),
        "features": int(train_features.shape[1]),
    }
    return gate, info
