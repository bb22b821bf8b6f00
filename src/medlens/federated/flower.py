"""Federated training on Flower: a ServerApp running FedAvg or FedProx, one ClientApp per simulated hospital.

Each client reads only its own site of the saved split and answers with the
model's parameters and counts: the number of training images, the mean
training loss, the privacy spent (DP runs), and histograms of the global
model's probabilities on its validation cases (per class, ``HISTOGRAM_BINS``
bins). The server sums the histograms into a validation AUC per round (and per
site) and Youden's threshold for the bundle, so no image, label list or
per-case prediction leaves a client.

The server screens every reply before aggregating it: a reply carrying any
record other than the model's own arrays (same names, same shapes) and the
allowed counts is refused, and every reply's contents (names, shapes, sizes;
never values) go to ``OUT/messages.jsonl`` so a hospital's IT can audit what
left. A site that fails or refuses is logged with its reason and the round goes
on if at least ``min_sites`` answered; otherwise the federation stops with a
:class:`FederationError` naming each site's reason.

The model kept is the global model of the round with the best pooled
validation AUC (selection on validation, never on test); it becomes an ordinary
medlens bundle recording the federation's settings, each round and each site.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens import __version__
from medlens.bundle.manifest import save_bundle
from medlens.classify.train import make_preprocessing
from medlens.config import TrainConfig
from medlens.datasets import load_medmnist
from medlens.errors import ConfigError, FederationError
from medlens.federated.local import auc_and_threshold, load_site, probability_histograms, train_locally
from medlens.federated.privacy import PrivacyBudget, epsilon_spent, noise_multiplier
from medlens.federated.sites import load_site_split
from medlens.models.networks import NetworkSpec, build_network

log = logging.getLogger(__name__)
STRATEGIES = ("fedavg", "fedprox")
STATUS = (
    "server.json"  # written by the ServerApp: {"status": "done", "bundle": ...} or {"status": "failed", "error": ...}
)
TRAIN_METRICS = {"train_loss", "num-examples", "site", "epsilon", "noise"}
EVALUATE_METRICS = {"hist-neg", "hist-pos", "num-examples", "site"}


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
    dp_epsilon: float | None = None  # DP-SGD budget per site for the whole federation; None: no DP
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    min_sites: int = 2  # a round completes when at least this many sites answered
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"federate.strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.rounds < 1 or self.local_epochs < 1:
            raise ConfigError("federate.rounds / local_epochs: must be at least 1")
        if self.min_sites < 1:
            raise ConfigError(f"federate.min_sites: at least 1, got {self.min_sites}")
        if self.dp_epsilon is not None and self.strategy == "fedprox":
            raise ConfigError(
                "federate: DP-SGD clips per-sample gradients of the loss and FedProx's proximal term is not "
                "per-sample; use strategy=fedavg with dp_epsilon"
            )
        if self.dp_epsilon is not None:
            self.budget  # validates epsilon / delta / clipping

    @property
    def budget(self) -> Any:
        return None if self.dp_epsilon is None else PrivacyBudget(self.dp_epsilon, self.dp_delta, self.dp_max_grad_norm)

    @property
    def norm(self) -> str:
        return "group" if self.dp_epsilon is not None else ""

    def model_fingerprint(self) -> dict[str, Any]:
        """What must match between server and every client for the weights to mean the same thing."""
        return {"dataset": self.dataset, "size": self.size, "model": self.model, "width": self.width, "norm": self.norm}


def run_federation(cfg: FederateConfig, split_path: Path, out_dir: Path, data_dir: str | None = None) -> Path:
    """Simulate the federation in this process (Flower's simulation engine) and write ``OUT/model``."""
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    # Ray otherwise raises a FutureWarning about GPU visibility on every CPU-only actor; this keeps its present behaviour
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    logging.getLogger("flwr").propagate = False  # Flower prints its own log; ours would repeat every line
    split = load_site_split(split_path)
    split.check_usable()
    n_sites = split.config.n_sites
    if cfg.min_sites > n_sites:
        raise ConfigError(f"federate.min_sites: {cfg.min_sites} is more than the split's {n_sites} sites")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STATUS).unlink(missing_ok=True)
    client = ClientApp()
    client.train()(_client_train(cfg, str(split_path), data_dir))
    client.evaluate()(_client_evaluate(cfg, str(split_path), data_dir))
    server = ServerApp()
    server.main()(server_main(cfg, Path(split_path), out_dir, data_dir))
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=n_sites,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"logging_level": logging.WARNING}},
    )
    return read_status(out_dir)


def read_status(out_dir: Path) -> Path:
    """The bundle the server wrote, or the server's reason for stopping as a FederationError."""
    try:
        status = json.loads((out_dir / STATUS).read_text())
    except (OSError, json.JSONDecodeError):
        raise FederationError(
            f"the federation ended without a global model ({out_dir / STATUS} missing); see Flower's log above"
        ) from None
    if status["status"] != "done":
        raise FederationError(status["error"])
    return Path(status["bundle"])


def build_model(cfg: FederateConfig, data: Any) -> Any:
    import torch

    torch.manual_seed(cfg.seed)
    return build_network(
        NetworkSpec(
            cfg.model,
            data.spatial_dims,
            data.n_channels,
            len(data.label_names),
            data.image_shape,
            width=cfg.width,
            norm=cfg.norm,
        )
    )


def _load(cfg: FederateConfig, data_dir: str | None) -> Any:
    return load_medmnist(cfg.dataset, size=cfg.size, data_dir=data_dir)


def check_server_config(cfg: FederateConfig, config: Any, site: int) -> None:
    """Refuse a global model built with other settings than this client's (the weights would not mean the same)."""
    theirs = json.loads(str(config.get("model", "{}")))
    ours = cfg.model_fingerprint()
    differ = {k: (theirs.get(k), v) for k, v in ours.items() if theirs.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}: server {a!r}, this site {b!r}" for k, (a, b) in differ.items())
        raise ConfigError(
            f"site {site}: the server's model settings differ from this site's ({detail}); start every site with "
            "the server's federation settings"
        )


def _site_and_model(
    cfg: FederateConfig, split_path: str, data_dir: str | None, msg: Any, context: Any
) -> tuple[Any, Any]:
    """This client's own site (its data never leaves this function's process) and the global model it was sent."""

    site = int(context.node_config["partition-id"])
    check_server_config(cfg, msg.content["config"], site)
    data = _load(cfg, data_dir)
    local = load_site(data, load_site_split(split_path), site)
    model = build_model(cfg, data)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return local, model


def _client_train(cfg: FederateConfig, split_path: str, data_dir: str | None) -> Any:
    def train(msg: Any, context: Any) -> Any:
        from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

        local, model = _site_and_model(cfg, split_path, data_dir, msg, context)
        site, n = local.site, len(local.y_train)
        mu = float(msg.content["config"].get("proximal-mu", 0.0))
        metrics: dict[str, Any] = {"num-examples": n, "site": site}
        noise = None
        if cfg.budget is not None:
            sigma = noise_multiplier(cfg.budget, n, cfg.batch_size, cfg.rounds * cfg.local_epochs)
            noise = (sigma, cfg.dp_max_grad_norm)
            done = int(msg.content["config"]["server-round"]) * cfg.local_epochs
            metrics.update(noise=sigma, epsilon=epsilon_spent(sigma, n, cfg.batch_size, done, cfg.dp_delta))
        try:
            metrics["train_loss"] = train_locally(
                model,
                local,
                cfg.local_epochs,
                cfg.lr,
                cfg.batch_size,
                mu,
                seed=cfg.seed + 1000 * site + int(msg.content["config"]["server-round"]),
                dp_noise=noise,
            )
        except RuntimeError as exc:
            if noise is None:
                raise
            raise ConfigError(
                f"site {site}: model {cfg.model} cannot train under DP-SGD with Opacus ({str(exc)[:120]}); "
                "use model=cnn or densenet121"
            ) from exc
        reply = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
        return Message(content=reply, reply_to=msg)

    return train


def _client_evaluate(cfg: FederateConfig, split_path: str, data_dir: str | None) -> Any:
    def evaluate(msg: Any, context: Any) -> Any:
        from flwr.app import Message, MetricRecord, RecordDict

        local, model = _site_and_model(cfg, split_path, data_dir, msg, context)
        negatives, positives = probability_histograms(model, local.x_val, local.y_val)
        metrics = MetricRecord(
            {"hist-neg": negatives, "hist-pos": positives, "num-examples": len(local.y_val), "site": local.site}
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return evaluate


def screen_reply(content: Any, stage: str, expected: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """What a reply carries (names, shapes, sizes), or ValueError if it carries anything but parameters and counts."""
    allowed = {"train": {"arrays", "metrics"}, "evaluate": {"metrics"}}[stage]
    extra = set(content.keys()) - allowed
    if extra:
        raise ValueError(f"sent records {sorted(extra)}; a site may send only {sorted(allowed)}")
    summary: dict[str, Any] = {}
    if stage == "train":
        arrays = content["arrays"]
        shapes = {k: tuple(a.shape) for k, a in arrays.items()}
        if shapes != expected:
            unknown = sorted(set(shapes) - set(expected)) or sorted(k for k in shapes if shapes[k] != expected.get(k))
            raise ValueError(f"sent arrays that are not the model's parameters ({unknown[:3]})")
        summary["arrays"] = {"count": len(shapes), "bytes": int(sum(len(a.data) for a in arrays.values()))}
    metrics = content["metrics"]
    names = TRAIN_METRICS if stage == "train" else EVALUATE_METRICS
    if set(metrics.keys()) - names:
        raise ValueError(f"sent metrics {sorted(set(metrics.keys()) - names)}; allowed: {sorted(names)}")
    for key, value in metrics.items():
        if isinstance(value, list) and (
            key not in {"hist-neg", "hist-pos"} or len(value) > 100 or any(int(v) != v or v < 0 for v in value)
        ):
            raise ValueError(f"sent a list in metric {key!r} that is not a histogram of counts")
    summary["metrics"] = {
        k: (f"{len(v)} counts" if isinstance(v, list) else type(v).__name__) for k, v in sorted(metrics.items())
    }
    return summary


def _audited(
    base: type, cfg: FederateConfig, n_sites: int, expected: dict[str, tuple[int, ...]], audit_path: Path
) -> type:
    """``base`` (FedAvg or FedProx) that screens and logs every reply and keeps the best round's model."""

    class Audited(base):  # type: ignore[misc, valid-type]
        best: tuple[float, int, Any] = (-1.0, 0, None)
        latest: Any = None
        per_site: dict[int, dict[str, Any]] = {}

        def _screen(self, server_round: int, stage: str, replies: Any) -> list[Any]:
            kept, failures = [], []
            with audit_path.open("a") as audit:
                for msg in replies:
                    row: dict[str, Any] = {"round": server_round, "stage": stage, "node": int(msg.metadata.src_node_id)}
                    if msg.has_error():
                        row["error"] = _reason(msg.error.reason)
                    else:
                        try:
                            row.update(
                                screen_reply(msg.content, stage, expected), site=int(msg.content["metrics"]["site"])
                            )
                            kept.append(msg)
                        except (ValueError, KeyError) as exc:
                            row["refused"] = str(exc)
                    if "site" not in row:
                        failures.append(row.get("error") or f"node {row['node']}: {row['refused']}")
                    audit.write(json.dumps(row) + "\n")
            for reason in failures:
                log.warning("round %d %s: a site did not count: %s", server_round, stage, reason)
            if len(kept) < cfg.min_sites:
                raise FederationError(
                    f"round {server_round} ({stage}): {len(kept)} of {n_sites} sites answered, "
                    f"{cfg.min_sites} needed (federate.min_sites); failures: " + " | ".join(failures)
                )
            return kept

        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            arrays, metrics = super().aggregate_train(server_round, self._screen(server_round, "train", replies))
            self.latest = arrays
            return arrays, metrics

        def aggregate_evaluate(self, server_round: int, replies: Any) -> Any:
            kept = self._screen(server_round, "evaluate", replies)
            metrics = super().aggregate_evaluate(server_round, kept)
            self.per_site[server_round] = {
                int(m.content["metrics"]["site"]): _site_auc(m.content["metrics"]) for m in kept
            }
            if metrics is not None and np.nan_to_num(metrics["val_auc"], nan=-1.0) > self.best[0]:
                self.best = (float(metrics["val_auc"]), server_round, self.latest)
            return metrics

    return Audited


def _reason(text: str) -> str:
    """The client's own message out of Flower's wrapped traceback (the site's error, not the transport's)."""
    found = re.search(r"Message: (.*?)'?>?\s*$", text, re.S)
    return (found.group(1) if found else text.strip().splitlines()[-1]).strip()[:500]


def _site_auc(metrics: Any) -> dict[str, Any]:
    auc, _ = auc_and_threshold(np.array(metrics["hist-neg"]), np.array(metrics["hist-pos"]))
    return {"val_auc": None if np.isnan(auc) else auc, "n_val": int(metrics["num-examples"])}


def _sum_histograms(replies: list[Any], weight_key: str) -> Any:
    from flwr.app import MetricRecord

    negatives = np.sum([np.array(r["metrics"]["hist-neg"]) for r in replies], axis=0)
    positives = np.sum([np.array(r["metrics"]["hist-pos"]) for r in replies], axis=0)
    auc, threshold = auc_and_threshold(negatives, positives)
    return MetricRecord({"val_auc": auc, "threshold": threshold, "sites": len(replies)})


def _train_metrics(replies: list[Any], weight_key: str) -> Any:
    from flwr.app import MetricRecord

    counts = np.array([r["metrics"]["num-examples"] for r in replies], dtype=float)
    losses = np.array([r["metrics"]["train_loss"] for r in replies], dtype=float)
    metrics = {"train_loss": float((counts * losses).sum() / counts.sum()), "sites": len(replies)}
    if all("epsilon" in r["metrics"] for r in replies):
        metrics["epsilon"] = max(
            float(r["metrics"]["epsilon"]) for r in replies
        )  # the guarantee that holds at every site
    return MetricRecord(metrics)


def server_main(cfg: FederateConfig, split_path: Path, out_dir: Path, data_dir: str | None) -> Any:
    """The ServerApp's main: run the strategy, then write the bundle and ``OUT/server.json`` itself (in a deployment
    it runs in a process of its own, so nothing can be handed back in memory)."""

    def main(grid: Any, context: Any) -> None:
        from flwr.app import ArrayRecord, ConfigRecord
        from flwr.serverapp.strategy import FedAvg, FedProx

        started = time.perf_counter()
        split = load_site_split(split_path)
        n_sites = split.config.n_sites
        model = build_model(cfg, _load(cfg, data_dir))
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        base = FedProx if cfg.strategy == "fedprox" else FedAvg
        options = dict(
            min_train_nodes=n_sites,
            min_evaluate_nodes=n_sites,
            min_available_nodes=n_sites,
            evaluate_metrics_aggr_fn=_sum_histograms,
            train_metrics_aggr_fn=_train_metrics,
        )
        if cfg.strategy == "fedprox":
            options["proximal_mu"] = cfg.proximal_mu
        strategy = _audited(base, cfg, n_sites, expected, out_dir / "messages.jsonl")(**options)
        settings = ConfigRecord({"model": json.dumps(cfg.model_fingerprint())})
        try:
            result = strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(model.state_dict()),
                num_rounds=cfg.rounds,
                train_config=settings,
                evaluate_config=settings,
            )
        except FederationError as exc:
            (out_dir / STATUS).write_text(json.dumps({"status": "failed", "error": str(exc)}))
            return
        best_auc, best_round, best_arrays = strategy.best
        outcome = {
            "state": (best_arrays or result.arrays).to_torch_state_dict(),
            "best_round": best_round,
            "history": [
                _round_row(r, result, strategy.per_site.get(r, {})) for r in sorted(result.evaluate_metrics_clientapp)
            ],
        }
        bundle = _save(cfg, split, outcome, out_dir, time.perf_counter() - started, data_dir)
        (out_dir / STATUS).write_text(json.dumps({"status": "done", "bundle": str(bundle)}))

    return main


def _round_row(r: int, result: Any, per_site: dict[int, Any]) -> dict[str, Any]:
    train, evaluate = result.train_metrics_clientapp.get(r, {}), result.evaluate_metrics_clientapp[r]
    row = {
        "round": r,
        "train_loss": float(train.get("train_loss", float("nan"))),
        "val_auc": float(evaluate["val_auc"]),
        "threshold": float(evaluate["threshold"]),
        "sites_trained": int(train.get("sites", 0)),
        "sites": {str(k): v for k, v in sorted(per_site.items())},
    }
    if "epsilon" in train:
        row["epsilon"] = float(train["epsilon"])
    return row


def _save(
    cfg: FederateConfig, split: Any, outcome: dict[str, Any], out_dir: Path, seconds: float, data_dir: str | None
) -> Path:
    data = _load(cfg, data_dir)
    model = build_model(cfg, data)
    model.load_state_dict(outcome["state"])
    history = outcome["history"]
    chosen = (
        next(row for row in history if row["round"] == outcome["best_round"]) if outcome["best_round"] else history[-1]
    )
    prep = make_preprocessing(TrainConfig(), data)
    spec = {
        "name": cfg.model,
        "spatial_dims": data.spatial_dims,
        "in_channels": data.n_channels,
        "num_classes": len(data.label_names),
        "image_shape": list(data.image_shape),
        "width": cfg.width,
        "dropout": 0.0,
        "norm": cfg.norm,
    }
    privacy = None
    if cfg.dp_epsilon is not None:
        privacy = {
            "mechanism": "DP-SGD (Opacus), record-level, per site",
            "epsilon_budget": cfg.dp_epsilon,
            "delta": cfg.dp_delta,
            "epsilon_spent": history[-1].get("epsilon"),
            "max_grad_norm": cfg.dp_max_grad_norm,
            "accountant": "RDP",
            "secure_rng": False,
        }
    manifest = {
        "medlens_version": __version__,
        "task": data.task,
        "label_names": list(data.label_names),
        "thresholds": [chosen["threshold"]],
        "threshold_method": "Youden's J on the sites' pooled validation histograms",
        "network": spec,
        "preprocessing": prep.to_dict(),
        "expected_input": {
            "modality": data.modality,
            "channels": data.n_channels,
            "spatial_shape": list(data.image_shape),
            "intensity_range": list(data.intensity_range),
            "resized_by_pipeline": False,
        },
        "config": {"dataset": cfg.dataset, "size": cfg.size, "model": cfg.model, "width": cfg.width},
        "data": {"dataset": data.name, **data.source},
        "federation": {
            **asdict(cfg),
            "sites": split.summary,
            "split": asdict(split.config),
            "seconds": round(seconds, 1),
            "selected_round": chosen["round"],
            "history": history,
            "privacy": privacy,
        },
        "metrics": {
            "validation": {
                "auc": chosen["val_auc"],
                "source": "federated: pooled site histograms",
                "sites": chosen["sites"],
            }
        },
    }
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    return save_bundle(out_dir / "model", model, manifest)
