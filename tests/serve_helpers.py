"""Starting a real `medlens serve` process for the service tests (not a test module)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

PRETRAINED = Path(__file__).parents[1] / "src" / "medlens" / "pretrained"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answering(
    url: str, process: subprocess.Popen[bytes], what: str, seconds: float = 60
) -> subprocess.Popen[bytes]:
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


def start_server(
    models: Path, tokens: Path, storage: Path, port: int, stderr: Any = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """`medlens serve` on 127.0.0.1:port, returned once /health answers (killed if it does not within 60 s)."""
    command = [
        sys.executable,
        "-m",
        "medlens",
        "serve",
        "--models",
        str(models),
        "--tokens",
        str(tokens),
        "--storage",
        str(storage),
        "--port",
        str(port),
    ]
    process = subprocess.Popen(
        command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL, stderr=stderr
    )
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


def make_service(
    tmp_path: Path, models: tuple[str, ...] = ("pneumonia-28px", "hippocampus"), **config: Any
) -> dict[str, Any]:
    """A ServeConfig over the shipped bundles (symlinked) with one token per role: {"config", "headers", "tokens"}.

    In-process services run jobs in this process (``isolate=False``: no job process to start for each test);
    the tests of the job process itself, and every test of a real `medlens serve`, use the default.
    """
    from medlens.serve.app import ServeConfig
    from medlens.serve.auth import add_token
    from medlens.serve.worker import WorkerOptions

    folder = tmp_path / "models"
    folder.mkdir()
    for name in models:
        (folder / name).symlink_to(PRETRAINED / name)
    tokens = tmp_path / "tokens.json"
    users = {role: add_token(tokens, f"{role}-user", role) for role in ("admin", "radiologist", "viewer", "sender")}
    options = {"settle_seconds": 0, "max_upload_mb": 2, "worker": WorkerOptions(isolate=False), **config}
    return {
        "config": ServeConfig(models=folder, storage=tmp_path / "storage", tokens=tokens, **options),
        "headers": {role: {"Authorization": f"Bearer {t}"} for role, t in users.items()},
        "tokens": users,
    }


def wait_client_idle(client: Any, seconds: float = 120) -> dict[str, int]:
    """Job counts of an in-process service (a TestClient) once nothing is queued or running."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        counts = client.app.state.store.counts()
        if counts["queued"] == 0 and counts["running"] == 0:
            return counts
        time.sleep(0.3)
    raise AssertionError(f"jobs did not finish in {seconds} s: {counts}")


def deflate_bomb(cr: Path, inflated_bytes: int) -> bytes:
    """The radiograph's header as a deflated dataset whose pixel data inflates to ``inflated_bytes`` of zeros."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(cr)
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta, body = DicomBytesIO(), DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    body.is_little_endian, body.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    write_dataset(body, ds)
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [squeeze.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated_bytes))]
    zeros = bytes(16 << 20)
    for _ in range(inflated_bytes // len(zeros)):
        parts.append(squeeze.compress(zeros))
    parts.append(squeeze.compress(bytes(inflated_bytes % len(zeros))) + squeeze.flush())
    return b"\0" * 128 + b"DICM" + meta.getvalue() + b"".join(parts)


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory (VmHWM) in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024
