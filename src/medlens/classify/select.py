"""Active learning: which unlabelled cases should the expert label next (``medlens select``).

Strategies by registered name:

- ``uncertainty``: the cases the model is least sure of at its own operating
  point (the trust module's scores: test-time augmentation by default, or the
  bundle's calibrated referral method);
- ``diversity``: k-center greedy on the encoder's features (Sener & Savarese,
  ICLR 2018): each pick is the case farthest from everything picked so far, so
  the batch covers the pool instead of piling up near one look-alike cluster;
- ``hybrid``: k-center greedy among the 4 x budget most uncertain cases (sure
  cases are skipped, near-duplicate unsure ones are not picked twice);
- ``random``: the baseline every strategy must beat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from medlens.classify.data import dataset_for_bundle
from medlens.classify.predict import FilePrediction, _read_checked, expand_inputs
from medlens.errors import ConfigError, DataError
from medlens.models.networks import FeatureExtractor
from medlens.models.uncertainty import SampleOptions, probability_samples, uncertainty_scores
from medlens.preprocess import normalize_intensity
from medlens.registry import Registry

if TYPE_CHECKING:
    from medlens.classify.bundle import ClassifierBundle

HYBRID_POOL_FACTOR = 4


@dataclass(frozen=True)
class Selection:
    index: np.ndarray  # pool positions, in the order to label them
    uncertainty: np.ndarray  # per pool case (higher = less sure), for the report


Strategy = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]
STRATEGIES: Registry[Strategy] = Registry("selection strategy")


def pool_uncertainty(bundle: ClassifierBundle, inputs: np.ndarray, method: str | None = None) -> np.ndarray:
    """Per-case uncertainty at the bundle's decision rule (higher: less sure)."""

    method = method or bundle.manifest.get("referral", {}).get("method", "tta")
    opts = SampleOptions(modality=bundle.preprocessing.modality, temperature=bundle.temperature)
    samples = probability_samples(method, [bundle.model], inputs, bundle.task, opts)
    return uncertainty_scores(samples, bundle.task, bundle.thresholds)


@torch.no_grad()
def pool_features(bundle: ClassifierBundle, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """What the classifier head sees for each case, L2-normalised."""
    encoder = FeatureExtractor(bundle.model).eval()
    device = next(bundle.model.parameters()).device
    parts = [
        encoder(torch.as_tensor(inputs[i : i + batch_size], dtype=torch.float32, device=device)).cpu()
        for i in range(0, len(inputs), batch_size)
    ]
    return torch.nn.functional.normalize(torch.cat(parts), dim=1).numpy()


def k_center_greedy(features: np.ndarray, budget: int, first: int) -> np.ndarray:
    """``budget`` rows, each the farthest (Euclidean) from those already chosen, starting at ``first``."""
    chosen = [first]
    distance = np.linalg.norm(features - features[first], axis=1)
    for _ in range(budget - 1):
        nxt = int(distance.argmax())
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(features - features[nxt], axis=1))
    return np.asarray(chosen)


@STRATEGIES.register("uncertainty")
def _by_uncertainty(uncertainty: np.ndarray, features: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    return np.argsort(-uncertainty, kind="stable")[:budget]


@STRATEGIES.register("diversity")
def _by_diversity(uncertainty: np.ndarray, features: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    return k_center_greedy(features, budget, first=int(rng.integers(len(features))))


@STRATEGIES.register("hybrid")
def _hybrid(uncertainty: np.ndarray, features: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    candidates = np.argsort(-uncertainty, kind="stable")[: min(len(uncertainty), HYBRID_POOL_FACTOR * budget)]
    return candidates[k_center_greedy(features[candidates], budget, first=0)]


@STRATEGIES.register("random")
def _at_random(uncertainty: np.ndarray, features: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(len(uncertainty))[:budget]


def select_cases(
    bundle: ClassifierBundle,
    inputs: np.ndarray,
    budget: int,
    strategy: str = "hybrid",
    method: str | None = None,
    seed: int = 0,
) -> Selection:
    """Rank ``budget`` of the normalised pool ``inputs`` for labelling; the pool must hold at least ``budget``."""
    choose = STRATEGIES.get(strategy)
    if budget < 1:
        raise ConfigError(f"--budget: must be at least 1, got {budget}")
    if budget > len(inputs):
        raise ConfigError(
            f"--budget {budget} is larger than the pool ({len(inputs)} usable images); ask for at most "
            f"{len(inputs)}, or add images to the pool"
        )
    uncertainty = pool_uncertainty(bundle, inputs, method)
    features = pool_features(bundle, inputs) if strategy in ("diversity", "hybrid") else np.zeros((len(inputs), 1))
    index = choose(uncertainty, features, budget, np.random.default_rng(seed))
    return Selection(np.asarray(index, dtype=np.int64), uncertainty)


def read_pool(
    bundle: ClassifierBundle, pool: str, data_dir: str | None = None
) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
    """(normalised images, case names, skipped files with the reason) for a folder/file pool or a dataset name.

    A dataset name (``pneumoniamnist``) pools its train split, labels unread.
    Files are checked against the bundle's expected input one by one: a file
    of another size, dimension or modality is skipped and reported, the rest go on.
    """

    if not Path(pool).exists():
        split = dataset_for_bundle(bundle, pool, data_dir=data_dir).splits["train"]
        return normalize_intensity(split.images.astype(np.float32), bundle.preprocessing), list(split.ids), []
    arrays, names, skipped = [], [], []
    for path in expand_inputs([pool]):
        array, _, error = _read_checked(bundle, False, FilePrediction(file=str(path)))
        if error:
            skipped.append({"file": str(path), "error": error})
        else:
            arrays.append(array)
            names.append(str(path))
    if not arrays:
        reason = skipped[0]["error"] if skipped else "no image files found"
        raise DataError(f"{pool}: no usable images for this bundle ({len(skipped)} skipped; first: {reason})")
    return normalize_intensity(np.stack(arrays).astype(np.float32), bundle.preprocessing), names, skipped


def write_selection(
    out: Path, names: list[str], selection: Selection, settings: dict[str, object], skipped: list[dict[str, str]]
) -> None:
    """``OUT`` (CSV: rank, case, uncertainty) and ``OUT`` with ``.json`` (settings, pool size, skipped files)."""
    import csv
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "case", "uncertainty"])
        for rank, i in enumerate(selection.index, start=1):
            writer.writerow([rank, names[i], f"{selection.uncertainty[i]:.4f}"])
    summary = {**settings, "pool_size": len(names), "selected": len(selection.index), "skipped": skipped}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
