"""The triage service end to end on real radiographs: throughput, latency, load, and a forced restart.

Starts ``medlens serve`` on 127.0.0.1 with the shipped pneumonia model and
sends real chest radiographs (the Kermany test split, each wrapped as a
one-image CR study) by STOW-RS, and held-out MSD hippocampus cases as DICOM
MR series for the segmentation model. Measures, from the service's own timestamps
(study received -> job finished: inference, DICOM SR, Grad-CAM Secondary
Capture and FHIR report written):

1. capacity: a burst of studies, studies per minute until all are done;
2. paced load at 1x and 2x that capacity: latency p50/p95, queue, errors;
3. restart: ``kill -9`` mid-run, start again, count studies lost or done twice (three rounds);
4. concurrent clients: 8 clients x 300 requests on the API (worklist, jobs, health), errors and p99;
5. a deflate bomb (1.5 GiB of pixel data in about 1.5 MB) uploaded: the service's peak memory
   increase and ``/health`` latency while it is checked.

Every loop is bounded (a fixed number of studies, deadlines). Writes
``benchmarks/results/service.json``.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/service.py
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the deflate bomb is built by the tests' helper

from medlens.serve.auth import add_token
from medlens.serve.samples import stow_body, write_cr_study

RESULTS = Path(__file__).parent / "results" / "service.json"
PRETRAINED = Path(__file__).parents[1] / "src" / "medlens" / "pretrained"
BURST, PACED, RESTART, MR_CASES = 40, 30, 30, 10
ROUNDS, CLIENTS, REQUESTS = 3, 8, 300


class Service:
    def __init__(self, work: Path) -> None:
        self.work, self.models, self.tokens = work, work / "models", work / "tokens.json"
        self.models.mkdir()
        for name in ("pneumonia-28px", "hippocampus"):
            (self.models / name).symlink_to(PRETRAINED / name)
        self.sender = {"Authorization": f"Bearer {add_token(self.tokens, 'bench-pacs', 'sender')}"}
        self.viewer = {"Authorization": f"Bearer {add_token(self.tokens, 'bench-viewer', 'viewer')}"}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.base = f"http://127.0.0.1:{s.getsockname()[1]}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, storage: str) -> None:
        port = self.base.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "medlens",
                "serve",
                "--models",
                str(self.models),
                "--tokens",
                str(self.tokens),
                "--storage",
                str(self.work / storage),
                "--port",
                port,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise SystemExit("medlens serve did not start in 60 s")

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def send(self, files: list[Path]) -> int:
        body, content_type = stow_body(files)
        return httpx.post(
            f"{self.base}/dicomweb/studies",
            content=body,
            timeout=120,
            headers={**self.sender, "Content-Type": content_type},
        ).status_code

    def counts(self) -> dict[str, int]:
        return httpx.get(f"{self.base}/api/status", timeout=10, headers=self.viewer).json()["jobs"]

    def wait_idle(self, seconds: float) -> bool:
        deadline = time.time() + seconds
        while time.time() < deadline:
            counts = self.counts()
            if counts["queued"] == 0 and counts["running"] == 0:
                return True
            time.sleep(0.25)
        return False

    def worklist(self) -> list[dict]:
        return httpx.get(f"{self.base}/api/worklist", headers=self.viewer, timeout=30).json()


def make_studies(data_dir: Path, out: Path, n: int) -> list[Path]:
    root = data_dir / "cxr_kermany_224"
    with (root / "kermany_subset_labels.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    rng = np.random.default_rng(0)
    picked = [rows[i] for i in rng.choice(len(rows), n, replace=False)]
    return [
        write_cr_study(root / r["image_file"], out / f"study{i:03d}.dcm", f"BENCH{i:03d}") for i, r in enumerate(picked)
    ]


def make_mr_studies(data_dir: Path, out: Path, n: int) -> list[list[Path]]:
    """Held-out MSD hippocampus cases (the shipped bundle's test split) as DICOM MR series."""
    from medlens.serve.samples import write_mr_series

    test_ids = json.loads((PRETRAINED / "hippocampus" / "bundle.json").read_text())["split"]["test"][:n]
    root = data_dir / "msd_hippocampus" / "imagesTr"
    return [write_mr_series(root / f"{case}.nii.gz", out / case, f"MR{i:03d}") for i, case in enumerate(test_ids)]


def latencies(jobs: list[dict]) -> dict[str, float]:
    seconds = np.array([j["finished_at"] - j["received_at"] for j in jobs])
    return {
        "n": len(jobs),
        "p50_s": float(np.percentile(seconds, 50)),
        "p95_s": float(np.percentile(seconds, 95)),
        "max_s": float(seconds.max()),
    }


def paced(service: Service, files: list[Path], rate_per_min: float) -> dict:
    """One study at a time at a fixed rate; returns latency, errors and the deepest queue seen."""
    interval, started, deepest, statuses = 60.0 / rate_per_min, time.time(), 0, []
    for i, f in enumerate(files):
        time.sleep(max(0.0, started + i * interval - time.time()))
        statuses.append(service.send([f]))
        deepest = max(deepest, service.counts()["queued"])
    finished = service.wait_idle(300)
    return {
        "rate_per_min": rate_per_min,
        "upload_errors": sum(s != 200 for s in statuses),
        "deepest_queue": deepest,
        "drained": finished,
    }


def kill_and_restart(service: Service, part: list[Path], round_: int) -> dict:
    """Send a batch, ``kill -9`` once a few are done, restart: every study finished exactly once?"""
    service.start(f"restart{round_}")
    assert service.send(part) == 200
    deadline = time.time() + 120
    while time.time() < deadline and service.counts()["done"] + service.counts()["referred"] < 5:
        time.sleep(0.1)
    before = service.counts()
    service.kill()
    service.start(f"restart{round_}")
    service.wait_idle(300)
    jobs = [j for j in service.worklist() if j["model"] == "pneumonia"]
    service.kill()
    finished = [j for j in jobs if j["state"] in ("done", "referred")]
    return {
        "round": round_,
        "studies_sent": len(part),
        "at_kill": before,
        "jobs_after_restart": len(jobs),
        "finished": len(finished),
        "lost": len(part) - len({j["study_uid"] for j in finished}),
        "redone_after_kill": sum(j["attempts"] > 1 for j in jobs),
        "duplicates": len(jobs) - len({j["study_uid"] for j in jobs}),
    }


def concurrent_clients(service: Service, clients: int, requests: int) -> dict:
    """``clients`` threads, each ``requests`` calls cycling through the worklist, a job, its FHIR report and /health."""
    from concurrent.futures import ThreadPoolExecutor

    job_ids = [j["id"] for j in service.worklist() if j["state"] in ("done", "referred")]
    paths = ["/api/worklist", f"/api/jobs/{job_ids[0]}", f"/fhir/DiagnosticReport/medlens-{job_ids[-1]}", "/health"]

    def client(k: int) -> tuple[list[float], int]:
        times, errors = [], 0
        with httpx.Client(base_url=service.base, headers=service.viewer, timeout=30) as http:
            for i in range(requests):
                start = time.perf_counter()
                errors += http.get(paths[(i + k) % len(paths)]).status_code != 200
                times.append(time.perf_counter() - start)
        return times, errors

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(client, range(clients)))
    seconds = np.concatenate([np.array(t) for t, _ in answers])
    return {
        "clients": clients,
        "requests_each": requests,
        "errors": sum(e for _, e in answers),
        "p50_s": float(np.percentile(seconds, 50)),
        "p99_s": float(np.percentile(seconds, 99)),
        "max_s": float(seconds.max()),
    }


def deflate_bomb(service: Service, cr: Path) -> dict:
    """A deflated CR whose pixel data inflates to 1.5 GiB: peak memory of the service and /health while it is checked."""
    import threading

    from tests.serve_helpers import deflate_bomb, peak_rss_mb

    inflated = 1536 << 20
    bomb = deflate_bomb(cr, inflated)
    body, content_type = (
        b"--b\r\nContent-Type: application/dicom\r\n\r\n" + bomb + b"\r\n--b--\r\n",
        "multipart/related; boundary=b",
    )
    pid = service.process.pid
    before, answer, latencies = peak_rss_mb(pid), {}, []

    def upload() -> None:
        start = time.perf_counter()
        answer["status"] = httpx.post(
            f"{service.base}/dicomweb/studies",
            content=body,
            timeout=120,
            headers={**service.sender, "Content-Type": content_type},
        ).status_code
        answer["seconds"] = time.perf_counter() - start

    sender = threading.Thread(target=upload)
    sender.start()
    while sender.is_alive() or not latencies:
        start = time.perf_counter()
        httpx.get(f"{service.base}/health", timeout=10)
        latencies.append(time.perf_counter() - start)
        time.sleep(0.02)
    sender.join()
    return {
        "upload_bytes": len(bomb),
        "inflated_bytes": inflated,
        "status": answer["status"],
        "upload_seconds": answer["seconds"],
        "peak_memory_increase_mb": peak_rss_mb(pid) - before,
        "health_checks": len(latencies),
        "health_max_s": max(latencies),
    }


def main() -> None:
    data_dir = Path(os.environ.get("MEDLENS_DATA_DIR", "../shared/data"))
    results: dict = {
        "machine": f"{os.cpu_count()}-core CPU; medlens serve (uvicorn, one job runner thread), SQLite",
        "data": "Kermany chest radiographs (test split, 224 px) wrapped as one-image CR studies; shipped pneumonia model; "
        "each job: inference, DICOM SR, Grad-CAM Secondary Capture, FHIR DiagnosticReport",
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = make_studies(data_dir, work / "studies", BURST + 2 * PACED + ROUNDS * RESTART)
        service = Service(work)
        service.start("burst")
        started = time.time()
        assert service.send(files[:BURST]) == 200
        service.wait_idle(600)
        burst_seconds = time.time() - started
        jobs = [j for j in service.worklist() if j["model"] == "pneumonia"]
        capacity = 60 * BURST / burst_seconds
        results["capacity"] = {
            "studies": BURST,
            "seconds": burst_seconds,
            "studies_per_min": capacity,
            "failed": sum(j["state"] == "failed" for j in jobs),
            "latency_in_burst": latencies(jobs),
        }
        service.kill()

        for name, factor, part in (
            ("load_1x", 1.0, files[BURST : BURST + PACED]),
            ("load_2x", 2.0, files[BURST + PACED : BURST + 2 * PACED]),
        ):
            service.start(name)
            results[name] = paced(service, part, capacity * factor)
            done = [j for j in service.worklist() if j["model"] == "pneumonia"]
            results[name].update({"latency": latencies(done), "failed": sum(j["state"] == "failed" for j in done)})
            service.kill()

        service.start("hippocampus")
        series = make_mr_studies(data_dir, work / "mr", MR_CASES)
        started = time.time()
        statuses = [service.send(case) for case in series]  # one series per request, as a modality sends a study
        service.wait_idle(600)
        mr_jobs = [j for j in service.worklist() if j["model"] == "hippocampus"]
        results["hippocampus"] = {
            "studies": len(series),
            "seconds": time.time() - started,
            "upload_errors": sum(c != 200 for c in statuses),
            "done": sum(j["state"] == "done" for j in mr_jobs),
            "failed": sum(j["state"] == "failed" for j in mr_jobs),
            "latency": latencies([j for j in mr_jobs if j["state"] == "done"]),
        }
        service.kill()

        results["restart"] = [
            kill_and_restart(service, files[BURST + 2 * PACED + r * RESTART : BURST + 2 * PACED + (r + 1) * RESTART], r)
            for r in range(ROUNDS)
        ]
        service.start("clients")
        assert service.send(files[:10]) == 200
        service.wait_idle(300)
        results["clients"] = concurrent_clients(service, CLIENTS, REQUESTS)
        results["deflate_bomb"] = deflate_bomb(service, files[0])
        service.kill()
    RESULTS.write_text(json.dumps(results, indent=1))
    c = results["capacity"]
    print(
        f"capacity: {c['studies']} studies in {c['seconds']:.1f} s = {c['studies_per_min']:.1f} studies/min "
        f"(latency in the burst p50 {c['latency_in_burst']['p50_s']:.1f} s, p95 {c['latency_in_burst']['p95_s']:.1f} s)"
    )
    for name in ("load_1x", "load_2x"):
        r = results[name]
        print(
            f"{name}: {r['rate_per_min']:.1f} studies/min offered, latency p50 {r['latency']['p50_s']:.2f} s p95 {r['latency']['p95_s']:.2f} s, "
            f"deepest queue {r['deepest_queue']}, upload errors {r['upload_errors']}, failed jobs {r['failed']}"
        )
    r = results["hippocampus"]
    print(
        f"hippocampus: {r['studies']} MR series sent at once, {r['done']} done, {r['failed']} failed, latency p50 "
        f"{r['latency']['p50_s']:.2f} s p95 {r['latency']['p95_s']:.2f} s (DICOM series in, DICOM SEG + FHIR out)"
    )
    for r in results["restart"]:
        print(
            f"restart {r['round']}: {r['studies_sent']} sent, killed at {r['at_kill']}, after restart {r['finished']} finished, "
            f"{r['lost']} lost, {r['duplicates']} duplicated, {r['redone_after_kill']} redone"
        )
    r = results["clients"]
    print(
        f"clients: {r['clients']} x {r['requests_each']} requests, {r['errors']} errors, latency p50 {r['p50_s']:.3f} s "
        f"p99 {r['p99_s']:.3f} s max {r['max_s']:.3f} s"
    )
    r = results["deflate_bomb"]
    print(
        f"deflate bomb: {r['upload_bytes'] / 2**20:.1f} MB upload claiming {r['inflated_bytes'] / 2**30:.1f} GiB: HTTP {r['status']}, "
        f"peak memory +{r['peak_memory_increase_mb']:.0f} MB, /health max {r['health_max_s']:.3f} s during {r['upload_seconds']:.2f} s"
    )


if __name__ == "__main__":
    main()
