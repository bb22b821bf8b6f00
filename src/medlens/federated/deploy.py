"""The federation as separate processes on this machine: Flower's SuperLink, one SuperNode per hospital, ``flwr run``.

This is Flower's deployment engine, the same one hospitals would run across
machines (see the README): the SuperLink is the coordinator, each SuperNode a
hospital that only connects out to it, and ``flwr run`` submits the medlens
Flower App (``flower_app/pyproject.toml``). Here every process listens on
127.0.0.1 only, on free ports, with Flower's home folder (its connection
settings) inside ``OUT/flower`` so nothing outside the run is touched. Each
process's log goes to ``OUT/logs``; all of them are stopped when the run ends,
whatever happened.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import tomli_w

from medlens.errors import ConfigError, FederationError
from medlens.federated.flower import FederateConfig, read_status
from medlens.federated.sites import load_site_split

log = logging.getLogger(__name__)
APP_DIR = Path(__file__).parent / "flower_app"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise ConfigError(f"{name} not found; it comes with Flower: pip install 'flwr[simulation]>=1.41,<1.42'")
    return found


def _wait_for_port(port: int, process: subprocess.Popen, what: str, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FederationError(f"{what} exited with code {process.returncode}; its log: {log_path}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise FederationError(f"{what} did not open port {port} within {timeout:.0f} s; its log: {log_path}")


def run_deployment(
    cfg: FederateConfig, split_path: Path, out_dir: Path, data_dir: str | None = None, timeout_s: float = 3600.0
) -> Path:
    """Run the federation as a SuperLink, N SuperNodes and ``flwr run`` on 127.0.0.1; returns the bundle's path."""

    split = load_site_split(split_path)
    split.check_usable()
    out_dir = out_dir.resolve()
    # Flower's processes run in OUT with their own working folders: every path they get must be absolute
    data_dir = data_dir or os.environ.get("MEDLENS_DATA_DIR")
    data_dir = str(Path(data_dir).resolve()) if data_dir else None
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (out_dir / "server.json").unlink(missing_ok=True)
    home = out_dir / "flower"
    home.mkdir(exist_ok=True)
    port = _free_port()  # Flower 1.41 serves the SuperLink's Fleet, Control and Runtime APIs on one HTTP port
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "medlens"\n\n[superlink.medlens]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {**os.environ, "FLWR_HOME": str(home), "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    if data_dir:
        env["MEDLENS_DATA_DIR"] = str(data_dir)
    processes: list[subprocess.Popen] = []

    def start(args: list[str], name: str) -> tuple[subprocess.Popen, Path]:
        path = logs / f"{name}.log"
        handle = path.open("w")
        process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=out_dir)
        handle.close()
        processes.append(process)
        return process, path

    try:
        link, link_log = start(
            [
                _tool("flower-superlink"),
                "--insecure",
                "--database",
                str(home / "state.db"),
                "--disable-runtime-dependency-installation",  # medlens is installed; never pip/uv at run time
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            "superlink",
        )
        _wait_for_port(port, link, "flower-superlink", link_log)
        for site in range(split.config.n_sites):
            node_config = f"partition-id={site} split='{Path(split_path).resolve()}'"  # TOML literal strings
            if data_dir:
                node_config += f" data-dir='{data_dir}'"
            start(
                [
                    _tool("flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--node-config",
                    node_config,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(_free_port()),
                ],
                f"site-{site}",
            )
        run_config = {
            "federation": json.dumps(asdict(cfg)),
            "split": str(Path(split_path).resolve()),
            "data-dir": data_dir or "",
            "out": str(out_dir),
        }
        (home / "run-config.toml").write_text(tomli_w.dumps(run_config))
        submit = subprocess.run(
            [_tool("flwr"), "run", str(APP_DIR), "medlens", "--run-config", str(home / "run-config.toml"), "--stream"],
            env=env,
            cwd=out_dir,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        (logs / "flwr-run.log").write_text(submit.stdout + submit.stderr)
        if not (out_dir / "server.json").exists():
            errors = [
                line for line in (submit.stdout + submit.stderr).splitlines() if "ERROR" in line or "Error" in line
            ]
            raise FederationError(
                f"the federation ended without a global model (flwr run exit code {submit.returncode}): "
                + " | ".join(errors[-3:])
                + f"; logs in {logs}"
            )
        return read_status(out_dir)
    except subprocess.TimeoutExpired as exc:
        raise FederationError(f"the federation did not finish within {timeout_s:.0f} s; logs in {logs}") from exc
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
