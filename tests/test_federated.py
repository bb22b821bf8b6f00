"""Federated learning on five simulated hospitals of real PneumoniaMNIST: the building blocks, the privacy
screen, DP accounting, site adaptation, and whole Flower federations (Ray simulation) with failing sites."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.errors import ConfigError, DataError, FederationError
from medlens.federated.flower import FederateConfig, build_model, check_server_config, screen_reply
from medlens.federated.local import auc_and_threshold, load_site, probability_histograms, site_images, train_locally
from medlens.federated.sites import SiteSplitConfig, load_site_split, split_sites

# Ray leaves /dev/null handles to the garbage collector; harmless, but pytest turns them into errors
RAY = pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def sites(pneumonia, tmp_path_factory: pytest.TempPathFactory) -> Path:
    split = split_sites(pneumonia.splits["train"].labels, pneumonia.splits["val"].labels, SiteSplitConfig(alpha=1.0))
    return split.save(tmp_path_factory.mktemp("fl") / "sites.json")


def test_histograms_give_the_auc_without_sharing_cases(sites: Path, pneumonia) -> None:
    """The server's AUC from summed per-class histograms matches scikit-learn's on the cases themselves (within binning)."""
    from sklearn.metrics import roc_auc_score

    from medlens.classify.bundle import load_classifier
    from medlens.models.probs import predict_proba

    split = load_site_split(sites)
    model = load_classifier("pneumonia-28px").model
    parts = [load_site(pneumonia, split, k) for k in range(5)]
    hists = [probability_histograms(model, p.x_val, p.y_val) for p in parts]
    auc, threshold = auc_and_threshold(np.sum([h[0] for h in hists], axis=0), np.sum([h[1] for h in hists], axis=0))
    x, y = np.concatenate([p.x_val for p in parts]), np.concatenate([p.y_val for p in parts])
    assert auc == pytest.approx(roc_auc_score(y, predict_proba(model, x, "binary")[:, 1]), abs=0.01)
    assert 0 < threshold < 1


def test_fedprox_keeps_local_weights_near_the_global_model(sites: Path, pneumonia) -> None:
    site = load_site(pneumonia, load_site_split(sites), 0)
    start = build_model(FederateConfig(), pneumonia)
    drift = {}
    for mu in (0.0, 10.0):
        model = build_model(FederateConfig(), pneumonia)
        train_locally(model, site, epochs=1, lr=1e-2, batch_size=32, proximal_mu=mu)
        drift[mu] = sum(float(((p - q) ** 2).sum().detach()) for p, q in zip(model.parameters(), start.parameters()))
    assert drift[10.0] < drift[0.0]
    assert torch.equal(next(start.parameters()), next(build_model(FederateConfig(), pneumonia).parameters()))


def test_a_site_sees_the_test_set_through_its_own_scanner(sites: Path, pneumonia) -> None:
    split = load_site_split(sites)
    clean, y = site_images(pneumonia, split, 0, "test")  # site 0: no shift
    noisy, y1 = site_images(pneumonia, split, 1, "test")  # site 1: gaussian noise
    assert len(clean) == len(pneumonia.splits["test"].labels) and np.array_equal(y, y1)
    assert float(np.abs(noisy - clean).mean()) > 0.01


def test_dp_noise_spends_exactly_the_budget_over_all_rounds() -> None:
    from medlens.federated.privacy import PrivacyBudget, epsilon_spent, noise_multiplier

    budget = PrivacyBudget(3.0)
    sigma = noise_multiplier(budget, 900, 32, total_epochs=10)
    spent = [epsilon_spent(sigma, 900, 32, r, budget.delta) for r in (1, 5, 10)]
    assert spent[0] < spent[1] < spent[2] == pytest.approx(3.0, abs=0.05)
    assert noise_multiplier(PrivacyBudget(1.0), 900, 32, 10) > sigma > noise_multiplier(PrivacyBudget(8.0), 900, 32, 10)
    with pytest.raises(ConfigError, match="delta"):
        noise_multiplier(PrivacyBudget(3.0, delta=0.05), 50, 32, 10)
    with pytest.raises(ConfigError, match="FedProx"):
        FederateConfig(strategy="fedprox", dp_epsilon=3.0)


@pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning", "ignore:Full backward hook:UserWarning")
def test_dp_training_needs_groupnorm_and_learns(sites: Path, pneumonia) -> None:
    """BatchNorm is swapped for GroupNorm (Opacus' fix) when the net is built for DP; DP-SGD still learns a site."""
    from medlens.federated.adapt import site_auc
    from medlens.models.networks import NetworkSpec, build_network

    spec = dict(name="densenet121", spatial_dims=2, in_channels=1, num_classes=2, image_shape=(32, 32))
    kinds = {type(m).__name__ for m in build_network(NetworkSpec(**spec, norm="group")).modules()}
    assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)
    assert any("BatchNorm" in type(m).__name__ for m in build_network(NetworkSpec(**spec)).modules())
    site = load_site(pneumonia, load_site_split(sites), 0)
    model = build_model(FederateConfig(dp_epsilon=8.0), pneumonia)
    before = site_auc(model, site.x_val, site.y_val)
    train_locally(model, site, epochs=2, lr=1e-3, batch_size=32, dp_noise=(0.8, 1.0))
    assert site_auc(model, site.x_val, site.y_val) > max(0.85, before + 0.1)


def test_the_server_refuses_anything_but_parameters_and_counts(pneumonia) -> None:
    from flwr.app import ArrayRecord, MetricRecord, RecordDict

    model = build_model(FederateConfig(), pneumonia)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    metrics = {"train_loss": 0.3, "num-examples": 100, "site": 0}
    honest = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    summary = screen_reply(honest, "train", expected)
    assert summary["arrays"]["count"] == len(expected) and set(summary["metrics"]) == set(metrics)
    images = torch.from_numpy(pneumonia.splits["train"].images[:8].astype(np.float32))
    leaks = {
        "an extra record": RecordDict({**honest, "cases": ArrayRecord({"x": images})}),
        "images as a parameter": RecordDict(
            {"arrays": ArrayRecord({**model.state_dict(), "x": images}), "metrics": MetricRecord(metrics)}
        ),
        "per-case scores": RecordDict(
            {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({**metrics, "hist-neg": [0.12, 0.93]})}
        ),
        "a label list": RecordDict(
            {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({**metrics, "labels": [0, 1, 1]})}
        ),
    }
    for what, reply in leaks.items():
        with pytest.raises(ValueError):
            screen_reply(reply, "train", expected)
            pytest.fail(f"{what} was accepted")


def test_a_site_refuses_a_global_model_built_differently(sites: Path, pneumonia) -> None:
    """Mismatched model configurations: the client says which setting differs instead of failing on tensor shapes."""
    from types import SimpleNamespace

    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

    from medlens.federated.flower import _client_train

    server = FederateConfig(width=0.5)
    config = ConfigRecord({"model": json.dumps(server.model_fingerprint()), "server-round": 1})
    # the message's content as Flower delivers it (a Message itself needs a running Flower task to exist)
    msg = SimpleNamespace(
        content=RecordDict({"arrays": ArrayRecord(build_model(server, pneumonia).state_dict()), "config": config})
    )
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 2}, state=RecordDict(), run_config={})
    with pytest.raises(ConfigError, match=r"site 2: .*width: server 0.5, this site 1.0"):
        _client_train(FederateConfig(), str(sites), os.environ["MEDLENS_DATA_DIR"])(msg, context)
    check_server_config(server, config, 2)  # the same settings pass


def test_site_adaptation(sites: Path, pneumonia) -> None:
    from medlens.classify.bundle import load_classifier
    from medlens.federated.adapt import adapt_at_test_time, finetune, site_auc

    split = load_site_split(sites)
    site = load_site(pneumonia, split, 2)  # contrast-shifted scanner
    model = load_classifier("pneumonia-28px").model  # resnet18: BatchNorm
    tuned, info = finetune(model, site, epochs=2)
    assert info["selected_epoch"] in (0, 1, 2) and len(info["val_auc"]) == 3
    assert site_auc(tuned, site.x_val, site.y_val) == pytest.approx(max(a for a in info["val_auc"] if a is not None))
    x_test, y_test = site_images(pneumonia, split, 2, "test")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tent, report = adapt_at_test_time(model, x_test)
    assert report["adapted_parameters"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the global model is left alone
    changed = [k for k, v in tent.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and all("bn" in k or "norm" in k or "downsample.1" in k for k in changed)
    assert site_auc(tent, x_test, y_test) > 0.8


def _edited_split(pneumonia, path: Path) -> Path:
    """Site 2 empty (it fails every round); site 3 single-class (normal images only)."""
    split = split_sites(pneumonia.splits["train"].labels, pneumonia.splits["val"].labels, SiteSplitConfig(alpha=1.0))
    labels = pneumonia.splits["train"].labels
    split.train[3] = [i for i in split.train[3] if labels[i] == 0]
    split.train[2] = []
    return split.save(path)


@RAY
@pytest.mark.slow  # 40 s, moved out of the default run (kept under 10 minutes); DP training keeps a quicker test there
def test_federation_with_dp_goes_on_past_a_failing_site(pneumonia, tmp_path: Path) -> None:
    """Five hospitals, one empty, one single-class, DP-SGD at epsilon 8: the rounds complete with four sites; every
    message that left a site is model parameters or counts; the result is an ordinary bundle with its epsilon."""
    from medlens.classify.bundle import load_classifier
    from medlens.evaluate.stage import evaluate_bundle
    from medlens.federated.stage import federate

    split_path = _edited_split(pneumonia, tmp_path / "sites.json")
    cfg = FederateConfig(rounds=2, dp_epsilon=8.0)
    result = federate(
        cfg, tmp_path / "run", split_path=split_path, data_dir=os.environ["MEDLENS_DATA_DIR"], n_bootstrap=50
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "messages.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 5  # rounds x (train, evaluate) x sites
    failed = [r for r in rows if "error" in r]
    assert len(failed) == 4 and all("site 2 has no training images" in r["error"] for r in failed)
    expected = {k: tuple(v.shape) for k, v in build_model(cfg, pneumonia).state_dict().items()}
    param_bytes = sum(int(np.prod(s)) * 4 for s in expected.values())
    for row in (r for r in rows if "site" in r):
        assert set(row) - {"round", "stage", "node", "site"} <= {"arrays", "metrics"}
        if row["stage"] == "train":
            assert row["arrays"]["count"] == len(
                expected
            )  # the parameters, and nothing else in size (.npy headers aside)
            assert param_bytes <= row["arrays"]["bytes"] <= param_bytes + 256 * len(expected)
    history = result["config"]["history"]
    assert [h["sites_trained"] for h in history] == [4, 4]
    assert 0 < history[0]["epsilon"] < history[1]["epsilon"] <= 8.0
    assert history[-1]["sites"]["3"]["val_auc"] is not None and "2" not in history[-1]["sites"]
    bundle = load_classifier(Path(result["bundle"]))
    assert bundle.manifest["federation"]["privacy"]["epsilon_spent"] == pytest.approx(history[-1]["epsilon"])
    assert bundle.manifest["network"]["norm"] == "group"
    report = evaluate_bundle(bundle, pneumonia, tmp_path / "eval", n_bootstrap=20)
    assert report["metrics"]["auc"] == pytest.approx(result["test"]["auc"]) and result["test"]["auc"] > 0.75
    assert len(result["sites"]) == 5 and all(s["test_auc"] > 0.6 for s in result["sites"])


@RAY
def test_federation_stops_with_the_reason_when_too_few_sites_answer(pneumonia, tmp_path: Path) -> None:
    """One round with an empty site: it goes on with the other four when four are enough (the quick default-run
    version of the DP test above), and stops with each site's reason when all five are needed."""
    split_path = _edited_split(pneumonia, tmp_path / "sites.json")
    from medlens.federated.flower import run_federation

    bundle = run_federation(
        FederateConfig(rounds=1, min_sites=4), split_path, tmp_path / "ok", os.environ["MEDLENS_DATA_DIR"]
    )
    rows = [json.loads(line) for line in (tmp_path / "ok" / "messages.jsonl").read_text().splitlines()]
    assert (bundle / "bundle.json").is_file() and sum("error" in r for r in rows) == 2  # site 2, train and evaluate
    assert json.loads((bundle / "bundle.json").read_text())["federation"]["history"][0]["sites_trained"] == 4
    with pytest.raises(
        FederationError, match=r"round 1 \(train\): 4 of 5 sites answered, 5 needed.*site 2 has no training images"
    ):
        run_federation(
            FederateConfig(rounds=1, min_sites=5), split_path, tmp_path / "run", os.environ["MEDLENS_DATA_DIR"]
        )
    assert not (tmp_path / "run" / "model").exists()
    with pytest.raises(DataError, match="site split"):
        bad = json.loads(split_path.read_text())
        bad["train"] = bad["train"][:3]
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        run_federation(
            FederateConfig(rounds=1), tmp_path / "bad.json", tmp_path / "run2", os.environ["MEDLENS_DATA_DIR"]
        )


@pytest.mark.slow  # 81 s in the fresh-clone run; in-process federation tests cover rounds, DP and failing sites by default
def test_federate_command_as_separate_processes(tmp_path: Path) -> None:
    """`medlens federate --deployment`: Flower's deployment engine on 127.0.0.1 (a SuperLink, one SuperNode per site,
    `flwr run`), then scoring at each site; every Flower process is stopped afterwards. (Adaptation: test_site_adaptation.)"""
    import subprocess

    from typer.testing import CliRunner

    from medlens.cli import app

    out = tmp_path / "fl"
    result = CliRunner().invoke(
        app, ["federate", "--out", str(out), "--sites", "2", "--alpha", "1.0", "--rounds", "1", "--deployment"]
    )
    assert result.exit_code == 0, result.output
    assert "test AUC" in result.output
    report = json.loads((out / "federation.json").read_text())
    assert report["engine"].startswith("Flower deployment")
    assert len(report["sites"]) == 2 and all(s["test_auc"] > 0.7 for s in report["sites"])
    history = report["config"]["history"]
    assert history[0]["sites_trained"] == 2 and history[0]["val_auc"] > 0.7
    rows = [json.loads(line) for line in (out / "messages.jsonl").read_text().splitlines()]
    assert sorted(r["site"] for r in rows if r["stage"] == "train") == [0, 1]
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "flwr-run.log",
        "site-0.log",
        "site-1.log",
        "superlink.log",
    ]
    assert (out / "sites.json").exists() and (out / "model" / "bundle.json").exists()
    leftover = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not leftover, "Flower processes still running after the federation"
