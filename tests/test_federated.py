"""Federated building blocks on five simulated hospitals of real PneumoniaMNIST (the Flower run itself: see issue 9 notes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.federated.flower import FederateConfig, build_model
from medlens.federated.local import auc_and_threshold, load_site, probability_histograms, train_locally
from medlens.federated.sites import SiteSplitConfig, split_sites



@pytest.fixture(scope="module")
def sites(pneumonia, tmp_path_factory: pytest.TempPathFactory) -> Path:
    split = split_sites(pneumonia.splits["train"].labels, pneumonia.splits["val"].labels, SiteSplitConfig(alpha=1.0))
    return split.save(tmp_path_factory.mktemp("fl") / "sites.json")


def test_histograms_give_the_auc_without_sharing_cases(sites: Path, pneumonia) -> None:
    """The server's AUC from summed per-class histograms matches scikit-learn's on the cases themselves (within binning)."""
    from sklearn.metrics import roc_auc_score

    from medlens.federated.sites import load_site_split
    from medlens.models.bundle import load_bundle, predict_proba

    split = load_site_split(sites)
    shipped = load_bundle("pneumonia")
    model = shipped.model
    parts = [load_site(pneumonia, split, k) for k in range(5)]
    hists = [probability_histograms(model, p.x_val, p.y_val) for p in parts]
    auc, threshold = auc_and_threshold(np.sum([h[0] for h in hists], axis=0), np.sum([h[1] for h in hists], axis=0))
    x, y = np.concatenate([p.x_val for p in parts]), np.concatenate([p.y_val for p in parts])
    assert auc == pytest.approx(roc_auc_score(y, predict_proba(model, x, "binary")[:, 1]), abs=0.01)
    assert 0 < threshold < 1


def test_fedprox_keeps_local_weights_near_the_global_model(sites: Path, pneumonia) -> None:
    from medlens.federated.sites import load_site_split

    site = load_site(pneumonia, load_site_split(sites), 0)
    start = build_model(FederateConfig(), pneumonia)
    drift = {}
    for mu in (0.0, 10.0):
        model = build_model(FederateConfig(), pneumonia)
        train_locally(model, site, epochs=1, lr=1e-2, batch_size=32, proximal_mu=mu)
        drift[mu] = sum(float(((p - q) ** 2).sum().detach()) for p, q in zip(model.parameters(), start.parameters()))
    assert drift[10.0] < drift[0.0]
    assert torch.equal(next(start.parameters()), next(build_model(FederateConfig(), pneumonia).parameters()))
