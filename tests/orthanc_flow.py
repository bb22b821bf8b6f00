"""Run by tests/test_serve_orthanc.py inside a private network namespace (``unshare -n``, only ``lo`` up).

Starts a real Orthanc (Debian's package, with its DICOMweb plugin) on
127.0.0.1, starts the medlens service polling it, pushes real chest
radiographs into Orthanc as a modality would, waits for the results, and
writes what Orthanc then holds to ``OUT/result.json`` for the test to check.

    python tests/orthanc_flow.py OUT MODELS TOKENS STUDY.dcm [STUDY.dcm ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serve_helpers import wait_until_answering  # this script runs from tests/ as its own program

ORTHANC = "http://127.0.0.1:8042"


def start_orthanc(work: Path) -> subprocess.Popen[bytes]:
    config = {
        "Name": "medlens-test",
        "StorageDirectory": str(work / "orthanc-db"),
        "IndexDirectory": str(work / "orthanc-db"),
        "HttpPort": 8042,
        "DicomPort": 4242,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StableAge": 1,
        "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        ["Orthanc", str(work / "orthanc.json")], stdout=(work / "orthanc.log").open("wb"), stderr=subprocess.STDOUT
    )
    return wait_until_answering(f"{ORTHANC}/system", process, "Orthanc (see orthanc.log)", seconds=30)


def main() -> None:
    from fastapi.testclient import TestClient

    from medlens.serve.app import ServeConfig, create_app
    from medlens.serve.worker import WorkerOptions

    out, models, tokens, studies = (
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        Path(sys.argv[3]),
        [Path(p) for p in sys.argv[4:]],
    )
    token = json.loads((out / "token.json").read_text())["viewer"]
    orthanc = start_orthanc(out)
    config = ServeConfig(
        models=models,
        storage=out / "storage",
        tokens=tokens,
        settle_seconds=0,
        orthanc_url=ORTHANC,
        poll_seconds=0.5,
        worker=WorkerOptions(isolate=False),
    )  # the PACS round trip is tested here; the job process elsewhere
    result: dict = {}
    try:
        for f in studies:  # as a modality would send them
            assert httpx.post(f"{ORTHANC}/instances", content=f.read_bytes(), timeout=30).status_code == 200
        with TestClient(create_app(config)) as client:
            deadline = time.time() + 120
            while time.time() < deadline:
                counts = client.get("/api/status", headers={"Authorization": f"Bearer {token}"}).json()["jobs"]
                if (
                    counts["done"] + counts["referred"] + counts["failed"] >= len(studies)
                    and counts["queued"] + counts["running"] == 0
                ):
                    break
                time.sleep(0.5)
            worklist = client.get("/api/worklist", headers={"Authorization": f"Bearer {token}"}).json()
        with TestClient(
            create_app(config)
        ) as client:  # a restart: the stored poll cursor means nothing is fetched twice
            time.sleep(1.5)
            result["jobs_after_restart"] = client.get(
                "/api/status", headers={"Authorization": f"Bearer {token}"}
            ).json()["jobs"]
        result["worklist"] = worklist
        result["orthanc"] = {}
        for study_id in httpx.get(f"{ORTHANC}/studies", timeout=10).json():
            tags = httpx.get(f"{ORTHANC}/studies/{study_id}", timeout=10).json()["MainDicomTags"]
            series = httpx.get(f"{ORTHANC}/studies/{study_id}/series", timeout=10).json()
            result["orthanc"][tags["StudyInstanceUID"]] = sorted(
                (s["MainDicomTags"].get("Modality", ""), s["MainDicomTags"].get("SeriesDescription", ""))
                for s in series
            )
    finally:
        orthanc.terminate()
        orthanc.wait(30)
    (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
