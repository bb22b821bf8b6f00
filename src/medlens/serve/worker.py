"""The job runner: claims the most urgent job, runs it, records the outcome; retries what may pass later.

Runs in a background thread of the service (one job at a time: on a 2-core
machine inference already uses both cores). A bad study fails alone and the
next job runs; an error that may be transient (a file system or network
error, an unexpected exception) is retried with exponential backoff, up to
``max_attempts``, and then the job fails with its reason.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError
from medlens.serve.ingest import instance_files
from medlens.serve.models import ServedModel
from medlens.serve.pacs import PacsError
from medlens.serve.store import Job, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    poll_seconds: float = 0.5
    max_attempts: int = 3
    backoff_seconds: float = 5.0  # 5 s, 10 s, 20 s ...
    lease_seconds: float = 600.0


class Worker:
    def __init__(self, store: Store, models: dict[str, ServedModel], storage: Path, options: WorkerOptions = WorkerOptions(),
                 pacs: Any = None) -> None:
        self.store, self.models, self.storage, self.options, self.pacs = store, models, storage, options, pacs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        requeued = self.store.requeue_abandoned()
        if requeued:
            log.warning("%d job(s) interrupted by a previous stop were queued again", requeued)
        self._thread = threading.Thread(target=self._loop, name="medlens-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

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
        from medlens.serve.process import run_classification, run_segmentation

        model = self.models.get(job.model)
        if model is None:
            self.store.finish(job.id, "failed", None, reason=f"model {job.model!r} is no longer in the registry")
            return
        study = self.store.study(job.study_id)
        try:
            out_dir, key = self.storage / "results" / str(job.id), f"{study['study_uid']}/{job.model}/{job.id}"
            if model.task == "segmentation":
                state, urgency, result = run_segmentation(model, self.storage / study["folder"], out_dir, job.id, key)
            else:
                files = instance_files(self.storage, study["folder"])
                state, urgency, result = run_classification(model, files, out_dir, job.id, key)
            if self.pacs is not None and study["source"] == "orthanc":  # results go back where the study came from
                self.pacs.store([Path(result["outputs"][k]) for k in ("sr", "heatmap", "seg") if k in result["outputs"]])
                result["stored_in_pacs"] = True
        except PacsError as exc:  # the PACS is down or busy: worth another try
            self._retry_or_fail(job, f"PacsError: {exc}")
            return
        except MedlensError as exc:  # the study itself is the problem: retrying will not help
            self.store.finish(job.id, "failed", None, reason=str(exc))
            log.warning("job %d failed: %s", job.id, type(exc).__name__)
            return
        except Exception as exc:  # possibly transient
            self._retry_or_fail(job, f"{type(exc).__name__}: {str(exc)[:300]}")
            return
        observation = result.pop("observation", None)
        self.store.finish(job.id, state, result, urgency=urgency)
        if observation is not None:
            self.store.add_observation(job.id, job.model, observation)
        log.info("job %d %s (urgency %.3f)", job.id, state, urgency)

    def _retry_or_fail(self, job: Job, reason: str) -> None:
        if job.attempts >= self.options.max_attempts:
            self.store.finish(job.id, "failed", None, reason=f"gave up after {job.attempts} attempts; last error {reason}")
        else:
            self.store.retry_later(job.id, reason, self.options.backoff_seconds * 2 ** (job.attempts - 1))
        log.warning("job %d attempt %d failed (%s)", job.id, job.attempts, reason.split(":")[0])
