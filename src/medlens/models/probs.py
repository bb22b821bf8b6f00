"""The one rule from network outputs to probabilities and to a decision.

A classifier's logits become probabilities by dividing by the bundle's
calibration temperature and applying softmax, or a sigmoid per label for
multi-label models. The decision uses the operating threshold(s) chosen on
validation: the second label of a binary model is the positive class (the
finding), each label of a multi-label model is a finding of its own, and a
multi-class model takes the most probable label. Training, evaluation,
calibration, uncertainty, the ONNX graph, ``predict`` and the service all
call these functions, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def logits_to_probabilities(logits: torch.Tensor, task: str, temperature: float = 1.0) -> torch.Tensor:
    """Probabilities from logits (a tensor; traceable, so the ONNX graph uses it too)."""
    z = logits.float() / temperature
    return torch.sigmoid(z) if task == "multilabel" else torch.softmax(z, dim=1)


def scale_logits(logits: np.ndarray | torch.Tensor, task: str, temperature: float = 1.0) -> np.ndarray:
    """Probabilities from logits at a temperature, as a NumPy array ``(N, classes)``."""
    return logits_to_probabilities(torch.as_tensor(logits, dtype=torch.float32), task, temperature).cpu().numpy()


def finding_thresholds(task: str, label_names: Sequence[str], thresholds: Sequence[float]) -> dict[str, float]:
    """Each finding's operating threshold: every label but the first (normal) of a binary model, every label
    otherwise; 0.5 where the bundle chose none."""
    if task == "binary":
        return {label_names[1]: float(thresholds[0]) if thresholds else 0.5}
    if task == "multilabel":
        chosen = list(thresholds) or [0.5] * len(label_names)
        return {n: float(t) for n, t in zip(label_names, chosen)}
    return {n: 0.5 for n in label_names}


def decide_label(task: str, label_names: Sequence[str], thresholds: Sequence[float], probs: np.ndarray) -> str:
    """The decision for one case: the positive class at its threshold (binary), the labels at or above theirs
    joined with ``|`` (multi-label), else the arg-max."""
    if task == "binary":
        return (
            label_names[1]
            if probs[1] >= finding_thresholds(task, label_names, thresholds)[label_names[1]]
            else label_names[0]
        )
    if task == "multilabel":
        cut = finding_thresholds(task, label_names, thresholds)
        return "|".join(n for n, p in zip(label_names, probs) if p >= cut[n])
    return label_names[int(np.argmax(probs))]


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: np.ndarray | tuple[np.ndarray, ...], batch_size: int = 256) -> np.ndarray:
    """Raw network outputs ``(N, classes)`` for normalised inputs (or ``(images, clinical features)``), batch by batch."""
    model.eval()
    device = next(model.parameters()).device
    parts = inputs if isinstance(inputs, tuple) else (inputs,)  # (images, clinical features) for fused models
    outputs = []
    for start in range(0, len(parts[0]), batch_size):
        batch = [torch.as_tensor(p[start : start + batch_size], dtype=torch.float32, device=device) for p in parts]
        with torch.autocast(device.type, enabled=device.type == "cuda"):  # mixed precision on a GPU; fp32 on CPU
            outputs.append(model(*batch).float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def predict_proba(
    model: nn.Module,
    inputs: np.ndarray | tuple[np.ndarray, ...],
    task: str,
    batch_size: int = 256,
    temperature: float = 1.0,
) -> np.ndarray:
    """Probabilities for normalised inputs: :func:`predict_logits`, then :func:`scale_logits`."""
    logits = predict_logits(model, inputs, batch_size)
    return scale_logits(logits, task, temperature) if len(logits) else logits
