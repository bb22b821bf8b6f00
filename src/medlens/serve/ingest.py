"""Studies in: DICOM instances from a STOW-RS upload (or a PACS poll) stored safely, then routed to jobs.

Each instance is parsed with pydicom *before* it is accepted; one that does
not parse, lacks the UIDs a study needs, or asks for more than the service's
limits (a deflated dataset that inflates past them, a header describing more
pixel data than allowed or than the part holds) is kept in ``quarantine/``
with a ``.reason.txt`` beside it and reported back, and the others go on.
Whatever the parser raises is caught per part. Storing is idempotent by SOP
Instance UID: an instance sent again replaces its file and is not counted
twice. Identifying header values are handed to the PHI log filter. Stored
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

import pydicom

from medlens.errors import DataError, DicomError
from medlens.io.dicom import check_numeric_tags
from medlens.io.dicom_guard import DEFAULT_LIMITS, DicomLimits, check_deflate_bomb
from medlens.phi import redact, remember_identifiers

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    stored: list[dict[str, str]] = field(default_factory=list)  # {"sop_instance_uid", "study_uid"}
    failed: list[dict[str, str]] = field(default_factory=list)  # {"part", "reason"}
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)  # study UID -> folder, info, count (new), resent


def split_multipart_related(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a ``multipart/related; type="application/dicom"`` body (STOW-RS, DICOM PS3.18 10.5).

    Split on the boundary bytes (RFC 2046), not with the ``email`` parser, which
    is not binary-safe: it rewrites line endings inside DICOM payloads.
    """
    if not re.match(r"\s*multipart/related", content_type or "", re.I):
        raise DataError(f'STOW-RS needs Content-Type multipart/related; type="application/dicom", got {content_type!r}')
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        raise DataError("STOW-RS Content-Type has no boundary parameter; add one (e.g. boundary=medlens)")
    delimiter = b"--" + found.group(1).strip().encode()
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise DataError(
            "the STOW-RS body does not match its boundary (no closing delimiter); check the multipart encoding"
        )
    parts = []
    for chunk in chunks[1:-1]:
        head, sep, payload = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise DataError("a STOW-RS part has no header block; each part needs Content-Type: application/dicom")
        kind = re.search(rb"content-type:\s*([^\s;]+)", head, re.I)
        if kind is None or kind.group(1).lower() != b"application/dicom":
            raise DataError(
                f"STOW-RS part of type {kind.group(1).decode(errors='replace') if kind else 'none'!r}: "
                "only application/dicom instances are accepted"
            )
        parts.append(payload.removesuffix(b"\r\n"))
    return parts


def store_instances(parts: list[bytes], storage: Path, limits: DicomLimits = DEFAULT_LIMITS) -> IngestReport:
    """Parse, check and store each instance under ``storage/studies/<hash>/``; bad ones go to quarantine.

    Every part is parsed before any is written, so a request never leaves a stored file without its study row.
    """
    report, parsed = IngestReport(), []
    for index, data in enumerate(parts):
        try:
            parsed.append((data, *_parse_instance(data, f"part {index}", limits)))
        except DataError as exc:
            _quarantine(storage, data, str(exc))
            report.failed.append({"part": str(index), "reason": str(exc)})
    for data, _, study_uid, sop_uid, info in parsed:
        folder = Path("studies") / _digest(study_uid)
        path = storage / folder / f"{_digest(sop_uid)}.dcm"
        resent = path.is_file()
        _write_atomically(path, data)
        entry = report.studies.setdefault(
            study_uid, {"folder": str(folder), "info": info, "count": 0, "resent": 0, "new": []}
        )
        entry["resent" if resent else "count"] += 1
        if not resent:
            entry["new"].append(info)  # what each new instance is, so only the models that read it run again
        report.stored.append({"sop_instance_uid": sop_uid, "study_uid": study_uid})
    return report


def _parse_instance(data: bytes, where: str, limits: DicomLimits) -> tuple[Any, str, str, dict[str, Any]]:
    """(header, study UID, SOP instance UID, routing info) of one part, within ``limits``; DataError with the reason otherwise."""
    check_deflate_bomb(data, where, limits)
    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
        remember_identifiers(ds)
        study_uid, sop_uid, series_uid = (
            str(ds.get(k) or "") for k in ("StudyInstanceUID", "SOPInstanceUID", "SeriesInstanceUID")
        )
        info = _study_info(ds)
    except Exception as exc:  # pydicom raises many types on hostile input (struct, NotImplemented, length, Unicode...)
        raise DataError(
            f"{where}: not a readable DICOM instance with Study/Series/SOP Instance UIDs "
            f"({type(exc).__name__}: {redact(str(exc)[:200], foreign=True)})"
        ) from exc
    if not (study_uid and sop_uid and series_uid) or max(len(study_uid), len(sop_uid), len(series_uid)) > 64:
        raise DataError(f"{where}: Study, Series and SOP Instance UIDs must be present and at most 64 characters")
    if "Rows" in ds or "NumberOfFrames" in ds:
        try:
            check_numeric_tags(ds, Path(where), limits, file_bytes=len(data))  # the part's bytes, not a file on disk
        except DicomError:
            raise
        except Exception as exc:
            raise DataError(
                f"{where}: unreadable image header ({type(exc).__name__}); the instance is corrupt"
            ) from exc
    return ds, study_uid, sop_uid, info


def instance_files(storage: Path, folder: str) -> list[Path]:
    return sorted((storage / folder).glob("*.dcm"))


def _study_info(ds: Any) -> dict[str, Any]:
    """What routing reads, cut to the database's column sizes (a hostile header may hold anything)."""
    return {
        "modality": str(ds.get("Modality", "") or "")[:16],
        "body_part": str(ds.get("BodyPartExamined", "") or "")[:64],
        "description": str(ds.get("SeriesDescription", "") or ds.get("StudyDescription", "") or "")[:256],
    }


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
    (path.parent / f"{name}.reason.txt").write_text(redact(reason) + "\n")
    log.warning("quarantined an instance (%d bytes): %s", len(data), reason)
    return path
