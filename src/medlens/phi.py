"""One PHI filter for every log line of medlens (CLI, service, job process), dependencies' warnings included.

medlens's own messages never format header values that identify a patient.
Dependencies do (highdicom warns with the PatientName it was given; pydicom
quotes the values it cannot parse), and so can an exception text. So every
log record is rewritten where it is *created* (a log-record factory, the one
place every logger in the process goes through), and Python warnings are routed
into logging first (``logging.captureWarnings``):

- identifiers seen in received headers (:func:`remember_identifiers`: names,
  IDs, dates of birth, accession numbers, UIDs, institution and physician
  names) are replaced wherever they appear, word by word (so a name's parts
  and other spellings of its case are caught too);
- in records from other packages and in warnings, quoted strings, DICOM UIDs
  and caret-separated person names are replaced too, since their values are
  unknown in advance.

:func:`redact` applies the same rule to text bound for the database (a job's
failure reason quotes the file's own header values).
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

REDACTED = "<redacted>"
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "MedicalRecordLocator",
    "IssuerOfPatientID",
    "PatientMotherBirthName",
    "OtherPatientNames",
    "StationName",
)
_MAX_REMEMBERED = 200_000
_MAX_VALUE = 64  # the longest these VRs allow (PN, LO, UI); a longer value is a corrupt read, not an identifier
_MIN_LENGTH = 3  # shorter tokens ("M", "12") are everywhere in text and identify nobody
_TOKEN = re.compile(r"[^\W_](?:[\w.+\-]*[^\W_])?")  # words, numbers, UIDs, IDs like AB-123
_UID = re.compile(r"\b[0-2](?:\.(?:0|[1-9]\d*)){4,}\b")
_PERSON = re.compile(
    r"(?<![^\s'\"^=:,;()])[^\s'\"^=:,;()]++\^[^\s'\"=:,;()]*+"
)  # starts only at a run's start: linear time
_QUOTED = re.compile(r"(?<!File )\"[^\"\n]*\"|'[^'\n]*'")  # not a traceback's file names

# function words that fill medlens's own messages and name nobody (an institution "The ... Hospital" must not blank them)
_COMMON = frozenset("the and for not but with from into that this has have was are its all any one two than".split())
_known: OrderedDict[str, None] = OrderedDict()  # lower-case tokens of remembered values, oldest first
_lock = threading.Lock()
_installed = False


def remember_identifiers(ds: Any) -> None:
    """Add a dataset's identifying values to what every log line hides (each word of a name on its own, too)."""
    values = []
    for keyword in IDENTIFYING:
        try:
            element = ds.get(keyword)
        except Exception:  # a corrupt value cannot be read, so it cannot be logged by medlens either
            continue
        raw = getattr(element, "value", element) if element is not None else None
        values += [
            str(v) for v in (raw if isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)) else [raw]) if v
        ]
    remember_values([v for v in values if len(v) <= _MAX_VALUE])


def remember_values(values: list[str]) -> None:
    """Remember free-text values (marker values in tests, header values in the service) by their tokens."""
    tokens = [
        t.lower() for v in values for t in _TOKEN.findall(str(v)) if len(t) >= _MIN_LENGTH and t.lower() not in _COMMON
    ]
    with _lock:
        for token in tokens:
            _known[token] = None
            _known.move_to_end(token)
        while len(_known) > _MAX_REMEMBERED:
            _known.popitem(last=False)


def redact(text: str, foreign: bool = False) -> str:
    """``text`` without remembered identifiers; ``foreign`` (a dependency's words) also without quoted values, UIDs, names."""
    if foreign:
        text = _QUOTED.sub(lambda m: m.group(0)[0] + REDACTED + m.group(0)[0], text)
        text = _PERSON.sub(REDACTED, _UID.sub(REDACTED, text))
    if _known:
        text = _TOKEN.sub(lambda m: REDACTED if m.group(0).lower() in _known else m.group(0), text)
    return text


def install_phi_filter() -> None:
    """Route warnings into logging and rewrite every record as it is made; safe to call more than once."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not root.handlers:  # a job process: warnings would go to logging's NullHandler for py.warnings and vanish
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            _scrub(record)
        except Exception:  # a record that cannot even be formatted is replaced, never let through
            record.msg, record.args, record.exc_info, record.exc_text = (
                "(log message withheld: could not be checked for PHI)",
                (),
                None,
                None,
            )
        return record

    logging.setLogRecordFactory(factory)


MAX_MESSAGE = 2000  # a hostile header can make a dependency warn with kilobytes of its bytes: no log is flooded


def _scrub(record: logging.LogRecord) -> None:
    foreign = not record.name.startswith("medlens")
    message = record.getMessage()
    if len(message) > MAX_MESSAGE:
        message = f"{message[:MAX_MESSAGE]}... ({len(message) - MAX_MESSAGE} more characters withheld)"
    record.msg, record.args = redact(message, foreign), ()
    if record.exc_info:
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"), True)
        record.exc_info = None
