"""Studies in: DICOM instances from a STOW-RS upload (or a PACS poll) stored safely, then routed to jobs.

Each instance is parsed with pydicom *before* it is accepted; one that does
not parse, or lacks the UIDs a study needs, is kept in ``quarantine/`` with a
``.reason.txt`` beside it and reported back, and the others go on. Stored
files are written to a temporary name, flushed to disk and renamed, so a crash
never leaves half a file under a real name. Folder and file names are hashes
of the UIDs: nothing identifying lands in paths or logs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from medlens.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    stored: list[dict[str, str]] = field(default_factory=list)  # {"sop_instance_uid", "study_uid"}
    failed: list[dict[str, str]] = field(default_factory=list)  # {"part", "reason"}
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)  # study UID -> folder, info, count


def split_multipart_related(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a ``multipart/related; type="application/dicom"`` body (STOW-RS, DICOM PS3.18 10.5).

    Split on the boundary bytes (RFC 2046), not with the ``email`` parser, which
    is not binary-safe: it rewrites line endings inside DICOM payloads.
    """
    if not re.match(r"\s*multipart/related", content_type or "", re.I):
        raise DataError(f"STOW-RS needs Content-Type multipart/related; type=\"application/dicom\", got {content_type!r}")
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        raise DataError("STOW-RS Content-Type has no boundary parameter; add one (e.g. boundary=medlens)")
    delimiter = b"--" + found.group(1).strip().encode()
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise DataError("the STOW-RS body does not match its boundary (no closing delimiter); check the multipart encoding")
    parts = []
    for chunk in chunks[1:-1]:
        head, sep, payload = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise DataError("a STOW-RS part has no header block; each part needs Content-Type: application/dicom")
        kind = re.search(rb"content-type:\s*([^\s;]+)", head, re.I)
        if kind is None or kind.group(1).lower() != b"application/dicom":
            raise DataError(f"STOW-RS part of type {kind.group(1).decode(errors='replace') if kind else 'none'!r}: "
                            "only application/dicom instances are accepted")
        parts.append(payload.removesuffix(b"\r\n"))
    return parts


def store_instances(parts: list[bytes], storage: Path) -> IngestReport:
    """Parse, check and store each instance under ``storage/studies/<hash>/``; bad ones go to quarantine."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    report = IngestReport()
    for index, data in enumerate(parts):
        try:
            ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
            study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
            _ = ds.SeriesInstanceUID
        except (InvalidDicomError, AttributeError, ValueError, EOFError, OSError) as exc:
            reason = f"not a readable DICOM instance with Study/Series/SOP Instance UIDs ({type(exc).__name__}: {exc})"
            _quarantine(storage, data, reason)
            report.failed.append({"part": str(index), "reason": reason})
            continue
        folder = Path("studies") / _digest(study_uid)
        _write_atomically(storage / folder / f"{_digest(sop_uid)}.dcm", data)
        entry = report.studies.setdefault(study_uid, {"folder": str(folder), "info": _study_info(ds), "count": 0})
        entry["count"] += 1
        report.stored.append({"sop_instance_uid": sop_uid, "study_uid": study_uid})
    return report


def instance_files(storage: Path, folder: str) -> list[Path]:
    return sorted((storage / folder).glob("*.dcm"))


def _study_info(ds: Any) -> dict[str, Any]:
    return {"modality": str(ds.get("Modality", "") or ""), "body_part": str(ds.get("BodyPartExamined", "") or ""),
            "description": str(ds.get("SeriesDescription", "") or ds.get("StudyDescription", "") or "")}


def _digest(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself must survive a power cut too
    finally:
        os.close(directory)


def _quarantine(storage: Path, data: bytes, reason: str) -> Path:
    name = hashlib.sha256(data).hexdigest()[:32]
    path = storage / "quarantine" / f"{name}.bin"
    _write_atomically(path, data)
    (path.parent / f"{name}.reason.txt").write_text(reason + "\n")
    log.warning("quarantined an instance (%d bytes): %s", len(data), reason)
    return path
