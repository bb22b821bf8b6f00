"""Attacks on the reader and the triage service, each reproduced on a real (mutated) file: crash, bomb, hang, leak."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import JPEG2000Lossless

from medlens.errors import DicomError, MedlensError
from medlens.io.dicom_guard import DicomLimits, check_deflate_bomb
from medlens.io.series import read_dicom_volumes
from medlens.serve.app import create_app
from medlens.serve.samples import stow_body, write_cr_study
from medlens.serve.sandbox import JobCrashed, Sandbox
from medlens.serve.store import Store
from medlens.serve.worker import WorkerOptions
from tests.serve_helpers import (
    deflate_bomb,
    free_port,
    make_service,
    peak_rss_mb,
    start_server,
    wait_client_idle,
    wait_idle,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore"
)  # mutated headers make pydicom warn; production does not raise on warnings


@pytest.fixture(scope="module")
def radiographs(data_dir: Path) -> list[Path]:
    with (data_dir / "cxr_kermany_224" / "kermany_subset_labels.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    return [data_dir / "cxr_kermany_224" / r["image_file"] for r in rows[:4]]


@pytest.fixture()
def cr(radiographs: list[Path], tmp_path: Path) -> Path:
    """A real chest radiograph as a CR instance."""
    return write_cr_study(radiographs[0], tmp_path / "cr.dcm", "HARD1")


def _j2k_with_three_samples(cr: Path, out: Path) -> Path:
    """The radiograph JPEG 2000 compressed, then its header claims 3 samples per pixel: GDCM aborts on it."""
    ds = pydicom.dcmread(cr)
    ds.compress(JPEG2000Lossless)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.save_as(out)
    return out


def _run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


READ_ONE = """
import sys
from pathlib import Path
from medlens.io.dicom import read_dicom
from medlens.errors import MedlensError
try:
    read_dicom(Path(sys.argv[1]))
except MedlensError as exc:
    print(type(exc).__name__, exc)
"""


# 1. one file crash-loops the service ------------------------------------------------------------------------
def test_a_corrupt_jpeg2000_stream_is_refused_before_a_native_decoder_sees_it(cr: Path, tmp_path: Path) -> None:
    bad = _j2k_with_three_samples(cr, tmp_path / "j2k.dcm")
    done = _run_python(READ_ONE, str(bad))
    assert done.returncode == 0, (
        f"the reader's process died ({done.returncode}): {done.stderr[-300:]}"
    )  # was -6: GDCM abort
    assert "DicomError" in done.stdout and "JPEG 2000 stream is 224x224, 1 component(s)" in done.stdout


def _decode_with_gdcm(state: object, path: str) -> tuple[int, ...]:
    """No guard: what a decoder does to its process when it meets the file (runs in the sandbox's child)."""
    ds = pydicom.dcmread(path)
    ds.pixel_array_options(decoding_plugin="gdcm")
    return tuple(ds.pixel_array.shape)


def _setup(*_: object) -> None:
    return None


def _answer(state: object) -> str:
    return "alive"


def test_a_decoder_abort_costs_the_child_process_not_the_caller(cr: Path, tmp_path: Path) -> None:
    bad = _j2k_with_three_samples(cr, tmp_path / "j2k.dcm")
    sandbox = Sandbox(_setup, timeout_seconds=60)
    try:
        with pytest.raises(JobCrashed, match="signal SIGABRT"):
            sandbox.call(_decode_with_gdcm, str(bad))
        assert sandbox.call(_answer) == "alive"  # a fresh child took over
    finally:
        sandbox.close()


def test_a_job_whose_process_keeps_dying_fails_for_good_and_the_service_goes_on(
    radiographs: list[Path], tmp_path: Path
) -> None:
    """The job's child is killed with SIGABRT (what GDCM does) on every attempt: the job fails after max_attempts,
    with the reason on the worklist, and the next study is processed as usual."""
    service = make_service(
        tmp_path, ("pneumonia-28px",), worker=WorkerOptions(max_attempts=2, backoff_seconds=0.1, poll_seconds=0.1)
    )
    first, second = (write_cr_study(r, tmp_path / f"s{i}.dcm", f"HARD{i}") for i, r in enumerate(radiographs[:2]))
    h = service["headers"]
    with TestClient(create_app(service["config"])) as client:
        store, worker = client.app.state.store, client.app.state.worker
        body, content_type = stow_body([first])
        assert (
            client.post(
                "/dicomweb/studies", content=body, headers={**h["sender"], "Content-Type": content_type}
            ).status_code
            == 200
        )
        kills, deadline = 0, time.time() + 180
        while time.time() < deadline and store.counts()["failed"] == 0:
            pid = worker.sandbox.pid
            if pid is not None and store.counts()["running"] == 1:
                os.kill(pid, signal.SIGABRT)
                kills += 1
                while worker.sandbox.pid == pid:
                    time.sleep(0.02)
            time.sleep(0.02)
        failed = [j for j in client.get("/api/worklist", headers=h["viewer"]).json() if j["state"] == "failed"]
        assert client.get("/health").json() == {"status": "ok"}
        body, content_type = stow_body([second])
        assert (
            client.post(
                "/dicomweb/studies", content=body, headers={**h["sender"], "Content-Type": content_type}
            ).status_code
            == 200
        )
        counts = wait_client_idle(client, 180)
    assert kills == 2 and len(failed) == 1 and failed[0]["attempts"] == 2
    assert "gave up after 2 attempts" in failed[0]["reason"] and "signal SIGABRT" in failed[0]["reason"]
    assert counts["done"] + counts["referred"] == 1 and counts["failed"] == 1


def test_a_job_that_took_the_whole_service_down_each_time_is_not_queued_again(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}", owner="node-a")
    study, _ = store.add_study("1.2.3", "studies/x", {"modality": "CR"}, 1, "stow")
    job = store.add_job(study, "pneumonia-28px")
    for _ in range(3):  # the service dies (kill -9, an abort) while the job runs, then restarts
        assert store.claim() is not None
        store.requeue_abandoned(max_attempts=3)
    state = store.job(job)
    store.close()
    assert state.state == "failed" and "gave up after 3 attempts" in state.reason and "service stopped" in state.reason


# 3. deflate bomb ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bomb(radiographs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> bytes:
    cr = write_cr_study(radiographs[0], tmp_path_factory.mktemp("bomb") / "cr.dcm", "BOMB1")
    return deflate_bomb(cr, 1536 << 20)  # 1.5 GiB of pixel data in about 1.5 MB


def test_a_deflate_bomb_is_measured_not_inflated(bomb: bytes, tmp_path: Path) -> None:
    assert len(bomb) < 2 << 20
    with pytest.raises(DicomError, match="inflates to more than 64 MiB"):
        check_deflate_bomb(bomb, "upload", DicomLimits(max_inflated_bytes=64 << 20))
    (tmp_path / "bomb.dcm").write_bytes(bomb)
    with pytest.raises(DicomError, match="decompression bomb"):  # the reader's own limit (1 GiB)
        read_dicom_volumes(tmp_path / "bomb.dcm")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads peak memory from /proc")
def test_a_deflate_bomb_costs_the_service_little_memory_and_health_keeps_answering(bomb: bytes, tmp_path: Path) -> None:
    service = make_service(tmp_path, ("pneumonia-28px",), max_upload_mb=8)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(service["config"].models, service["config"].tokens, tmp_path / "storage", port)
    try:
        before = peak_rss_mb(server.pid)
        boundary = "medlens-bomb"
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + bomb
            + f"\r\n--{boundary}--\r\n".encode()
        )
        answer: dict = {}

        def upload() -> None:
            answer["response"] = httpx.post(
                f"{base}/dicomweb/studies",
                content=body,
                timeout=120,
                headers={**service["headers"]["sender"], "Content-Type": f"multipart/related; boundary={boundary}"},
            )

        sender = threading.Thread(target=upload)
        sender.start()
        latencies = []
        while sender.is_alive() or not latencies:
            start = time.perf_counter()
            assert httpx.get(f"{base}/health", timeout=5).status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.05)
        sender.join()
        after = peak_rss_mb(server.pid)
    finally:
        server.kill()
        server.wait(10)
    response = answer["response"]
    assert response.status_code == 409 and "decompression bomb" in response.json()["failed"][0]["reason"]
    assert after - before < 200, f"peak memory rose by {after - before:.0f} MB"
    assert max(latencies) < 1.0, f"/health took {max(latencies):.2f} s while the upload was checked"


# 4. parser errors per part, no orphan files ----------------------------------------------------------------
def _first_cut_raising(data: bytes, name: str) -> bytes:
    """The shortest truncation of a real file at which pydicom's parser raises ``name`` (found, not hard-coded)."""
    for cut in range(133, 2000):
        try:
            pydicom.dcmread(BytesIO(data[:cut]), stop_before_pixels=True).get("StudyInstanceUID")
        except Exception as exc:
            if type(exc).__name__ == name:
                return data[:cut]
    raise AssertionError(f"no truncation raises {name}")


def test_parser_errors_fail_their_part_only_and_no_file_is_orphaned(
    cr: Path, radiographs: list[Path], tmp_path: Path
) -> None:
    good = write_cr_study(radiographs[1], tmp_path / "good.dcm", "GOOD1").read_bytes()
    data = cr.read_bytes()
    unknown_vr = bytearray(data)
    at = data.find(b"\x02\x00\x10\x00UI")  # TransferSyntaxUID with a VR that does not exist
    unknown_vr[at + 4 : at + 6] = b"\x55\xff"
    bad = {
        "NotImplementedError": bytes(unknown_vr),
        "BytesLengthException": _first_cut_raising(data, "BytesLengthException"),
        "error": _first_cut_raising(data, "error"),
    }
    for name, part in bad.items():  # each still reproduces the escape the service used to turn into HTTP 500
        with pytest.raises(Exception) as raised:
            pydicom.dcmread(BytesIO(part), stop_before_pixels=True).get("StudyInstanceUID")
        assert type(raised.value).__name__ == name
    files = []
    for i, part in enumerate([*bad.values(), good]):
        (tmp_path / f"part{i}.dcm").write_bytes(part)
        files.append(tmp_path / f"part{i}.dcm")
    service = make_service(tmp_path, ("pneumonia-28px",), run_jobs=False)
    with TestClient(create_app(service["config"])) as client:
        body, content_type = stow_body(files)
        response = client.post(
            "/dicomweb/studies", content=body, headers={**service["headers"]["sender"], "Content-Type": content_type}
        )
        studies = client.app.state.store.worklist()
    assert response.status_code == 202, response.text
    assert response.json()["stored"] == 1 and [f["part"] for f in response.json()["failed"]] == ["0", "1", "2"]
    on_disk = list((service["config"].storage / "studies").rglob("*.dcm"))
    assert (
        len(on_disk) == 1
        and len(studies) == 1
        and studies[0]["study_uid"] == str(pydicom.dcmread(BytesIO(good)).StudyInstanceUID)
    )


# 5. NumberOfFrames 10^40 - 1 -------------------------------------------------------------------------------
SCAN_ONE = """
import sys
from medlens.io.series import read_dicom_volumes
from medlens.errors import MedlensError
try:
    read_dicom_volumes(sys.argv[1])
except MedlensError as exc:
    print(type(exc).__name__, exc)
"""


def test_an_absurd_frame_count_is_refused_at_once(cr: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(cr)
    ds.NumberOfFrames = "9" * 40
    ds.save_as(tmp_path / "frames.dcm")
    started = time.perf_counter()
    done = _run_python(
        SCAN_ONE, str(tmp_path / "frames.dcm"), timeout=60
    )  # used to loop over every frame, memory growing
    assert time.perf_counter() - started < 30
    assert "DicomError" in done.stdout and "over the limit" in done.stdout and "NumberOfFrames" in done.stdout


# 7. late and repeated instances ----------------------------------------------------------------------------
def test_late_instances_reopen_their_study_and_resent_ones_change_nothing(
    cr: Path, radiographs: list[Path], tmp_path: Path
) -> None:
    second = pydicom.dcmread(write_cr_study(radiographs[1], tmp_path / "second.dcm", "HARD1"))
    first = pydicom.dcmread(cr)
    second.StudyInstanceUID, second.PatientID, second.PatientName = (
        first.StudyInstanceUID,
        first.PatientID,
        first.PatientName,
    )
    second.save_as(tmp_path / "second.dcm")
    service = make_service(tmp_path, ("pneumonia-28px",))
    h = service["headers"]

    def send(path: Path) -> None:
        body, content_type = stow_body([path])
        assert (
            client.post(
                "/dicomweb/studies", content=body, headers={**h["sender"], "Content-Type": content_type}
            ).status_code
            == 200
        )

    with TestClient(create_app(service["config"])) as client:
        send(cr)
        wait_client_idle(client)
        before = client.get("/api/worklist", headers=h["viewer"]).json()[0]
        send(tmp_path / "second.dcm")
        wait_client_idle(client)
        after = client.get("/api/worklist", headers=h["viewer"]).json()[0]
        send(tmp_path / "second.dcm")  # sent again: same SOP Instance UID
        wait_client_idle(client)
        again = client.get(f"/api/jobs/{after['id']}", headers=h["viewer"]).json()
    assert before["result"]["images"] == 1 and before["version"] == 1
    assert (
        after["id"] == before["id"]
        and after["version"] == 2
        and after["result"]["images"] == 2
        and after["state"] in ("done", "referred")
    )
    assert again["version"] == 2 and again["study"]["n_instances"] == 2


# 8. a corrupt SeriesNumber; a job id beyond 64 bits ---------------------------------------------------------
def test_a_series_number_that_cannot_be_converted_is_a_medlens_error(cr: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(cr)
    ds._dict[Tag("SeriesNumber")] = RawDataElement(Tag("SeriesNumber"), "IS", 6, b"1e999 ", 0, False, True)
    ds.save_as(tmp_path / "series.dcm")
    other = pydicom.dcmread(cr)
    other.SeriesInstanceUID, other.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    other.save_as(tmp_path / "other.dcm")
    try:  # two series, so they are sorted (where OverflowError used to escape)
        read_dicom_volumes(tmp_path)
    except MedlensError:
        pass


def test_job_ids_beyond_64_bits_are_a_clear_422(tmp_path: Path) -> None:
    service = make_service(tmp_path, ("pneumonia-28px",), run_jobs=False)
    with TestClient(create_app(service["config"])) as client:
        for path in (
            f"/api/jobs/{2**70}",
            f"/api/jobs/{2**70}/sr",
            f"/fhir/DiagnosticReport/medlens-{2**64}",
            "/api/jobs/0",
        ):
            response = client.get(path, headers=service["headers"]["viewer"])
            assert response.status_code == 422, (path, response.status_code)


# 10. health, audit, CSP, docs ------------------------------------------------------------------------------
def test_health_says_only_ok_refusals_are_audited_and_pages_carry_a_csp(tmp_path: Path) -> None:
    service = make_service(tmp_path, ("pneumonia-28px",), run_jobs=False)
    with TestClient(create_app(service["config"])) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/api/worklist", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/audit", headers=service["headers"]["viewer"]).status_code == 403
        status = client.get("/api/status", headers=service["headers"]["viewer"]).json()
        audit = client.get("/api/audit", headers=service["headers"]["admin"]).json()
        page = client.get("/")
        assert all(client.get(p).status_code == 404 for p in ("/docs", "/redoc", "/openapi.json"))
        script = client.get("/static/app.js")
    assert status["models"] == ["pneumonia-28px"] and "jobs" in status
    refused = [(a["user"], a["action"], a["target"]) for a in audit]
    assert ("(no valid token)", "refused", "GET /api/worklist") in refused and (
        "viewer-user",
        "forbidden",
        "GET /api/audit",
    ) in refused
    assert "wrong" not in str(audit)
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "default-src 'none'" in policy
    assert "<script>" not in page.text and '<script src="/static/app.js">' in page.text
    assert script.headers["content-type"].startswith("text/javascript") and "innerHTML" not in script.text


def test_api_docs_are_served_locally_only_when_asked(tmp_path: Path) -> None:
    service = make_service(tmp_path, ("pneumonia-28px",), run_jobs=False, api_docs=True)
    with TestClient(create_app(service["config"])) as client:
        assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 404


# 6. no patient identifiers in logs, database rows or file names ----------------------------------------------
MARKERS = {
    "PatientName": "MARKERNAME",
    "PatientID": "MARKERID4711",
    "AccessionNumber": "MARKERACC93",
    "InstitutionName": "MARKERHOSPITAL",
    "ReferringPhysicianName": "MARKERDOCTOR^Alex",
}


def test_phi_markers_appear_nowhere_but_in_the_reports(radiographs: list[Path], tmp_path: Path) -> None:
    """A single-component PatientName makes highdicom warn with it while the SR is built; that warning, every
    log line of the service and its job process, every database row and every file name must not hold a marker."""
    files = []
    for i, image in enumerate(radiographs[:2]):
        ds = pydicom.dcmread(write_cr_study(image, tmp_path / f"phi{i}.dcm", "X"))
        for keyword, marker in MARKERS.items():
            setattr(ds, keyword, marker)
        if i == 1:
            ds._dict[Tag("RescaleSlope")] = RawDataElement(
                Tag("RescaleSlope"), "DS", 4, b"abc ", 0, False, True
            )  # refused
        ds.save_as(tmp_path / f"phi{i}.dcm")
        files.append(tmp_path / f"phi{i}.dcm")
    service = make_service(tmp_path, ("pneumonia-28px",))
    port, log_file = free_port(), tmp_path / "service.log"
    with log_file.open("wb") as log:
        server = start_server(
            service["config"].models, service["config"].tokens, tmp_path / "storage", port, stderr=log
        )
        try:
            body, content_type = stow_body(files)
            response = httpx.post(
                f"http://127.0.0.1:{port}/dicomweb/studies",
                content=body,
                timeout=60,
                headers={**service["headers"]["sender"], "Content-Type": content_type},
            )
            wait_idle(f"http://127.0.0.1:{port}", service["tokens"]["viewer"])
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    logged = log_file.read_text(errors="replace")
    assert response.status_code == 202  # the second is refused at the door (RescaleSlope is not a number)
    assert "unlikely to represent the intended person name" in logged, logged[
        -2000:
    ]  # the dependency's warning was routed
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'storage' / 'medlens.db'}")
    with engine.connect() as conn:
        rows = [
            str(tuple(r))
            for t in ("studies", "jobs", "audit", "observations")
            for r in conn.exec_driver_sql(f"SELECT * FROM {t}")
        ]
    engine.dispose()
    names = [str(p.relative_to(tmp_path / "storage")) for p in (tmp_path / "storage").rglob("*")]
    for marker in ("MARKERNAME", "MARKERID4711", "MARKERACC93", "MARKERHOSPITAL", "MARKERDOCTOR", "Alex"):
        assert marker.lower() not in logged.lower(), marker
        assert marker.lower() not in "\n".join(rows).lower(), marker
        assert marker.lower() not in "\n".join(names).lower(), marker
