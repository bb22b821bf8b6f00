"""Do the explanations mean anything? Two checks a reviewer asks for.

- **Model-parameter randomisation** (Adebayo et al., NeurIPS 2018): re-initialise
  every weight and explain again. A map that still looks the same (high Spearman
  rank correlation with the trained model's map) shows the image, not the model.
- **Deletion / insertion** (Petsiuk et al., BMVC 2018): hide the pixels in the
  order the map ranks them and watch the class probability fall (deletion: lower
  area under the curve is better), or reveal them onto a blank image (insertion:
  higher is better). Both are compared with a random pixel order, the floor any
  explanation must beat.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from medlens.explain.maps import ExplainOptions, explain

CURVE_STEPS = 20


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture with every learnable layer re-initialised (its own ``reset_parameters``)."""
    torch.manual_seed(seed)
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if hasattr(module, "reset_parameters") and module is not clone:
            module.reset_parameters()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    return clone.eval()


def randomisation_correlation(
    model: nn.Module, inputs: np.ndarray, method: str, opts: ExplainOptions = ExplainOptions()
) -> dict[str, float]:
    """Mean (and sd) Spearman correlation between maps of the trained and the randomised model, same classes."""
    with torch.no_grad():
        classes = model.eval()(torch.as_tensor(inputs, dtype=torch.float32)).argmax(dim=1).tolist()
    trained = explain(model, inputs, method, classes, opts)
    random = explain(randomised_copy(model), inputs, method, classes, opts)
    rhos = []
    for a, b in zip(trained, random):
        with warnings.catch_warnings():  # a constant map (common after randomisation) has no ranking: counted as 0
            warnings.simplefilter("ignore")
            rho = spearmanr(a.ravel(), b.ravel()).statistic
        rhos.append(0.0 if not np.isfinite(rho) else float(rho))  # a constant map carries no ranking at all
    return {"spearman_mean": float(np.mean(rhos)), "spearman_sd": float(np.std(rhos)), "n": len(rhos)}


@torch.no_grad()
def _curve(model: nn.Module, x: np.ndarray, order: np.ndarray, cls: int, baseline: float, insert: bool) -> np.ndarray:
    """Class probability as 0..100% of the pixels (all channels at a location) are deleted / inserted in ``order``."""
    spatial = x.shape[1:]
    n_pix = int(np.prod(spatial))
    steps = np.linspace(0, n_pix, CURVE_STEPS + 1).astype(int)
    batch = []
    for k in steps:
        mask = np.zeros(n_pix, dtype=bool)
        mask[order[:k]] = True
        mask = mask.reshape(spatial)
        image = np.where(mask, x, baseline) if insert else np.where(mask, baseline, x)
        batch.append(image)
    logits = model(torch.as_tensor(np.stack(batch), dtype=torch.float32))
    return torch.softmax(logits, dim=1)[:, cls].numpy()


def deletion_insertion(
    model: nn.Module, inputs: np.ndarray, maps: np.ndarray, baseline: float = 0.0, seed: int = 0
) -> dict[str, float]:
    """Area under the deletion and insertion curves (0-1), for the maps and for a random order."""
    model.eval()
    with torch.no_grad():
        classes = model(torch.as_tensor(inputs, dtype=torch.float32)).argmax(dim=1).tolist()
    rng = np.random.default_rng(seed)
    scores: dict[str, list[float]] = {"deletion": [], "insertion": [], "deletion_random": [], "insertion_random": []}
    for x, m, cls in zip(inputs, maps, classes):
        ranked = np.argsort(-m.ravel(), kind="stable")
        random = rng.permutation(m.size)
        for suffix, order in (("", ranked), ("_random", random)):
            for kind in ("deletion", "insertion"):
                curve = _curve(model, x, order, cls, baseline, insert=kind == "insertion")
                scores[kind + suffix].append(float(np.trapezoid(curve, dx=1.0 / CURVE_STEPS)))
    return {k: float(np.mean(v)) for k, v in scores.items()} | {"n": len(inputs)}
