"""Dataset shift: detect a shifted batch, and optionally adapt batch-norm statistics to it.

Detection scores a *batch* (a day's studies from one scanner, say) against the
clean validation data, two ways: the change in mean confidence (max probability),
and the distance of the batch's mean penultimate-layer embedding from the
validation embeddings (in units of their per-feature spread). Its quality is
the AUROC at telling shifted from clean batches.

Test-time batch-norm adaptation (Schneider et al. 2020) re-estimates the BN
means and variances on the incoming batch; it can help under acquisition shift
and can hurt on small or single-class batches, so its gain is measured, never
assumed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from medlens.errors import ModelError


class BatchShiftScorer:
    """Scores batches by confidence drop and embedding distance from the clean validation data."""

    def __init__(self, val_probs: np.ndarray, val_embeddings: np.ndarray) -> None:
        self.val_confidence = float(val_probs.max(axis=1).mean())
        self.mean = val_embeddings.mean(axis=0)
        self.std = val_embeddings.std(axis=0) + 1e-6

    def confidence_score(self, probs: np.ndarray) -> float:
        """How far the batch's mean confidence lies from validation's, either way.

        Two-sided on purpose: low contrast made the pneumonia model *more* confident
        (AUROC 0.0 with a one-sided drop), and a shift is a shift.
        """
        return abs(self.val_confidence - float(probs.max(axis=1).mean()))

    def embedding_score(self, batch_embeddings: np.ndarray) -> float:
        """Root-mean-square z-score of the batch mean embedding (scaled by sqrt(n), like a two-sample z-test)."""
        z = (batch_embeddings.mean(axis=0) - self.mean) / self.std * np.sqrt(len(batch_embeddings))
        return float(np.sqrt(np.mean(z**2)))


def batch_indices(n: int, batch_size: int, n_batches: int, seed: int) -> list[np.ndarray]:
    """Random batches (without replacement within a batch) of case indices."""
    rng = np.random.default_rng(seed)
    return [rng.choice(n, size=min(batch_size, n), replace=False) for _ in range(n_batches)]


def detection_auroc(clean_scores: Sequence[float], shifted_scores: Sequence[float]) -> float:
    """AUROC of a batch score at telling shifted batches (positive) from clean ones."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(clean_scores)), np.ones(len(shifted_scores))]
    return float(roc_auc_score(y, np.r_[clean_scores, shifted_scores]))


@torch.no_grad()
def bn_adapted(model: nn.Module, inputs: np.ndarray | tuple[np.ndarray, ...]) -> nn.Module:
    """A copy of ``model`` whose batch-norm statistics are re-estimated on ``inputs`` (one shifted batch or set)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ModelError("test-time adaptation re-estimates batch-norm statistics; this network has no batch norm")
    adapted = copy.deepcopy(model).eval()
    for m in adapted.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the adaptation batches
            m.train()
    parts = inputs if isinstance(inputs, tuple) else (inputs,)  # (images, clinical features) for a fused model
    for start in range(0, len(parts[0]), 256):
        adapted(*(torch.as_tensor(p[start : start + 256], dtype=torch.float32) for p in parts))
    return adapted.eval()
