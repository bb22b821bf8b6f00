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

from medlens.classify.train import make_preprocessing
from medlens.config import TrainConfig
from medlens.errors import DataError
from medlens.models.probs import predict_proba
from medlens.preprocess import normalize_intensity
from medlens.trust.corruptions import corrupt

HISTOGRAM_BINS = 50  # probability histogram per class: enough for a threshold, no single case recoverable


def histogram_edges() -> np.ndarray:
    """Bin edges even in the logit of the probability (from 0.0003 to 0.9997), 0 and 1 at the ends: a trained model
    puts most cases near 0 or 1, where even-width bins would tie them all and blunt the AUC that picks the round."""
    edges = 1 / (1 + np.exp(-np.linspace(-8, 8, HISTOGRAM_BINS - 1)))
    return np.r_[0.0, edges, 1.0]


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
    arrays = []
    for part, index in (("train", split.train[site]), ("val", split.val[site])):
        arrays += list(site_images(data, split, site, part, index))
    if len(arrays[0]) == 0:
        raise DataError(f"site {site} has no training images; make a split with a larger min_images")
    return SiteData(site, *arrays)


def site_images(
    data: object, split: object, site: int, part: str, index: object = None
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised images and labels of ``part`` as seen by site ``site``'s scanner (its shift applied).

    With ``index=None`` the whole split: the shared test set as that hospital would acquire it, which is what
    a site's own test metrics are measured on."""

    prep = make_preprocessing(TrainConfig(), data)
    shift = split.config.shifts[site] if split.config.shifts else "none"
    chosen = slice(None) if index is None else np.asarray(index, dtype=int)
    images = data.splits[part].images[chosen].astype(np.float32)
    if shift != "none" and len(images):
        images = corrupt(images, shift, split.config.shift_severity, data.intensity_range, seed=site)
    return normalize_intensity(images, prep).astype(np.float32), data.splits[part].labels[chosen]


def train_locally(
    model: nn.Module,
    site: SiteData,
    epochs: int,
    lr: float,
    batch_size: int,
    proximal_mu: float = 0.0,
    seed: int = 0,
    dp_noise: tuple[float, float] | None = None,
) -> float:
    """Local AdamW epochs on the site's data; returns the mean loss.

    FedProx adds (mu/2)||w - w_global||^2. ``dp_noise = (noise multiplier, clipping norm)`` trains with DP-SGD
    through Opacus instead (Poisson-sampled batches, per-sample clipping, Gaussian noise); the two do not mix.
    """
    from torch.utils.data import DataLoader, TensorDataset

    global_weights = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(site.x_train), torch.from_numpy(site.y_train.astype(np.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=generator)
    trained = model
    model.train()
    if dp_noise is not None:
        from opacus import PrivacyEngine

        trained, optimizer, loader = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=dp_noise[0],
            max_grad_norm=dp_noise[1],
            noise_generator=generator,
        )
    trained.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        for xb, yb in loader:
            if len(yb) < 2 and dp_noise is None:
                continue  # batch norm cannot take a batch of one
            if len(yb) == 0:
                continue  # Poisson sampling can draw an empty batch
            loss = nn.functional.cross_entropy(trained(xb), yb)
            if proximal_mu > 0:
                loss = loss + proximal_mu / 2 * sum(
                    ((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_weights)
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()) * len(yb), count + len(yb)
    if dp_noise is not None:
        trained.to_standard_module()  # Opacus' hooks off: the plain model (same parameters) goes back to the server
    return total / max(count, 1)


def probability_histograms(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[list[int], list[int]]:
    """Counts of positive-class probabilities in HISTOGRAM_BINS bins, for negative and positive cases."""

    probs = predict_proba(model, x, "binary")[:, 1] if len(x) else np.zeros(0)
    edges = histogram_edges()
    return (np.histogram(probs[y == 0], edges)[0].tolist(), np.histogram(probs[y == 1], edges)[0].tolist())


def auc_and_threshold(negatives: np.ndarray, positives: np.ndarray) -> tuple[float, float]:
    """ROC AUC and Youden's threshold from pooled per-class histograms: scikit-learn on the bins, weighted by counts."""
    from sklearn.metrics import roc_auc_score, roc_curve

    negatives, positives = np.asarray(negatives), np.asarray(positives)
    if negatives.sum() == 0 or positives.sum() == 0:
        return float("nan"), 0.5
    lower_edges = histogram_edges()[:-1]  # a bin's cases score as its lower edge: ties within a bin
    y = np.r_[np.zeros(HISTOGRAM_BINS), np.ones(HISTOGRAM_BINS)]
    scores, weights = np.r_[lower_edges, lower_edges], np.r_[negatives, positives]
    fpr, tpr, thresholds = roc_curve(y, scores, sample_weight=weights)
    best = int(np.argmax(tpr - fpr))
    return float(roc_auc_score(y, scores, sample_weight=weights)), float(np.clip(thresholds[best], 0.0, 1.0))
