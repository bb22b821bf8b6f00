"""Flower deployment components (``medlens.federated.app:server_app`` / ``:client_app``).

``flwr run`` loads these by name from ``flower_app/pyproject.toml``, in processes
that Flower's SuperLink (the coordinator) and SuperNodes (one per hospital)
start. Everything comes from Flower's configuration: the run config
(``federation``: the FederateConfig as JSON, ``split``, ``data-dir``, ``out``)
set by ``flwr run --run-config``, and each SuperNode's node config
(``partition-id``, and optionally its own ``split`` and ``data-dir``: a hospital
points at its own folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from medlens.federated.flower import FederateConfig, _client_evaluate, _client_train, server_main

server_app = ServerApp()
client_app = ClientApp()


def _settings(context: Any) -> tuple[FederateConfig, str, str | None]:
    run, node = context.run_config, getattr(context, "node_config", {}) or {}
    cfg = FederateConfig(**json.loads(str(run["federation"])))
    split = str(node.get("split") or run["split"])
    data_dir = str(node.get("data-dir") or run.get("data-dir") or "") or None
    return cfg, split, data_dir


@server_app.main()
def main(grid: Any, context: Any) -> None:
    cfg, split, data_dir = _settings(context)
    server_main(cfg, Path(split), Path(str(context.run_config["out"])), data_dir)(grid, context)


@client_app.train()
def train(msg: Any, context: Any) -> Any:
    cfg, split, data_dir = _settings(context)
    return _client_train(cfg, split, data_dir)(msg, context)


@client_app.evaluate()
def evaluate(msg: Any, context: Any) -> Any:
    cfg, split, data_dir = _settings(context)
    return _client_evaluate(cfg, split, data_dir)(msg, context)
