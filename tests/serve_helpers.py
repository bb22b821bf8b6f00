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


def start_server(models: Path, tokens: Path, storage: Path, port: int) -> subprocess.Popen[bytes]:
    """`medlens serve` on 127.0.0.1:port, returned once /health answers (killed if it does not within 60 s)."""
    import httpx

    command = [sys.executable, "-m", "medlens", "serve", "--models", str(models), "--tokens", str(tokens),
               "--storage", str(storage), "--port", str(port)]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("medlens serve did not start within 60 s")


def wait_idle(base: str, seconds: float = 180) -> dict[str, int]:
    """Job counts once nothing is queued or running."""
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        counts = httpx.get(f"{base}/health", timeout=5).json()["jobs"]
        if counts["queued"] == 0 and counts["running"] == 0:
            return counts
        time.sleep(0.3)
    raise AssertionError(f"jobs did not finish in {seconds} s: {counts}")
