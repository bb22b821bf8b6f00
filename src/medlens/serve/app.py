"""The triage and second-reader service: ``create_app(ServeConfig(...))`` gives a FastAPI app.

Studies arrive by DICOMweb STOW-RS (``POST /dicomweb/studies``); each is
stored and persisted before the upload is answered, routed to the matching
models as jobs, and processed by a background runner into findings, a DICOM
SR, a heatmap Secondary Capture and a FHIR DiagnosticReport. Every endpoint
but ``/health`` (which says only "ok") and the sign-in page needs a bearer
token; what users see and change, and every refused token, goes to an
append-only audit log. Uploads are parsed off the event loop, so ``/health``
and the worklist keep answering while a large one is checked; every response
carries a strict Content-Security-Policy (the page runs no inline script and
builds its DOM from text, never from HTML). API docs are off unless
``api_docs=True``, and then only the OpenAPI JSON is served: no page pulls
scripts from a CDN.
"""

import logging
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from medlens import __version__
from medlens.errors import DataError
from medlens.io.dicom import read_dicom
from medlens.io.dicom_guard import DicomLimits
from medlens.phi import install_phi_filter
from medlens.serve.agreement import agreement_table
from medlens.serve.auth import User, load_tokens, user_for
from medlens.serve.ingest import split_multipart_related, store_instances
from medlens.serve.models import load_models
from medlens.serve.monitor import build_reference, drift_report
from medlens.serve.pacs import OrthancConnector, PacsPoller
from medlens.serve.store import Store
from medlens.serve.worker import Worker, WorkerOptions

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {"app.js": "text/javascript", "app.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
JobId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="a job number from the worklist")]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """``models``: folder of bundles; ``storage``: received instances and results; ``db``: SQLAlchemy URL
    (default: SQLite in ``storage``); ``tokens``: file from ``medlens token add``."""

    models: Path
    storage: Path
    tokens: Path
    db: str | None = None
    max_upload_mb: float = 512.0
    settle_seconds: float = 2.0  # a study's jobs wait this long after its last instance arrived
    run_jobs: bool = True
    owner: str = socket.gethostname()
    orthanc_url: str | None = None  # poll this Orthanc for stable studies and store results back into it
    poll_seconds: float = 2.0
    drift_window: int = 20  # studies per drift-monitoring window
    max_inflated_mb: float = 64.0  # a deflated instance may inflate to this much (a 1.5 MB bomb asks for gigabytes)
    max_pixel_mb: float = 1024.0  # frames x rows x columns x samples x bits of one instance
    worker: WorkerOptions = WorkerOptions()
    api_docs: bool = False  # serve /openapi.json (never a CDN-hosted docs page)

    def limits(self) -> DicomLimits:
        return DicomLimits(
            max_inflated_bytes=int(self.max_inflated_mb * 2**20), max_pixel_bytes=int(self.max_pixel_mb * 2**20)
        )


class ReadIn(BaseModel):
    """A radiologist's read of one finding of a job's study."""

    finding: str
    present: bool


def create_app(config: ServeConfig) -> FastAPI:
    install_phi_filter()
    config.storage.mkdir(parents=True, exist_ok=True)
    users = load_tokens(config.tokens)
    models = load_models(config.models)
    store = Store(config.db or f"sqlite:///{config.storage / 'medlens.db'}", config.owner)
    pacs = OrthancConnector(config.orthanc_url) if config.orthanc_url else None
    worker = Worker(store, models, config.storage, options=config.worker, pacs=pacs, models_dir=config.models)
    ingest_lock = threading.Lock()  # uploads run on threads: one at a time records studies, so no UID is inserted twice

    def ingest(parts: list[bytes], source: str, user: str = "pacs-poller") -> Any:
        """Store instances, record their studies and route them to jobs (STOW-RS and the PACS poller alike)."""
        report = store_instances(parts, config.storage, config.limits())
        with ingest_lock:
            for study_uid, entry in report.studies.items():
                study_id, new = store.add_study(study_uid, entry["folder"], entry["info"], entry["count"], source)
                _route(store, models, study_id, entry["info"], config.settle_seconds, new, entry["new"])
                store.log(
                    user,
                    "upload",
                    f"study {study_id}" + (f" ({entry['resent']} instance(s) sent again)" if entry["resent"] else ""),
                )
                entry["study_id"] = study_id
        return report

    poller = PacsPoller(pacs, ingest, store, config.poll_seconds) if pacs else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if config.run_jobs:
            worker.start()
        if poller is not None:
            poller.start()
        yield
        if poller is not None:
            poller.stop()
        worker.stop()
        store.close()
        if pacs is not None:
            pacs.close()

    app = FastAPI(
        title="medlens",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if config.api_docs else None,
    )
    app.state.store, app.state.worker, app.state.models = store, worker, models
    bearer = HTTPBearer(auto_error=False)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def requires(role: str) -> Any:
        def check(
            request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
        ) -> User:
            user = user_for(credentials.credentials if credentials else None, users)
            if user is None:  # the path only: never the token, never a query string
                store.log("(no valid token)", "refused", f"{request.method} {request.url.path}"[:200])
                raise HTTPException(
                    401,
                    "a valid bearer token is needed (Authorization: Bearer <token>)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not user.may(role):
                store.log(user.name, "forbidden", f"{request.method} {request.url.path}"[:200])
                raise HTTPException(403, f"role {user.role!r} may not do this; it needs {role!r}")
            return user

        return check

    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness for load balancers and monitors; says nothing about models or studies (that needs a token)."""
        return {"status": "ok"}

    @app.get("/api/status")
    def status(user: Annotated[User, Depends(requires("viewer"))]) -> dict[str, Any]:
        return {"status": "ok", "models": sorted(models), "jobs": store.counts()}

    @app.post("/dicomweb/studies")
    async def stow(request: Request, user: Annotated[User, Depends(requires("sender"))]) -> JSONResponse:
        body = await _read_limited(request, int(config.max_upload_mb * 2**20))
        try:
            parts = await run_in_threadpool(split_multipart_related, body, request.headers.get("content-type", ""))
        except DataError as exc:
            raise HTTPException(415, str(exc)) from exc
        del body
        report = await run_in_threadpool(ingest, parts, "stow", user.name)
        status = 200 if not report.failed else (202 if report.stored else 409)  # PS3.18: all / some / none stored
        return JSONResponse(
            {
                "stored": len(report.stored),
                "failed": report.failed,
                "studies": [e["study_id"] for e in report.studies.values()],
            },
            status_code=status,
        )

    @app.get("/api/worklist")
    def worklist(user: Annotated[User, Depends(requires("viewer"))]) -> list[dict[str, Any]]:
        store.log(user.name, "view", "worklist")
        return store.worklist()

    def _job_or_404(job_id: int) -> Any:
        job = store.job(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    @app.get("/api/jobs/{job_id}")
    def job(job_id: JobId, user: Annotated[User, Depends(requires("viewer"))]) -> dict[str, Any]:
        found = _job_or_404(job_id)
        store.log(user.name, "view", f"job {job_id}")
        return {**found.__dict__, "study": {k: v for k, v in store.study(found.study_id).items() if k != "folder"}}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        """The worklist page (static; it asks for a token and reads everything through the API)."""
        return (STATIC / "index.html").read_text()

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_TYPES:
            raise HTTPException(404, f"no static file {name[:40]!r}")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_TYPES[name])

    @app.get("/api/jobs/{job_id}/{kind}")
    def job_output(job_id: JobId, kind: str, user: Annotated[User, Depends(requires("viewer"))]) -> Any:
        found = _job_or_404(job_id)
        if kind in ("image.png", "heatmap.png", "overlay.png"):
            store.log(user.name, "view", f"job {job_id} {kind}")
            return Response(_png(found.result or {}, kind, job_id), media_type="image/png")
        outputs = (found.result or {}).get("outputs", {})
        if kind not in ("sr", "heatmap", "seg", "fhir", "overlay") or kind not in outputs:
            raise HTTPException(
                404,
                f"job {job_id} has no {kind[:40]!r} output (state {found.state}); outputs: {', '.join(outputs) or 'none yet'}",
            )
        store.log(user.name, "view", f"job {job_id} {kind}")
        media = {"fhir": "application/fhir+json", "overlay": "image/png"}.get(kind, "application/dicom")
        return FileResponse(outputs[kind], media_type=media)

    @app.get("/fhir/DiagnosticReport/medlens-{job_id}")
    def fhir(job_id: JobId, user: Annotated[User, Depends(requires("viewer"))]) -> Any:
        return job_output(job_id, "fhir", user)

    @app.post("/api/jobs/{job_id}/reads")
    def read(job_id: JobId, body: ReadIn, user: Annotated[User, Depends(requires("radiologist"))]) -> dict[str, Any]:
        found = _job_or_404(job_id)
        names = [f["name"] for f in (found.result or {}).get("findings", [])]
        if body.finding not in names:
            raise HTTPException(
                422,
                f"finding {body.finding!r} is not one job {job_id} reports ({', '.join(names) or 'no findings yet'})",
            )
        store.record_read(job_id, user.name, body.finding, body.present)
        store.log(user.name, "read", f"job {job_id} {body.finding}={'present' if body.present else 'absent'}")
        return {"job": job_id, "finding": body.finding, "present": body.present, "reader": user.name}

    @app.get("/api/agreement")
    def agreement(user: Annotated[User, Depends(requires("viewer"))]) -> dict[str, Any]:
        return agreement_table(store.reads_with_results())

    @app.get("/api/audit")
    def audit_log(user: Annotated[User, Depends(requires("admin"))]) -> list[dict[str, Any]]:
        store.log(user.name, "view", "audit")
        return store.audit_entries()

    references: dict[str, Any] = {}
    building = threading.Lock()  # the page polls every 5 s: one request builds a reference, the others wait for it

    def monitoring_report() -> dict[str, Any]:
        out = {}
        for name, model in models.items():
            if model.kind != "classifier":  # drift is watched on a classifier's outputs
                continue
            with building:
                if name not in references:  # computed once, on first use (reads the model's validation split)
                    references[name] = build_reference(model, config.drift_window)
            positive = 1 if model.task == "binary" else 0
            out[name] = drift_report(store.observations(name), references[name], config.drift_window, positive)
        return out

    @app.get("/api/monitoring")
    def monitoring(user: Annotated[User, Depends(requires("viewer"))]) -> dict[str, Any]:
        return monitoring_report()

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(user: Annotated[User, Depends(requires("viewer"))]) -> str:
        lines = ["# HELP medlens_jobs Jobs by state.", "# TYPE medlens_jobs gauge"]
        lines += [f'medlens_jobs{{state="{state}"}} {n}' for state, n in store.counts().items()]
        lines += [
            "# HELP medlens_drift_alarm 1 if the latest window of studies drifted from validation data.",
            "# TYPE medlens_drift_alarm gauge",
            "# HELP medlens_drift_embedding_score Latest window's embedding shift score.",
            "# TYPE medlens_drift_embedding_score gauge",
            "# HELP medlens_mean_probability Latest window's mean finding probability.",
            "# TYPE medlens_mean_probability gauge",
        ]
        for name, report in monitoring_report().items():
            latest = report["windows"][-1] if report["windows"] else {}
            lines.append(f'medlens_drift_alarm{{model="{name}"}} {int(report["alarm"])}')
            if "embedding_score" in latest:
                lines.append(f'medlens_drift_embedding_score{{model="{name}"}} {latest["embedding_score"]:.6g}')
            if latest:
                lines.append(f'medlens_mean_probability{{model="{name}"}} {latest["mean_probability"]:.6g}')
        return "\n".join(lines) + "\n"

    return app


def _route(
    store: Any,
    models: dict[str, Any],
    study_id: int,
    info: dict[str, Any],
    settle_seconds: float,
    new: bool,
    arrived: list[dict[str, Any]],
) -> None:
    """One job per model the study matches; a skipped job (with the reason) per model it does not.

    New instances of a known study: its queued jobs wait for it to settle, and the finished job of each model that
    reads such an instance runs again over all instances (a new version). Instances sent again change nothing, and
    neither do instances no model reads, such as the SR and heatmap medlens itself stored back into the PACS.
    """
    for name, model in models.items():
        reason = model.route(info)
        store.add_job(study_id, name, "skipped" if reason else "queued", reason, delay_seconds=settle_seconds)
    if new or not arrived:
        return
    store.postpone_queued(study_id, settle_seconds)
    readers = [name for name, model in models.items() if any(model.route(i) is None for i in arrived)]
    if readers:
        store.reopen(study_id, settle_seconds, readers)


def _png(result: dict[str, Any], kind: str, job_id: int) -> bytes:
    """The job's key image (grey), its heatmap Secondary Capture (RGB) or its boxes drawn on the image, as PNG."""
    import io

    import numpy as np
    import pydicom
    from PIL import Image

    output = {"heatmap.png": "heatmap", "overlay.png": "overlay"}.get(kind)
    source = result.get("key_image") if kind == "image.png" else result.get("outputs", {}).get(output)
    if not source or not Path(source).is_file():
        raise HTTPException(404, f"job {job_id} has no {kind} (not finished, or none for this model)")
    if kind == "overlay.png":
        return Path(source).read_bytes()  # written by medlens as PNG
    if kind == "image.png":
        grey = read_dicom(Path(source)).mean(axis=0)
        low, high = np.percentile(grey, [0.5, 99.5])
        pixels = (np.clip((grey - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)
    else:
        pixels = pydicom.dcmread(source).pixel_array.astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(
            413, f"upload of {int(declared)} bytes is over the limit of {limit} bytes (ServeConfig.max_upload_mb)"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload is over the limit of {limit} bytes (ServeConfig.max_upload_mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def _version() -> str:
    return __version__
