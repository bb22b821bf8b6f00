"""The job runner: claims the most urgent job, runs it, records the outcome; retries what may pass later.

Runs in a background thread of the service (one job at a time: on a 2-core
machine inference already uses both cores). The job itself runs in a child
process (:mod:`medlens.serve.sandbox`, ``isolate=True``, the default): a
decoder that aborts on a hostile file kills that child, not the service. A bad
study fails alone and the next job runs; an error that may be transient (a
file system or network error, an unexpected exception) and a crash of the
child are retried with exponential backoff, up to ``max_attempts``, and then
the job fails with its reason. A crash of the service itself while a job runs
counts as an attempt too: such a job is failed for good at restart once it
used them all, so one file cannot crash-loop the service.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from medlens.errors import MedlensError
from medlens.phi import remember_identifiers
from medlens.serve.ingest import instance_files
from medlens.serve.models import ServedModel, load_models
from medlens.serve.pacs import PacsError
from medlens.serve.process import run_classification, run_detection, run_segmentation
from medlens.serve.sandbox import JobCrashed, JobError, Sandbox
from medlens.serve.store import Job, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    poll_seconds: float = 0.5
    max_attempts: int = 3
    backoff_seconds: float = 5.0  # 5 s, 10 s, 20 s ...
    lease_seconds: float = 600.0
    isolate: bool = True  # run each job in the child process (off only to debug in one process)
    job_timeout_seconds: float = 300.0  # a job's child is stopped after this long (a hang counts as a crash)


class Worker:
    def __init__(
        self,
        store: Store,
        models: dict[str, ServedModel],
        storage: Path,
        options: WorkerOptions = WorkerOptions(),
        pacs: Any = None,
        models_dir: Path | None = None,
    ) -> None:
        self.store, self.models, self.storage, self.options, self.pacs = store, models, storage, options, pacs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sandbox = (
            Sandbox(load_models, (str(models_dir),), options.job_timeout_seconds)
            if options.isolate and models_dir is not None
            else None
        )

    def start(self) -> None:
        requeued = self.store.requeue_abandoned(self.options.max_attempts)
        if requeued:
            log.warning("%d job(s) interrupted by a previous stop were queued again", requeued)
        if self.sandbox is not None:
            self.sandbox.start()  # the job process loads the models while the service starts answering
        self._thread = threading.Thread(target=self._loop, name="medlens-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.sandbox is not None:
            self.sandbox.close()

    def run_once(self) -> bool:
        """Claim and run one job; False when there was none ready."""
        job = self.store.claim(self.options.lease_seconds)
        if job is None:
            return False
        self._run(job)
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # the database itself failed: log (no patient data in it) and keep trying
                log.exception("job runner error; retrying")
                busy = False
            if not busy:
                self._stop.wait(self.options.poll_seconds)

    def _run(self, job: Job) -> None:
        model = self.models.get(job.model)
        if model is None:
            self.store.finish(job.id, "failed", None, reason=f"model {job.model!r} is no longer in the registry")
            return
        study = self.store.study(job.study_id)
        key = f"{study['study_uid']}/{job.model}/{job.id}" + (f"/v{job.version}" if job.version > 1 else "")
        request = (
            job.model,
            str(self.storage),
            study["folder"],
            str(self.storage / "results" / str(job.id)),
            job.id,
            key,
        )
        started = time.perf_counter()
        try:
            if self.sandbox is not None:
                state, urgency, result = self.sandbox.call(run_job, *request)
            else:
                state, urgency, result = run_job(self.models, *request)
            result["processing_seconds"] = round(time.perf_counter() - started, 3)  # reading to SR, SC and FHIR
            if self.pacs is not None and study["source"] == "orthanc":  # results go back where the study came from
                self.pacs.store(
                    [Path(result["outputs"][k]) for k in ("sr", "heatmap", "seg") if k in result["outputs"]]
                )
                result["stored_in_pacs"] = True
        except (PacsError, JobCrashed) as exc:  # the PACS is down or busy, or the job's process died: worth another try
            self._retry_or_fail(job, f"{type(exc).__name__}: {exc}")
            return
        except JobError as exc:
            if exc.user_error:
                self._fail(job, exc)
            else:
                self._retry_or_fail(job, str(exc))
            return
        except MedlensError as exc:  # the study itself is the problem: retrying will not help
            self._fail(job, exc)
            return
        except Exception as exc:  # possibly transient
            self._retry_or_fail(job, f"{type(exc).__name__}: {str(exc)[:300]}")
            return
        observation = result.pop("observation", None)
        result["version"] = job.version
        if not self.store.finish(job.id, state, result, urgency=urgency, version=job.version):
            log.info("job %d: more instances arrived while it ran; queued again over all of them", job.id)
            return
        if observation is not None:
            self.store.add_observation(job.id, job.model, observation)
        log.info("job %d %s (urgency %.3f)", job.id, state, urgency)

    def _fail(self, job: Job, exc: Exception) -> None:
        if not self.store.finish(job.id, "failed", None, reason=str(exc), version=job.version):
            return
        log.warning("job %d failed: %s", job.id, type(exc).__name__)

    def _retry_or_fail(self, job: Job, reason: str) -> None:
        if job.attempts >= self.options.max_attempts:
            self.store.finish(
                job.id,
                "failed",
                None,
                reason=f"gave up after {job.attempts} attempts; last error {reason}",
                version=job.version,
            )
        else:
            self.store.retry_later(job.id, reason, self.options.backoff_seconds * 2 ** (job.attempts - 1))
        log.warning("job %d attempt %d failed (%s)", job.id, job.attempts, reason.split(":")[0])


def run_job(
    models: dict[str, ServedModel], name: str, storage: str, folder: str, out_dir: str, job_id: int, key: str
) -> tuple[str, float, dict[str, Any]]:
    """One job on a study's stored instances: in the sandbox's child process, or in this one."""
    model, files = models[name], instance_files(Path(storage), folder)
    for file in files:  # the child logs too: it must know whom not to name
        try:
            remember_identifiers(pydicom.dcmread(file, stop_before_pixels=True))
        except Exception:  # unreadable headers are the job's to report
            continue
    if model.kind == "segmenter":
        return run_segmentation(model, Path(storage) / folder, Path(out_dir), job_id, key)
    if model.kind == "detector":
        return run_detection(model, files, Path(out_dir), job_id, key)
    return run_classification(model, files, Path(out_dir), job_id, key)
