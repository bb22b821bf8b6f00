"""Federated training on Flower: a ServerApp running FedAvg or FedProx, one ClientApp per simulated hospital.

Each client reads only its own site of the saved split and answers with the
model's parameters and counts: the number of training images, the mean
training loss, and histograms of the global model's probabilities on its
validation cases (per class, ``HISTOGRAM_BINS`` bins). The server sums the
histograms into a validation AUC per round and Youden's threshold for the
bundle, so no image, label list or per-case prediction leaves a client.

The final global model (after the last round) becomes an ordinary medlens
bundle that records the federation's settings and the per-round history.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import ConfigError

log = logging.getLogger(__name__)
STRATEGIES = ("fedavg", "fedprox")


@dataclass(frozen=True)
class FederateConfig:
    dataset: str = "pneumoniamnist"
    size: int = 28
    model: str = "cnn"
    width: float = 1.0
    rounds: int = 10
    local_epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 32
    strategy: str = "fedavg"
    proximal_mu: float = 0.01  # FedProx only
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"federate.strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.rounds < 1 or self.local_epochs < 1:
            raise ConfigError("federate.rounds / local_epochs: must be at least 1")


def run_federation(cfg: FederateConfig, split_path: Path, out_dir: Path, data_dir: str | None = None) -> Path:
    """Simulate the federation in this process (Flower's simulation engine) and write ``OUT/model``."""
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from medlens.federated.sites import load_site_split

    split = load_site_split(split_path)
    n_sites = split.config.n_sites
    outcome: dict[str, Any] = {}
    client = ClientApp()
    client.train()(_client_train(cfg, str(split_path), data_dir))
    client.evaluate()(_client_evaluate(cfg, str(split_path), data_dir))
    server = ServerApp()
    server.main()(_server_main(cfg, n_sites, outcome))
    started = time.perf_counter()
    run_simulation(server_app=server, client_app=client, num_supernodes=n_sites,
                   backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"logging_level": logging.WARNING}})
    if "state" not in outcome:
        raise ConfigError("the federation ended without a global model; see Flower's log above for the failing round")
    return _save(cfg, split, outcome, out_dir, time.perf_counter() - started, data_dir)


def build_model(cfg: FederateConfig, data: Any) -> Any:
    import torch

    from medlens.models.networks import NetworkSpec, build_network

    torch.manual_seed(cfg.seed)
    return build_network(NetworkSpec(cfg.model, data.spatial_dims, data.n_channels, len(data.label_names), data.image_shape, width=cfg.width))


def _load(cfg: FederateConfig, data_dir: str | None) -> Any:
    from medlens.datasets import load_medmnist

    return load_medmnist(cfg.dataset, size=cfg.size, data_dir=data_dir)


def _site_and_model(cfg: FederateConfig, split_path: str, data_dir: str | None, msg: Any, context: Any) -> tuple[Any, Any]:
    """This client's own site (its data never leaves this function's process) and the global model it was sent."""
    from medlens.federated.local import load_site
    from medlens.federated.sites import load_site_split

    data = _load(cfg, data_dir)
    local = load_site(data, load_site_split(split_path), int(context.node_config["partition-id"]))
    model = build_model(cfg, data)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return local, model


def _client_train(cfg: FederateConfig, split_path: str, data_dir: str | None) -> Any:
    def train(msg: Any, context: Any) -> Any:
        from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

        from medlens.federated.local import train_locally

        local, model = _site_and_model(cfg, split_path, data_dir, msg, context)
        site = local.site
        mu = float(msg.content["config"].get("proximal-mu", 0.0))
        loss = train_locally(model, local, cfg.local_epochs, cfg.lr, cfg.batch_size, mu, seed=cfg.seed + site)
        reply = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(local.y_train)})})
        return Message(content=reply, reply_to=msg)
    return train


def _client_evaluate(cfg: FederateConfig, split_path: str, data_dir: str | None) -> Any:
    def evaluate(msg: Any, context: Any) -> Any:
        from flwr.app import Message, MetricRecord, RecordDict

        from medlens.federated.local import probability_histograms

        local, model = _site_and_model(cfg, split_path, data_dir, msg, context)
        negatives, positives = probability_histograms(model, local.x_val, local.y_val)
        metrics = MetricRecord({"hist-neg": negatives, "hist-pos": positives, "num-examples": len(local.y_val)})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
    return evaluate


def _sum_histograms(replies: list[Any], weight_key: str) -> Any:
    from flwr.app import MetricRecord

    from medlens.federated.local import auc_and_threshold

    negatives = np.sum([np.array(r["metrics"]["hist-neg"]) for r in replies], axis=0)
    positives = np.sum([np.array(r["metrics"]["hist-pos"]) for r in replies], axis=0)
    auc, threshold = auc_and_threshold(negatives, positives)
    return MetricRecord({"val_auc": auc, "threshold": threshold, "hist-neg": negatives.tolist(), "hist-pos": positives.tolist()})


def _server_main(cfg: FederateConfig, n_sites: int, outcome: dict[str, Any]) -> Any:
    def main(grid: Any, context: Any) -> None:
        from flwr.app import ArrayRecord
        from flwr.serverapp.strategy import FedAvg, FedProx

        common = dict(min_train_nodes=n_sites, min_evaluate_nodes=n_sites, min_available_nodes=n_sites,
                      evaluate_metrics_aggr_fn=_sum_histograms)
        strategy = FedProx(proximal_mu=cfg.proximal_mu, **common) if cfg.strategy == "fedprox" else FedAvg(**common)
        data = _load(cfg, None)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(build_model(cfg, data).state_dict()), num_rounds=cfg.rounds)
        outcome["state"] = result.arrays.to_torch_state_dict()
        outcome["history"] = [{"round": r, "train_loss": float(result.train_metrics_clientapp[r]["train_loss"]),
                               "val_auc": float(result.evaluate_metrics_clientapp[r]["val_auc"]),
                               "threshold": float(result.evaluate_metrics_clientapp[r]["threshold"])}
                              for r in sorted(result.evaluate_metrics_clientapp)]
    return main


def _save(cfg: FederateConfig, split: Any, outcome: dict[str, Any], out_dir: Path, seconds: float, data_dir: str | None) -> Path:
    from medlens import __version__
    from medlens.config import TrainConfig
    from medlens.models.bundle import save_bundle
    from medlens.tasks.classify import make_preprocessing

    data = _load(cfg, data_dir)
    model = build_model(cfg, data)
    model.load_state_dict(outcome["state"])
    final = outcome["history"][-1]
    prep = make_preprocessing(TrainConfig(), data)
    spec = {"name": cfg.model, "spatial_dims": data.spatial_dims, "in_channels": data.n_channels, "num_classes": len(data.label_names),
            "image_shape": list(data.image_shape), "width": cfg.width, "dropout": 0.0}
    manifest = {
        "medlens_version": __version__, "task": data.task, "label_names": list(data.label_names),
        "thresholds": [final["threshold"]], "threshold_method": "Youden's J on the sites' pooled validation histograms",
        "network": spec, "preprocessing": prep.to_dict(),
        "expected_input": {"modality": data.modality, "channels": data.n_channels, "spatial_shape": list(data.image_shape),
                           "intensity_range": list(data.intensity_range), "resized_by_pipeline": False},
        "config": {"dataset": cfg.dataset, "size": cfg.size, "model": cfg.model, "width": cfg.width},
        "data": {"dataset": data.name, **data.source},
        "federation": {**asdict(cfg), "sites": split.summary, "split": asdict(split.config), "seconds": round(seconds, 1),
                       "history": outcome["history"]},
        "metrics": {"validation": {"auc": final["val_auc"], "source": "federated: pooled site histograms"}},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "history.json").write_text(json.dumps(outcome["history"], indent=1))
    return save_bundle(out_dir / "model", model, manifest)
