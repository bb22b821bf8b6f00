"""Starting a real `medlens serve` process for the service tests (not a test module)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answering(url: str, process: subprocess.Popen[bytes], what: str, seconds: float = 60) -> subprocess.Popen[bytes]:
    """``process`` once ``url`` answers 200; killed, with an error naming ``what``, if it does not in time."""
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"{what} did not start within {seconds:.0f} s")


def start_server(models: Path, tokens: Path, storage: Path, port: int) -> subprocess.Popen[bytes]:
    """`medlens serve` on 127.0.0.1:port, returned once /health answers (killed if it does not within 60 s)."""
    command = [sys.executable, "-m", "medlens", "serve", "--models", str(models), "--tokens", str(tokens),
               "--storage", str(storage), "--port", str(port)]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wait_until_answering(f"http://127.0.0.1:{port}/health", process, "medlens serve")


def wait_idle(base: str, token: str, seconds: float = 180) -> dict[str, int]:
    """Job counts once nothing is queued or running (``token``: any role that may view)."""
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        counts = httpx.get(f"{base}/api/status", timeout=5, headers={"Authorization": f"Bearer {token}"}).json()["jobs"]
        if counts["queued"] == 0 and counts["running"] == 0:
            return counts
        time.sleep(0.3)
    raise AssertionError(f"jobs did not finish in {seconds} s: {counts}")
