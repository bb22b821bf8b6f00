"""How unsure a segmentation model is about a case: which unlabelled volumes an expert should label first."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from medlens.classify.select import Selection
from medlens.errors import ConfigError, MedlensError
from medlens.segment.infer import predict_probabilities
from medlens.segment.plan import SegPlan
from medlens.segment.semi import VOLUME_SUFFIXES, read_volume_for_plan

if TYPE_CHECKING:
    from medlens.segment.bundle import SegmenterBundle


def case_uncertainty(model: torch.nn.Module, image: np.ndarray, plan: SegPlan, region_threshold: float = 0.1) -> float:
    """Mean normalised voxel entropy (0 sure .. 1 uniform) where any structure has probability >= ``region_threshold``.

    Averaging over the whole volume would let easy background drown the
    boundary voxels where models disagree with experts; a case where the model
    finds no structure at all counts as fully uncertain (it missed the anatomy).
    """
    probs = predict_probabilities(model, image, plan).clamp_min(1e-8)
    entropy = -(probs * probs.log()).sum(0) / np.log(probs.shape[0])
    region = probs[1:].max(0).values >= region_threshold
    return float(entropy[region].mean()) if bool(region.any()) else 1.0


def select_volumes(
    bundle: SegmenterBundle, pool: Path, budget: int, strategy: str = "uncertainty", seed: int = 0
) -> tuple[list[str], Selection, list[dict[str, str]]]:
    """Rank the volumes of a folder for labelling: most uncertain first (or ``random``).

    A file that cannot be read as a 3D volume is skipped and reported; the
    rest are ranked. Diversity needs image features a U-Net does not pool into
    one vector per case, so segmentation offers uncertainty and random only.
    """

    if strategy not in ("uncertainty", "random"):
        raise ConfigError(f"--strategy {strategy}: a segmentation bundle ranks by uncertainty or random")
    if not pool.is_dir():
        raise ConfigError(f"{pool}: a segmentation pool is a folder of volumes ({', '.join(VOLUME_SUFFIXES)})")
    files = sorted(p for p in pool.iterdir() if p.name.lower().endswith(VOLUME_SUFFIXES) and not p.name.startswith("."))
    names, scores, skipped = [], [], []
    for path in files:
        try:
            scores.append(case_uncertainty(bundle.model, read_volume_for_plan(path, bundle.plan), bundle.plan))
            names.append(path.name)
        except MedlensError as exc:
            skipped.append({"file": path.name, "error": str(exc)})
    if budget > len(names):
        raise ConfigError(
            f"--budget {budget} is larger than the pool ({len(names)} readable volumes in {pool}); "
            "ask for fewer cases or add volumes"
        )
    uncertainty = np.asarray(scores)
    order = (
        np.argsort(-uncertainty, kind="stable")
        if strategy == "uncertainty"
        else np.random.default_rng(seed).permutation(len(names))
    )
    return names, Selection(order[:budget], uncertainty), skipped
