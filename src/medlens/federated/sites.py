"""Simulated hospitals: a real dataset split into non-IID sites, saved so every run uses the same split.

Label skew follows the usual Dirichlet split (Hsu et al. 2019): for each
class, the share of its images that goes to each site is drawn from
Dirichlet(alpha); small alpha gives sites dominated by one class, large alpha
nearly identical sites. Quantity skew draws the sites' sizes from
Dirichlet(quantity_alpha) on top. Each site may also get an acquisition shift
(a corruption of the trust module at a fixed severity), applied to that site's
images only, as one scanner or protocol would.

The split is a JSON file of index lists into the dataset's train and
validation splits; the test split stays whole and shared (it is what every
model is judged on) and is never split.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import ConfigError, DataError

SPLIT_FORMAT = "medlens-sites/1"


@dataclass(frozen=True)
class SiteSplitConfig:
    """How to cut a dataset into hospitals. ``shifts`` names one corruption per site (or "none")."""

    n_sites: int = 5
    alpha: float = 0.5  # label skew: smaller is more skewed
    quantity_alpha: float = 2.0  # size skew: smaller is more unequal
    min_images: int = 20  # every site gets at least this many training images
    shifts: tuple[str, ...] = ("none", "gaussian-noise", "contrast", "gamma", "gaussian-blur")
    shift_severity: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_sites < 2:
            raise ConfigError(f"federate.n_sites: a federation needs at least 2 sites, got {self.n_sites}")
        if self.alpha <= 0 or self.quantity_alpha <= 0:
            raise ConfigError("federate.alpha / quantity_alpha: Dirichlet concentrations must be positive (e.g. 0.5)")
        if self.shifts and len(self.shifts) != self.n_sites:
            raise ConfigError(
                f"federate.shifts: one entry per site ({self.n_sites}), got {len(self.shifts)}; use 'none' for no shift"
            )


@dataclass
class SiteSplit:
    config: SiteSplitConfig
    train: list[list[int]]
    val: list[list[int]]
    summary: list[dict[str, Any]] = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "format": SPLIT_FORMAT,
                    "config": asdict(self.config),
                    "train": self.train,
                    "val": self.val,
                    "summary": self.summary,
                },
                indent=1,
            )
        )
        return path

    def check_usable(self) -> None:
        """One index list per site for train and validation. An empty or single-class site is allowed here: in a real
        federation the server cannot know, so such a site is handled when it answers (it fails, or adds little)."""
        if len(self.train) != self.config.n_sites or len(self.val) != self.config.n_sites:
            raise DataError(
                f"site split: {len(self.train)} train and {len(self.val)} validation lists for {self.config.n_sites} "
                "sites; make the split again"
            )


def split_sites(train_labels: np.ndarray, val_labels: np.ndarray, config: SiteSplitConfig) -> SiteSplit:
    """Dirichlet label- and quantity-skewed sites over the train and the validation split (same site shares for both)."""
    rng = np.random.default_rng(config.seed)
    classes = np.unique(np.r_[train_labels, val_labels])
    size = rng.dirichlet([config.quantity_alpha] * config.n_sites)
    shares = {c: _normalised(rng.dirichlet([config.alpha] * config.n_sites) * size) for c in classes}
    train = _assign(train_labels, shares, config.n_sites, rng)
    val = _assign(val_labels, shares, config.n_sites, rng)
    _top_up(train, train_labels, config.min_images, rng)
    summary = [
        {
            "site": k,
            "n_train": len(train[k]),
            "n_val": len(val[k]),
            "train_class_counts": {int(c): int((train_labels[train[k]] == c).sum()) for c in classes},
            "shift": config.shifts[k] if config.shifts else "none",
        }
        for k in range(config.n_sites)
    ]
    return SiteSplit(config, [sorted(map(int, t)) for t in train], [sorted(map(int, v)) for v in val], summary)


def load_site_split(path: str | Path) -> SiteSplit:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path}: not a readable site split ({exc}); make one with `medlens federate --sites N`"
        ) from exc
    if data.get("format") != SPLIT_FORMAT:
        raise DataError(f"{path}: format {data.get('format')!r}, expected {SPLIT_FORMAT!r}")
    cfg = data["config"]
    return SiteSplit(
        SiteSplitConfig(**{**cfg, "shifts": tuple(cfg["shifts"])}), data["train"], data["val"], data.get("summary", [])
    )


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / x.sum()


def _assign(
    labels: np.ndarray, shares: dict[Any, np.ndarray], n_sites: int, rng: np.random.Generator
) -> list[list[int]]:
    sites: list[list[int]] = [[] for _ in range(n_sites)]
    for c, share in shares.items():
        index = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(share)[:-1] * len(index)).round().astype(int)
        for k, part in enumerate(np.split(index, cuts)):
            sites[k].extend(part.tolist())
    return sites


def _top_up(sites: list[list[int]], labels: np.ndarray, min_images: int, rng: np.random.Generator) -> None:
    """Move random images from the largest site to any site below ``min_images`` (a hospital with almost no data
    cannot train; the Dirichlet draw can produce one)."""
    for k in range(len(sites)):
        while len(sites[k]) < min_images:
            donor = max(range(len(sites)), key=lambda j: len(sites[j]))
            if donor == k or len(sites[donor]) <= min_images:
                raise ConfigError(f"federate.min_images: {min_images} per site is more than {len(labels)} images allow")
            sites[k].append(sites[donor].pop(int(rng.integers(len(sites[donor])))))
