"""What one hospital does with its own data: read its site, train the global model a little, score it.

Nothing here talks to the network: the Flower client (``medlens.federated.flower``)
calls these functions and sends back only what they return to it for sending,
model parameters and counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medlens.errors import DataError

HISTOGRAM_BINS = 50  # probability histogram per class: enough for a threshold, no single case recoverable


@dataclass
class SiteData:
    """One site's normalised train and validation arrays (its acquisition shift already applied)."""

    site: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def load_site(data: object, split: object, site: int) -> SiteData:
    """Site ``site`` of ``split`` (a :class:`medlens.federated.sites.SiteSplit`) from a ClassificationData."""
    from medlens.preprocess import normalize_intensity
    from medlens.tasks.classify import make_preprocessing
    from medlens.config import TrainConfig
    from medlens.trust.corruptions import corrupt

    prep = make_preprocessing(TrainConfig(), data)
    shift = split.config.shifts[site] if split.config.shifts else "none"
    arrays = []
    for part, index in (("train", split.train[site]), ("val", split.val[site])):
        images = data.splits[part].images[index].astype(np.float32)
        if shift != "none":
            images = corrupt(images, shift, split.config.shift_severity, data.intensity_range, seed=site)
        arrays += [normalize_intensity(images, prep).astype(np.float32), data.splits[part].labels[index]]
    if len(arrays[0]) == 0:
        raise DataError(f"site {site} has no training images; make a split with a larger min_images")
    return SiteData(site, *arrays)


def train_locally(model: nn.Module, site: SiteData, epochs: int, lr: float, batch_size: int, proximal_mu: float = 0.0,
                  seed: int = 0) -> float:
    """Local AdamW epochs on the site's data; FedProx adds (mu/2)||w - w_global||^2. Returns the mean loss."""
    global_weights = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(site.x_train), torch.from_numpy(site.y_train.astype(np.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            if len(batch) < 2:
                continue  # batch norm cannot take a batch of one
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            if proximal_mu > 0:
                loss = loss + proximal_mu / 2 * sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_weights))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()) * len(batch), count + len(batch)
    return total / max(count, 1)


def probability_histograms(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[list[int], list[int]]:
    """Counts of positive-class probabilities in HISTOGRAM_BINS bins, for negative and positive cases."""
    from medlens.models.bundle import predict_proba

    probs = predict_proba(model, x, "binary")[:, 1] if len(x) else np.zeros(0)
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    return (np.histogram(probs[y == 0], edges)[0].tolist(), np.histogram(probs[y == 1], edges)[0].tolist())


def auc_and_threshold(negatives: np.ndarray, positives: np.ndarray) -> tuple[float, float]:
    """ROC AUC and Youden's threshold from pooled per-class histograms: scikit-learn on the bins, weighted by counts."""
    from sklearn.metrics import roc_auc_score, roc_curve

    negatives, positives = np.asarray(negatives), np.asarray(positives)
    if negatives.sum() == 0 or positives.sum() == 0:
        return float("nan"), 0.5
    lower_edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)[:-1]  # a bin's cases score as its lower edge: ties within a bin
    y = np.r_[np.zeros(HISTOGRAM_BINS), np.ones(HISTOGRAM_BINS)]
    scores, weights = np.r_[lower_edges, lower_edges], np.r_[negatives, positives]
    fpr, tpr, thresholds = roc_curve(y, scores, sample_weight=weights)
    best = int(np.argmax(tpr - fpr))
    return float(roc_auc_score(y, scores, sample_weight=weights)), float(np.clip(thresholds[best], 0.0, 1.0))
