"""Simulated hospitals on real PneumoniaMNIST: disjoint, complete, skewed, reproducible, and saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medlens.errors import ConfigError
from medlens.federated.sites import SiteSplitConfig, load_site_split, split_sites


def test_sites_partition_the_data_with_label_and_size_skew(pneumonia, tmp_path: Path) -> None:
    train, val = pneumonia.splits["train"].labels, pneumonia.splits["val"].labels
    split = split_sites(train, val, SiteSplitConfig(n_sites=5, alpha=0.5, seed=0))
    everything = np.concatenate([np.array(s) for s in split.train])
    assert len(everything) == len(train) == len(set(everything.tolist()))  # disjoint and complete
    assert sum(len(v) for v in split.val) == len(val)
    assert min(len(s) for s in split.train) >= 20
    rates = [train[s].mean() for s in split.train]  # share of pneumonia per site: 0.74 overall
    assert max(rates) - min(rates) > 0.2  # label skew
    sizes = [len(s) for s in split.train]
    assert max(sizes) > 2 * min(sizes)  # quantity skew
    again = split_sites(train, val, SiteSplitConfig(n_sites=5, alpha=0.5, seed=0))
    assert again.train == split.train  # the same seed gives the same hospitals
    loaded = load_site_split(split.save(tmp_path / "sites.json"))
    assert loaded.train == split.train and loaded.config == split.config
    assert [s["shift"] for s in loaded.summary] == list(SiteSplitConfig().shifts)


def test_bad_site_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 2 sites"):
        SiteSplitConfig(n_sites=1, shifts=("none",))
    with pytest.raises(ConfigError, match="one entry per site"):
        SiteSplitConfig(n_sites=3)
    with pytest.raises(ConfigError, match="more than"):
        split_sites(
            np.array([0, 1] * 10), np.array([0, 1]), SiteSplitConfig(n_sites=2, shifts=("none", "none"), min_images=15)
        )
