"""A PACS connector for Orthanc: poll its change log for stable studies, fetch them, store results back.

Orthanc announces a study as ``StableStudy`` once no instance has arrived for
its ``StableAge`` seconds. The connector reads ``/changes`` from a cursor kept
in the service's database, so a restart goes on where it stopped and a study
is fetched once; results (SR, Secondary Capture) go back by DICOMweb STOW-RS
(the ``orthanc-dicomweb`` plugin) into the source study, where every viewer
shows them beside the originals, which are never changed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError
from medlens.serve.samples import stow_body

log = logging.getLogger(__name__)


class PacsError(MedlensError):
    """The PACS could not be reached or refused a request (retried: it may pass)."""


class OrthancConnector:
    def __init__(
        self, url: str, username: str | None = None, password: str | None = None, timeout: float = 30.0
    ) -> None:
        import httpx

        auth = (username, password) if username and password else None
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, auth=auth, timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def _get(self, path: str, **params: Any) -> Any:
        import httpx

        try:
            response = self.client.get(path, params=params or None)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise PacsError(f"Orthanc {self.url}{path}: {type(exc).__name__}: {exc}") from exc
        return response

    def stable_studies(self, since: int) -> tuple[list[str], int, bool]:
        """(Orthanc study IDs that became stable after change ``since``, the new cursor, whether the log is read to its end)."""
        changes = self._get("/changes", since=since, limit=100).json()
        ids = [c["ID"] for c in changes.get("Changes", []) if c.get("ChangeType") == "StableStudy"]
        return ids, int(changes.get("Last", since)), bool(changes.get("Done", True))

    def study_instances(self, study_id: str) -> list[bytes]:
        """Every instance of an Orthanc study, as DICOM files."""
        instances = self._get(f"/studies/{study_id}/instances").json()
        return [self._get(f"/instances/{i['ID']}/file").content for i in instances]

    def store(self, files: list[Path]) -> None:
        """STOW-RS the files into Orthanc (its DICOMweb plugin); refused or unreachable raises PacsError."""
        import httpx

        body, content_type = stow_body(files)
        try:
            response = self.client.post(
                "/dicom-web/studies",
                content=body,
                headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise PacsError(
                f"storing {len(files)} result(s) into Orthanc {self.url}: {type(exc).__name__}: {exc}"
            ) from exc


class PacsPoller:
    """Background thread: new stable studies in the PACS become studies and jobs, as STOW-RS uploads do."""

    def __init__(self, pacs: OrthancConnector, ingest: Any, store: Any, poll_seconds: float = 2.0) -> None:
        self.pacs, self.ingest, self.store, self.poll_seconds = pacs, ingest, store, poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="medlens-pacs-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def poll_once(self) -> int:
        """Fetch the studies that became stable since the stored cursor; returns how many were taken in."""
        since = int(self.store.get_setting("orthanc_cursor", "0"))
        taken = 0
        while True:
            ids, last, done = self.pacs.stable_studies(since)
            for study_id in ids:
                self.ingest(self.pacs.study_instances(study_id), "orthanc")
                taken += 1
            self.store.set_setting(
                "orthanc_cursor", str(last)
            )  # after the studies are stored: a crash refetches, never skips
            since = last
            if done:
                return taken

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except PacsError as exc:
                log.warning("PACS poll failed, retrying in %.0f s: %s", self.poll_seconds, exc)
            except Exception:
                log.exception("PACS poll error; retrying")
            self._stop.wait(self.poll_seconds)
