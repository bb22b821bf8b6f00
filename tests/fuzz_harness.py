"""A fuzz harness for the DICOM reader and the STOW-RS upload parser (not a test module).

Cases are mutations of real files, each fixed by one integer seed so any
finding can be replayed: byte flips (in the header and anywhere), truncation,
corrupt values of the tags the reader trusts (Rows, Columns, NumberOfFrames,
BitsAllocated, RescaleSlope, transfer syntax...), corrupt length fields,
deeply nested sequences, and for uploads broken multipart framing. Every case
runs in a child process (:class:`medlens.serve.sandbox.Sandbox`), so an abort
of a native decoder and a hang (over ``timeout_seconds``) are counted, not
suffered. An outcome is ``ok`` (read, or refused with a MedlensError),
``escape`` (any other exception: a bug), ``abort`` or ``hang``.

Used by tests/test_fuzz.py (a short budget) and benchmarks/fuzz.py (long runs).
"""

from __future__ import annotations

import random
import shutil
import struct
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless

from medlens.errors import DataError, MedlensError
from medlens.io.dicom import read_dicom
from medlens.io.dicom_guard import DicomLimits
from medlens.io.series import read_dicom_volumes
from medlens.serve.ingest import split_multipart_related, store_instances
from medlens.serve.sandbox import JobCrashed, JobError, Sandbox

TRUSTED_TAGS = [
    (0x0028, 0x0010),
    (0x0028, 0x0011),
    (0x0028, 0x0008),
    (0x0028, 0x0100),
    (0x0028, 0x0101),
    (0x0028, 0x0102),
    (0x0028, 0x0002),
    (0x0028, 0x0103),
    (0x0028, 0x1053),
    (0x0028, 0x1052),
    (0x0028, 0x0004),
    (0x0002, 0x0010),
    (0x0020, 0x0032),
    (0x0020, 0x0037),
    (0x0028, 0x0030),
    (0x0020, 0x0011),
    (0x0020, 0x000D),
    (0x0020, 0x000E),
    (0x0008, 0x0018),
    (0x7FE0, 0x0010),
    (0x0010, 0x0010),
    (0x0008, 0x0060),
]
NASTY_VALUES = [
    b"0",
    b"-1",
    b"65535",
    b"4294967295",
    b"1e40",
    b"9" * 40,
    b"nan",
    b"inf",
    b"",
    b"\x00\x00",
    b"\xff\xfe\xfd",
    b"<img src=x onerror=alert(1)>",
    b"1.2.840.10008.1.2.1.99",
    b"1.2.840.10008.1.2.4.90",
    b"\\" * 30,
]
LIMITS = DicomLimits(max_inflated_bytes=64 << 20, max_pixel_bytes=1 << 30)


@dataclass
class Corpus:
    """Real files as bytes (the seeds every mutation starts from) and a scratch folder for the child."""

    files: list[tuple[str, bytes]]
    scratch: Path


@dataclass
class Tally:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    escapes: Counter = field(default_factory=Counter)  # exception type -> count
    findings: list[dict[str, Any]] = field(default_factory=list)  # seed, outcome, detail (first 50)
    seconds: float = 0.0

    def add(self, seed: int, outcome: str, detail: str = "") -> None:
        self.cases += 1
        self.outcomes[outcome] += 1
        if outcome != "ok" and len(self.findings) < 50:
            self.findings.append({"seed": seed, "outcome": outcome, "detail": detail[:300]})

    def as_dict(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "outcomes": dict(self.outcomes),
            "escapes_by_type": dict(self.escapes),
            "findings": self.findings,
            "seconds": round(self.seconds, 1),
        }


def corpus_sources(data_dir: Path) -> list[Path]:
    dicom = data_dir / "dicom"
    return (
        sorted((dicom / "mr_transfer_syntaxes").glob("*.dcm")) + sorted((dicom / "ct_kits_slices").glob("CT2*.dcm"))[:2]
    )


def build_corpus(data_dir: str) -> Corpus:
    """The seeds: every transfer syntax of a real MR slice, real CT slices, a real chest radiograph as CR
    (uncompressed, JPEG 2000 and deflated)."""
    from medlens.serve.samples import write_cr_study

    scratch = Path(tempfile.mkdtemp(prefix="medlens-fuzz-"))
    files = [(p.name, p.read_bytes()) for p in corpus_sources(Path(data_dir))]
    image = sorted((Path(data_dir) / "cxr_kermany_224" / "test").rglob("*.jpeg"))[0]
    cr = write_cr_study(image, scratch / "cr.dcm", "FUZZ1")
    ds = pydicom.dcmread(cr)  # fixed UIDs and dates, so a seed replays the same bytes on any day
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "2.25.1001", "2.25.1002"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1003"
    ds.StudyDate = ds.SeriesDate = "20260101"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.save_as(cr, enforce_file_format=True)
    files.append(("cr.dcm", cr.read_bytes()))
    ds = pydicom.dcmread(cr)
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    ds.save_as(scratch / "cr_j2k.dcm")
    files.append(("cr_j2k.dcm", (scratch / "cr_j2k.dcm").read_bytes()))
    ds = pydicom.dcmread(cr)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(scratch / "cr_deflated.dcm", enforce_file_format=True)
    files.append(("cr_deflated.dcm", (scratch / "cr_deflated.dcm").read_bytes()))
    return Corpus(files, scratch)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three mutations of one file."""
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3))):
        out = rng.choice(MUTATORS)(out, rng)
    return bytes(out)


def _flip_header(b: bytearray, rng: random.Random) -> bytearray:
    for _ in range(rng.randint(1, 8)):
        b[rng.randrange(min(len(b), 3000))] = rng.randrange(256)
    return b


def _flip_anywhere(b: bytearray, rng: random.Random) -> bytearray:
    for _ in range(rng.randint(1, 32)):
        b[rng.randrange(len(b))] = rng.randrange(256)
    return b


def _truncate(b: bytearray, rng: random.Random) -> bytearray:
    return b[: rng.randrange(len(b))]


def _tag_offsets(b: bytes, group: int, element: int) -> list[int]:
    found, start = [], 0
    for needle in (struct.pack("<HH", group, element), struct.pack(">HH", group, element)):
        start = 0
        while (i := b.find(needle, start, 20000 if group != 0x7FE0 else len(b))) >= 0:
            found.append(i)
            start = i + 1
    return found


def _corrupt_value(b: bytearray, rng: random.Random) -> bytearray:
    offsets = _tag_offsets(b, *rng.choice(TRUSTED_TAGS))
    if not offsets:
        return _flip_header(b, rng)
    at = rng.choice(offsets)
    value = rng.choice(NASTY_VALUES)
    return b[: at + 8] + value + b[at + 8 + len(value) :] if rng.random() < 0.5 else b[: at + 8] + value + b[at + 8 :]


def _corrupt_length(b: bytearray, rng: random.Random) -> bytearray:
    offsets = _tag_offsets(b, *rng.choice(TRUSTED_TAGS))
    if not offsets:
        return _flip_anywhere(b, rng)
    at = rng.choice(offsets)
    length = rng.choice([0, 1, 3, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(1 << 32)])
    where = at + rng.choice((4, 6, 8))
    b[where : where + 4] = struct.pack("<I", length)
    return b


def _nest_sequences(b: bytearray, rng: random.Random) -> bytearray:
    """Deeply nested undefined-length sequences (ContentSequence) inserted before the pixel data."""
    depth = rng.choice((2, 50, 500, 5000))
    opening = (
        struct.pack("<HH", 0x0040, 0xA730)
        + b"SQ\x00\x00"
        + b"\xff\xff\xff\xff"
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    )
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    body = opening * depth + (closing * depth if rng.random() < 0.7 else b"")
    pixels = _tag_offsets(b, 0x7FE0, 0x0010)
    at = pixels[-1] if pixels else rng.randrange(len(b))
    return b[:at] + body + b[at:]


MUTATORS = [_flip_header, _flip_anywhere, _truncate, _corrupt_value, _corrupt_value, _corrupt_length, _nest_sequences]


def reader_case(corpus: Corpus, seed: int) -> str:
    """Read one mutated file as the CLI and the service do: the series reader, then the classifier's reader."""
    rng = random.Random(seed)
    _, data = rng.choice(corpus.files)
    path = corpus.scratch / f"reader-{seed % 8}.dcm"
    path.write_bytes(mutate(data, rng))
    try:
        read_dicom_volumes(path)
    except MedlensError:
        pass
    try:
        read_dicom(path)
    except MedlensError:
        pass
    return "ok"


def upload_case(corpus: Corpus, seed: int) -> str:
    """Parse one mutated STOW-RS request and store it: only a DataError for the framing may escape, and every
    stored instance must be on disk (none half-written, none missing)."""
    rng = random.Random(seed)
    instances = [mutate(d, rng) if rng.random() < 0.85 else d for _, d in rng.sample(corpus.files, rng.randint(1, 3))]
    boundary = "medlens-fuzz"
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + i + b"\r\n" for i in instances
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    if rng.random() < 0.15:  # the framing itself
        body = (
            bytes(_flip_anywhere(bytearray(body[:4000]), rng)) + body[4000:]
            if rng.random() < 0.5
            else body[: rng.randrange(len(body))]
        )
    storage = corpus.scratch / "storage"
    try:
        parts = split_multipart_related(body, content_type)
    except DataError:
        return "ok"
    try:
        report = store_instances(parts, storage, LIMITS)
        stored = {p.name for p in (storage / "studies").rglob("*.dcm")} if (storage / "studies").is_dir() else set()
        if len(report.stored) + len(report.failed) != len(parts) or (report.stored and not stored):
            raise AssertionError(
                f"{len(parts)} parts, {len(report.stored)} stored, {len(report.failed)} failed, {len(stored)} on disk"
            )
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    return "ok"


def run(
    target: str, seeds: range, data_dir: str, timeout_seconds: float = 10.0, budget_seconds: float | None = None
) -> Tally:
    """Run ``target`` ("reader" or "upload") on each seed in a child process; stops early when the budget is spent."""
    fn = {"reader": reader_case, "upload": upload_case}[target]
    sandbox, tally, start = Sandbox(build_corpus, (data_dir,), timeout_seconds), Tally(), time.monotonic()
    sandbox.call(_ping)  # start-up (imports, corpus) is not charged to the first case's time limit
    try:
        for seed in seeds:
            if budget_seconds is not None and time.monotonic() - start > budget_seconds:
                break
            try:
                tally.add(seed, sandbox.call(fn, seed))
            except JobError as exc:
                tally.escapes[exc.kind] += 1
                tally.add(seed, "escape", f"{exc.kind}: {exc}")
            except JobCrashed as exc:
                tally.add(seed, "hang" if exc.timed_out else "abort", str(exc))
                sandbox.call(_ping)
    finally:
        sandbox.close()
        tally.seconds = time.monotonic() - start
    return tally


def _ping(corpus: Corpus) -> int:
    return len(corpus.files)
