"""The triage service end to end on real radiographs: throughput, latency, load, and a forced restart.

Starts ``medlens serve`` on 127.0.0.1 with the shipped pneumonia model and
sends real chest radiographs (the Kermany test split, each wrapped as a
one-image CR study) by STOW-RS, and held-out MSD hippocampus cases as DICOM
MR series for the segmentation model. Measures, from the service's own timestamps
(study received -> job finished: inference, DICOM SR, Grad-CAM Secondary
Capture and FHIR report written):

1. capacity: a burst of studies, studies per minute until all are done;
2. paced load at 1x and 2x that capacity: latency p50/p95, queue, errors;
3. restart: ``kill -9`` mid-run, start again, count studies lost or done twice.

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

from medlens.serve.auth import add_token
from medlens.serve.samples import stow_body, write_cr_study

RESULTS = Path(__file__).parent / "results" / "service.json"
PRETRAINED = Path(__file__).parents[1] / "src" / "medlens" / "pretrained"
BURST, PACED, RESTART, MR_CASES = 40, 30, 30, 10


class Service:
    def __init__(self, work: Path) -> None:
        self.work, self.models, self.tokens = work, work / "models", work / "tokens.json"
        self.models.mkdir()
        for name in ("pneumonia", "hippocampus"):
            (self.models / name).symlink_to(PRETRAINED / name)
        self.sender = {"Authorization": f"Bearer {add_token(self.tokens, 'bench-pacs', 'sender')}"}
        self.viewer = {"Authorization": f"Bearer {add_token(self.tokens, 'bench-viewer', 'viewer')}"}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.base = f"http://127.0.0.1:{s.getsockname()[1]}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, storage: str) -> None:
        port = self.base.rsplit(":", 1)[1]
        self.process = subprocess.Popen([sys.executable, "-m", "medlens", "serve", "--models", str(self.models), "--tokens", str(self.tokens),
                                         "--storage", str(self.work / storage), "--port", port],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        return httpx.post(f"{self.base}/dicomweb/studies", content=body, timeout=120, headers={**self.sender, "Content-Type": content_type}).status_code

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
    return [write_cr_study(root / r["image_file"], out / f"study{i:03d}.dcm", f"BENCH{i:03d}") for i, r in enumerate(picked)]


def make_mr_studies(data_dir: Path, out: Path, n: int) -> list[list[Path]]:
    """Held-out MSD hippocampus cases (the shipped bundle's test split) as DICOM MR series."""
    from medlens.serve.samples import write_mr_series

    test_ids = json.loads((PRETRAINED / "hippocampus" / "bundle.json").read_text())["split"]["test"][:n]
    root = data_dir / "msd_hippocampus" / "imagesTr"
    return [write_mr_series(root / f"{case}.nii.gz", out / case, f"MR{i:03d}") for i, case in enumerate(test_ids)]


def latencies(jobs: list[dict]) -> dict[str, float]:
    seconds = np.array([j["finished_at"] - j["received_at"] for j in jobs])
    return {"n": len(jobs), "p50_s": float(np.percentile(seconds, 50)), "p95_s": float(np.percentile(seconds, 95)), "max_s": float(seconds.max())}


def paced(service: Service, files: list[Path], rate_per_min: float) -> dict:
    """One study at a time at a fixed rate; returns latency, errors and the deepest queue seen."""
    interval, started, deepest, statuses = 60.0 / rate_per_min, time.time(), 0, []
    for i, f in enumerate(files):
        time.sleep(max(0.0, started + i * interval - time.time()))
        statuses.append(service.send([f]))
        deepest = max(deepest, service.counts()["queued"])
    finished = service.wait_idle(300)
    return {"rate_per_min": rate_per_min, "upload_errors": sum(s != 200 for s in statuses), "deepest_queue": deepest, "drained": finished}


def main() -> None:
    data_dir = Path(os.environ.get("MEDLENS_DATA_DIR", "../shared/data"))
    results: dict = {"machine": f"{os.cpu_count()}-core CPU; medlens serve (uvicorn, one job runner thread), SQLite",
                     "data": "Kermany chest radiographs (test split, 224 px) wrapped as one-image CR studies; shipped pneumonia model; "
                             "each job: inference, DICOM SR, Grad-CAM Secondary Capture, FHIR DiagnosticReport"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = make_studies(data_dir, work / "studies", BURST + 2 * PACED + RESTART)
        service = Service(work)
        service.start("burst")
        started = time.time()
        assert service.send(files[:BURST]) == 200
        service.wait_idle(600)
        burst_seconds = time.time() - started
        jobs = [j for j in service.worklist() if j["model"] == "pneumonia"]
        capacity = 60 * BURST / burst_seconds
        results["capacity"] = {"studies": BURST, "seconds": burst_seconds, "studies_per_min": capacity,
                               "failed": sum(j["state"] == "failed" for j in jobs), "latency_in_burst": latencies(jobs)}
        service.kill()

        for name, factor, part in (("load_1x", 1.0, files[BURST:BURST + PACED]), ("load_2x", 2.0, files[BURST + PACED:BURST + 2 * PACED])):
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
        results["hippocampus"] = {"studies": len(series), "seconds": time.time() - started, "upload_errors": sum(c != 200 for c in statuses),
                                  "done": sum(j["state"] == "done" for j in mr_jobs), "failed": sum(j["state"] == "failed" for j in mr_jobs),
                                  "latency": latencies([j for j in mr_jobs if j["state"] == "done"])}
        service.kill()

        service.start("restart")
        part = files[BURST + 2 * PACED:]
        assert service.send(part) == 200
        deadline = time.time() + 120
        while time.time() < deadline and service.counts()["done"] + service.counts()["referred"] < 5:
            time.sleep(0.1)
        before = service.counts()
        service.kill()
        service.start("restart")
        service.wait_idle(300)
        jobs = [j for j in service.worklist() if j["model"] == "pneumonia"]
        service.kill()
        finished = [j for j in jobs if j["state"] in ("done", "referred")]
        results["restart"] = {"studies_sent": len(part), "at_kill": before, "jobs_after_restart": len(jobs),
                              "finished": len(finished), "lost": len(part) - len({j["study_uid"] for j in finished}),
                              "redone_after_kill": sum(j["attempts"] > 1 for j in jobs),
                              "duplicates": len(jobs) - len({j["study_uid"] for j in jobs})}
    RESULTS.write_text(json.dumps(results, indent=1))
    c = results["capacity"]
    print(f"capacity: {c['studies']} studies in {c['seconds']:.1f} s = {c['studies_per_min']:.1f} studies/min "
          f"(latency in the burst p50 {c['latency_in_burst']['p50_s']:.1f} s, p95 {c['latency_in_burst']['p95_s']:.1f} s)")
    for name in ("load_1x", "load_2x"):
        r = results[name]
        print(f"{name}: {r['rate_per_min']:.1f} studies/min offered, latency p50 {r['latency']['p50_s']:.2f} s p95 {r['latency']['p95_s']:.2f} s, "
              f"deepest queue {r['deepest_queue']}, upload errors {r['upload_errors']}, failed jobs {r['failed']}")
    r = results["hippocampus"]
    print(f"hippocampus: {r['studies']} MR series sent at once, {r['done']} done, {r['failed']} failed, latency p50 "
          f"{r['latency']['p50_s']:.2f} s p95 {r['latency']['p95_s']:.2f} s (DICOM series in, DICOM SEG + FHIR out)")
    r = results["restart"]
    print(f"restart: {r['studies_sent']} sent, killed at {r['at_kill']}, after restart {r['finished']} finished, "
          f"{r['lost']} lost, {r['duplicates']} duplicated, {r['redone_after_kill']} redone")


if __name__ == "__main__":
    main()
