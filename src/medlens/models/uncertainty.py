"""Predictive uncertainty and referral: which cases should a radiologist read instead of the model.

Methods (registered by name) give ``S`` probability samples per case:

- ``softmax``: one pass, no extra cost (the baseline every method must beat);
- ``tta``: test-time augmentation with one-pixel shifts (and flips where the
  anatomy allows them: never left-right on chest X-rays);
- ``mc-dropout``: dropout left on at inference (Gal & Ghahramani 2016); needs a
  network trained with dropout;
- ``ensemble``: several independently trained networks (Lakshminarayanan et al. 2017).

The uncertainty of a case is measured *at the bundle's decision rule*: for a
binary bundle, how close the mean probability lies to the validation-chosen
threshold (in logit space), plus the spread of the samples; for multi-class, the
entropy of the mean probability. A referral operating point is a quantile of
validation uncertainty, so "refer 10%" is decided before the test set is seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medlens.errors import ConfigError, DataError, ModelError
from medlens.models.probs import logits_to_probabilities
from medlens.registry import Registry

SampleFn = Callable[[Sequence[nn.Module], "np.ndarray | tuple[np.ndarray, ...]", str, "SampleOptions"], np.ndarray]
UNCERTAINTY_METHODS: Registry[SampleFn] = Registry("uncertainty method")
NO_LR_FLIP_MODALITIES = {"CR", "DX", "DR", "XR", "MG"}  # projection images: laterality matters
REFERRAL_FRACTIONS = tuple(round(f, 2) for f in np.arange(0.0, 0.51, 0.05))


@dataclass(frozen=True)
class SampleOptions:
    """How many stochastic passes, and what the input is (for which augmentations are safe)."""

    samples: int = 8
    modality: str = "unknown"
    temperature: float = 1.0


@torch.no_grad()
def _passes(
    model: nn.Module,
    inputs: np.ndarray | tuple[np.ndarray, ...],
    transform: Callable[[torch.Tensor], torch.Tensor],
    task: str,
    temperature: float,
    batch_size: int = 256,
) -> np.ndarray:
    """Probabilities of ``model`` on transformed inputs; a fused model's inputs are (images, clinical features), and
    only the images are transformed."""
    device = next(model.parameters()).device
    parts = inputs if isinstance(inputs, tuple) else (inputs,)
    out = []
    for start in range(0, len(parts[0]), batch_size):
        batch = [torch.as_tensor(p[start : start + batch_size], dtype=torch.float32, device=device) for p in parts]
        out.append(logits_to_probabilities(model(transform(batch[0]), *batch[1:]), task, temperature).cpu().numpy())
    return np.concatenate(out)


def _softmax(models: Sequence[nn.Module], inputs: np.ndarray, task: str, opts: SampleOptions) -> np.ndarray:
    models[0].eval()
    return _passes(models[0], inputs, lambda x: x, task, opts.temperature)[None]


def _shift(x: torch.Tensor, axis: int, step: int) -> torch.Tensor:
    """Shift by one pixel along a spatial axis, repeating the edge (no wrap-around)."""
    index = torch.arange(x.shape[axis], device=x.device) - step
    return x.index_select(axis, index.clamp(0, x.shape[axis] - 1))


def tta_transforms(spatial_dims: int, modality: str) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """Identity, one-pixel shifts along each spatial axis, and flips where the anatomy allows."""
    transforms: list[Callable[[torch.Tensor], torch.Tensor]] = [lambda x: x]
    for axis in range(2, 2 + spatial_dims):
        for step in (-1, 1):
            transforms.append(lambda x, a=axis, s=step: _shift(x, a, s))
    if modality.upper() not in NO_LR_FLIP_MODALITIES:
        transforms.append(lambda x: torch.flip(x, dims=(-1,)))
    return transforms


def _tta(models: Sequence[nn.Module], inputs: np.ndarray, task: str, opts: SampleOptions) -> np.ndarray:
    models[0].eval()
    spatial_dims = (inputs[0] if isinstance(inputs, tuple) else inputs).ndim - 2
    transforms = tta_transforms(spatial_dims, opts.modality)[: max(opts.samples, 1)]
    return np.stack([_passes(models[0], inputs, t, task, opts.temperature) for t in transforms])


def _mc_dropout(models: Sequence[nn.Module], inputs: np.ndarray, task: str, opts: SampleOptions) -> np.ndarray:
    model = models[0]
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    if not dropouts:
        raise ModelError(
            "mc-dropout needs a network with dropout, and this one has none: train it with "
            "--set dropout=0.2, or use --method tta or ensemble"
        )
    model.eval()
    for m in dropouts:
        m.train()
    try:
        torch.manual_seed(0)
        return np.stack([_passes(model, inputs, lambda x: x, task, opts.temperature) for _ in range(opts.samples)])
    finally:
        model.eval()


def _ensemble(models: Sequence[nn.Module], inputs: np.ndarray, task: str, opts: SampleOptions) -> np.ndarray:
    if len(models) < 2:
        raise ConfigError("an ensemble needs at least two models (bundles trained with different seeds)")
    return np.stack([_softmax([m], inputs, task, opts)[0] for m in models])


UNCERTAINTY_METHODS.add("softmax", _softmax)
UNCERTAINTY_METHODS.add("tta", _tta)
UNCERTAINTY_METHODS.add("mc-dropout", _mc_dropout)
UNCERTAINTY_METHODS.add("ensemble", _ensemble)


def probability_samples(
    method: str,
    models: Sequence[nn.Module],
    inputs: np.ndarray | tuple[np.ndarray, ...],
    task: str,
    opts: SampleOptions = SampleOptions(),
) -> np.ndarray:
    """``(S, N, classes)`` probabilities from a registered method; ``inputs`` is (images, clinical features) for a
    fused model (augmentations touch the images only)."""
    return UNCERTAINTY_METHODS.get(method)(models, inputs, task, opts)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def uncertainty_scores(samples: np.ndarray, task: str, thresholds: Sequence[float] = ()) -> np.ndarray:
    """Higher = less sure, per case, at the bundle's decision rule (see the module docstring)."""
    mean = samples.mean(axis=0)
    if task == "binary":
        threshold = thresholds[0] if thresholds else 0.5
        margin = np.abs(_logit(mean[:, 1]) - _logit(np.asarray(threshold)))
        spread = _logit(samples[:, :, 1]).std(axis=0)
        return spread - margin
    if task == "multilabel":
        t = np.asarray(thresholds if len(thresholds) else [0.5] * mean.shape[1])
        return -np.abs(_logit(mean) - _logit(t)).min(axis=1) + _logit(samples).std(axis=0).max(axis=1)
    return -(mean * np.log(np.clip(mean, 1e-12, None))).sum(axis=1)


def referral_threshold(val_uncertainty: np.ndarray, fraction: float) -> float:
    """The uncertainty above which a case is referred so that ``fraction`` of validation cases would be."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"referral fraction must be in [0, 1), got {fraction}")
    if len(val_uncertainty) == 0:
        raise DataError("choosing a referral threshold needs validation cases; the validation split is empty")
    return float(np.quantile(val_uncertainty, 1.0 - fraction)) if fraction > 0 else float("inf")


def referral_curve(
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    labels: np.ndarray,
    probs: np.ndarray,
    uncertainty: np.ndarray,
    fractions: Sequence[float] = REFERRAL_FRACTIONS,
) -> list[dict[str, float]]:
    """Metrics on the cases the model keeps when the most uncertain ``fraction`` go to a radiologist."""
    order = np.argsort(-uncertainty, kind="stable")  # most uncertain first
    rows = []
    for fraction in fractions:
        kept = np.sort(order[int(round(fraction * len(order))) :])
        metrics = metric_fn(labels[kept], probs[kept])
        rows.append(
            {
                "referred_fraction": float(fraction),
                "n_kept": int(len(kept)),
                **{k: metrics[k] for k in ("auc", "accuracy", "sensitivity", "specificity") if k in metrics},
            }
        )
    return rows
