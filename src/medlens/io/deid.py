"""De-identification: DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile.

The per-attribute action table (D, Z, X, U and the combined codes) is not typed
in here: it comes from ``dicom-anonymizer`` (KitwareMedical, BSD-3-Clause),
which transcribes Table E.1-1 of the standard (edition 2026c). medlens applies it
with its own choices, written down because the standard leaves them open:

- combined codes take the option that keeps the file valid without keeping data:
  X/Z and Z/D -> Z (empty), X/D and X/Z/D -> D (dummy), X/Z/U* -> remap UIDs inside;
- PatientName and PatientID get a pseudonym ``ANON-<10 hex>`` (HMAC of the ID with
  the key), so one key links a patient's studies and nothing else can;
- UIDs are remapped to ``2.25.<n>`` derived from (key, old UID): every reference
  inside a study (and across studies, with the same key) still matches;
- dates are removed or, with ``shift_days``, all shifted by the same days
  (the standard's Retain Longitudinal Temporal Information with Modified Dates option);
- private tags, overlays (60xx) and curves (50xx) are removed; pixels are not
  touched, so BurnedInAnnotation YES (or no tag on modalities that burn in text)
  is reported for a human to check;
- free text that the table reaches only through its sequence (TextValue in an
  SR's ContentSequence, UnformattedTextValue of a presentation state's
  annotations) is replaced by a dummy wherever it occurs: a report's text can
  name anyone, and the structure (codes, measurements) stays usable;
- the file meta's application entity titles and network addresses (Source,
  Sending, Receiving) and private information are removed, and the 128-byte
  preamble is zeroed (it may hold anything: a TIFF header, a message);
- two input files with one SOP Instance UID would be written to one output
  path: the second is reported as a problem, never silently overwrites the first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from medlens import __version__
from medlens.errors import ConfigError, DicomError
from medlens.io.dicom import read_dataset
from medlens.io.series import find_dicom_files

PSEUDONYM = re.compile(r"^ANON-[0-9A-F]{10}$")
DUMMY_TEXT = "ANONYMIZED"
DUMMY_DATE, DUMMY_DATETIME, DUMMY_TIME = "19000101", "19000101000000", "000000"
DUMMIES = {"", DUMMY_TEXT, DUMMY_DATE, DUMMY_DATETIME, DUMMY_TIME, "ANONYMOUS", "ANON", "0", "000Y", "0.0"}
BURNED_IN_MODALITIES = {"US", "SC", "XA", "RF", "ES", "OT", "DOC", "SM", "XC", "GM"}
COMBINED = {"Z_D_TAGS": "Z", "X_Z_TAGS": "Z", "X_D_TAGS": "D", "X_Z_D_TAGS": "D", "X_Z_U_STAR_TAGS": "U*"}
PROFILE_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)


@dataclass(frozen=True)
class DeidOptions:
    """``key`` makes pseudonyms and UIDs repeatable across runs (keep it secret); ``shift_days`` keeps intervals."""

    key: str | None = None
    shift_days: int | None = None


@dataclass
class DeidContext:
    key: bytes
    shift_days: int | None
    actions: Counter = field(default_factory=Counter)


def profile_actions() -> tuple[dict[int, str], list[tuple[int, int, int, int, str]]]:
    """The basic-profile action per tag (``X``, ``Z``, ``D``, ``U``, ``U*``), and the masked repeating groups."""
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table

    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, code in [("X_TAGS", "X"), ("Z_TAGS", "Z"), ("D_TAGS", "D"), ("U_TAGS", "U"), *COMBINED.items()]:
        for entry in getattr(table, category):
            if len(entry) == 2:
                exact[Tag(entry[0], entry[1])] = code
            else:
                masked.append((*entry, code))
    return exact, masked


_EXACT, _MASKED = profile_actions()
FREE_TEXT = {
    Tag("TextValue"): "D",
    Tag("UnformattedTextValue"): "D",
}  # reached by the table only through their sequence
_EXACT.update(FREE_TEXT)
META_IDENTIFYING = (
    "SourceApplicationEntityTitle",
    "SendingApplicationEntityTitle",
    "ReceivingApplicationEntityTitle",
    "SourcePresentationAddress",
    "SendingPresentationAddress",
    "ReceivingPresentationAddress",
    "PrivateInformationCreatorUID",
    "PrivateInformation",
)


def action_for(tag: BaseTag) -> str | None:
    if tag in _EXACT:
        return _EXACT[tag]
    if tag.group & 0xFF00 in (0x5000, 0x6000) and tag.group % 2 == 0:
        return "X"  # curves and overlays, whole groups: overlay planes can carry burned-in text
    return None


def deidentify_dataset(ds: Dataset, ctx: DeidContext) -> None:
    """Apply the profile in place, nested sequences included, then mark the dataset as de-identified."""
    original_id = str(ds.get("PatientID", "")) or str(ds.get("PatientName", ""))
    _apply(ds, ctx)
    ds.remove_private_tags()
    pseudonym = "ANON-" + _digest(ctx.key, "patient:" + original_id)[:10].upper()
    ds.PatientName, ds.PatientID = pseudonym, pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "MODIFIED" if ctx.shift_days is not None else "REMOVED"
    ds.DeidentificationMethod = f"medlens {__version__}: DICOM PS3.15 Annex E basic profile"
    ds.DeidentificationMethodCodeSequence = Sequence(
        [_code(c, m) for c, m in PROFILE_CODES[: 2 if ctx.shift_days is not None else 1]]
    )
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for keyword in META_IDENTIFYING:
            if keyword in meta:
                ctx.actions[(keyword, "X")] += 1
                delattr(meta, keyword)
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if getattr(ds, "preamble", None) and any(ds.preamble):
        ctx.actions[("preamble", "Z")] += 1
    ds.preamble = b"\0" * 128


def read_key_file(path: Path) -> str:
    """The secret key from a file, or a ConfigError saying what is wrong (never a traceback that could show it)."""
    try:
        key = Path(path).read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"--key-file {path}: no such file; create it with a long random secret "
            "(e.g. `openssl rand -hex 32 > secret.txt`) and keep it safe"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"--key-file {path}: cannot be read as text ({type(exc).__name__}); give a text file with the key"
        ) from None
    if not key:
        raise ConfigError(f"--key-file {path}: the file is empty; put a long random secret in it")
    return key


def _apply(ds: Dataset, ctx: DeidContext) -> None:
    for element in list(ds):
        action = action_for(element.tag)
        if element.tag.is_private:
            continue  # removed wholesale afterwards
        if action is None:
            if element.VR == "SQ":
                for item in element.value:
                    _apply(item, ctx)
            continue
        ctx.actions[(element.keyword or str(element.tag), action)] += 1
        if ctx.shift_days is not None and element.VR in ("DA", "DT") and element.value:
            element.value = _shift(str(element.value), element.VR, ctx.shift_days)
        elif action == "X":
            del ds[element.tag]
        elif action in ("U", "U*"):
            _remap_uids(element, ctx)
        elif element.VR == "SQ":
            for item in element.value:
                _apply(item, ctx)
        elif action == "Z":
            element.value = "" if element.VR not in ("OB", "OW", "UN") else b""
        else:
            element.value = _dummy(element.VR)


def _remap_uids(element: Any, ctx: DeidContext) -> None:
    if element.VR == "SQ":
        for item in element.value:
            _apply(item, ctx)
            for sub in item:
                if sub.VR == "UI" and action_for(sub.tag) is None and sub.value and not _well_known(str(sub.value)):
                    sub.value = remap_uid(str(sub.value), ctx.key)
        return
    if element.VR != "UI" or not element.value:
        return
    values = element.value if element.VM > 1 else [element.value]
    new = [remap_uid(str(v), ctx.key) for v in values]
    element.value = new if element.VM > 1 else new[0]


def remap_uid(uid: str, key: bytes) -> str:
    """The same old UID and key give the same new ``2.25.`` UID, so references across files still match."""
    digest = hmac.new(key, ("uid:" + uid).encode(), hashlib.sha256).digest()
    return "2.25." + str(uuid.UUID(bytes=digest[:16], version=4).int)


def _well_known(uid: str) -> bool:
    return uid.startswith("1.2.840.10008.")  # SOP classes, transfer syntaxes: standard, not identifying


def _dummy(vr: str) -> Any:
    if vr == "DA":
        return DUMMY_DATE
    if vr == "DT":
        return DUMMY_DATETIME
    if vr == "TM":
        return DUMMY_TIME
    if vr == "PN":
        return "ANONYMOUS"
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
        return 0
    if vr in ("IS", "DS"):
        return "0"
    if vr == "AS":
        return "000Y"
    if vr in ("CS", "AE"):
        return "ANON"
    if vr in ("OB", "OW", "UN", "OD", "OF", "OL", "OV"):
        return b""
    return DUMMY_TEXT


def _shift(value: str, vr: str, days: int) -> str:
    try:
        day = dt.datetime.strptime(value[:8], "%Y%m%d") + dt.timedelta(days=days)
    except ValueError:
        return DUMMY_DATE if vr == "DA" else DUMMY_DATETIME
    return day.strftime("%Y%m%d") + (value[8:] if vr == "DT" else "")


def _digest(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def make_context(options: DeidOptions) -> DeidContext:
    key = options.key.encode() if options.key else secrets.token_bytes(32)
    return DeidContext(key=key, shift_days=options.shift_days)


def burned_in_risk(ds: Dataset) -> str | None:
    """Why a human should look at the pixels, or None: the profile cannot clean text burned into the image."""
    flag = str(ds.get("BurnedInAnnotation", "")).upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    if not flag and str(ds.get("Modality", "")) in BURNED_IN_MODALITIES:
        return f"no BurnedInAnnotation tag on a {ds.get('Modality')} image, which often has text in the pixels"
    return None


def deidentify_tree(source: str | Path, out_dir: str | Path, options: DeidOptions = DeidOptions()) -> dict[str, Any]:
    """De-identify every DICOM file below ``source`` into ``out_dir/<study>/<series>/<instance>.dcm``.

    Output paths are built from the new UIDs, never from input names (folders are
    often named after the patient). Bad files are listed and skipped. The report
    (``deid_report.json``) counts actions per attribute and holds no values.
    """

    out = Path(out_dir)
    ctx = make_context(options)
    written, problems, burned, sources = 0, [], [], {}
    for path in find_dicom_files(source):
        try:
            ds = read_dataset(path)
            if "SOPInstanceUID" not in ds:
                raise DicomError(f"{path}: no SOPInstanceUID; not a DICOM instance that can be de-identified")
            deidentify_dataset(ds, ctx)
            target = (
                out
                / _short_uid(ds.get("StudyInstanceUID"))
                / _short_uid(ds.get("SeriesInstanceUID"))
                / f"{ds.SOPInstanceUID}.dcm"
            )
            if target in sources:
                raise DicomError(
                    f"{path}: has the same SOP Instance UID as {sources[target]}, so both would be written to one "
                    "file; the first was kept and this one was not written: give each instance its own UID"
                )
            sources[target] = path
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target, enforce_file_format=True)
            written += 1
            risk = burned_in_risk(ds)
            if risk:
                burned.append({"file": str(target.relative_to(out)), "reason": risk})
        except DicomError as exc:
            problems.append({"file": str(path), "message": str(exc)})
        except Exception as exc:  # a header pydicom parses but cannot write back: report, go on with the rest
            problems.append(
                {"file": str(path), "message": f"{path}: cannot write the de-identified copy ({str(exc)[:200]})"}
            )
    changes = sorted(
        ({"attribute": k, "action": a, "count": n} for (k, a), n in ctx.actions.items()), key=lambda c: c["attribute"]
    )
    report = {
        "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
        "dates": f"shifted by {options.shift_days} days"
        if options.shift_days is not None
        else "removed or replaced by dummies",
        "uids": "remapped to 2.25.<uuid> from (key, old UID)",
        "private_tags": "removed",
        "overlays_curves": "removed",
        "files_written": written,
        "changes": changes,
        "burned_in_check": burned,
        "problems": problems,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "deid_report.json").write_text(json.dumps(report, indent=2))
    return report


def verify_tree(path: str | Path) -> dict[str, Any]:
    """Find identifiers left in DICOM files: attributes the profile removes or blanks that still hold data.

    Findings name the file and the attribute, never its value. A value counts as
    clean when it is empty, a dummy, a medlens pseudonym, a ``2.25.`` UID, or a
    date in a file marked as date-shifted.
    """

    findings: list[dict[str, str]] = []
    checked, seen = 0, {}
    for file in find_dicom_files(path):
        if file.name == "deid_report.json":
            continue
        try:
            ds = read_dataset(file, pixels=False)
        except DicomError as exc:
            findings.append({"file": str(file), "attribute": "-", "problem": f"unreadable: {exc}"})
            continue
        checked += 1
        shifted = str(ds.get("LongitudinalTemporalInformationModified", "")) == "MODIFIED"
        try:
            problems = _leftovers(ds, shifted) + _meta_leftovers(ds)
            uid = str(ds.get("SOPInstanceUID", ""))
        except Exception as exc:  # a value pydicom cannot convert: the file cannot be shown clean
            problems, uid = [("-", f"header value unreadable ({type(exc).__name__}); cannot verify this file")], ""
        if uid and uid in seen:
            problems.append(
                ("SOPInstanceUID", f"shared with {seen[uid]}: two instances that a PACS would store as one")
            )
        seen.setdefault(uid, str(file))
        if str(ds.get("PatientIdentityRemoved", "")) != "YES":
            problems.append(("PatientIdentityRemoved", "not YES: the file does not claim to be de-identified"))
        risk = burned_in_risk(ds)
        if risk:
            problems.append(("BurnedInAnnotation", risk))
        findings.extend({"file": str(file), "attribute": a, "problem": p} for a, p in problems)
    return {"files_checked": checked, "findings": findings, "clean": not findings}


def _meta_leftovers(ds: Dataset) -> list[tuple[str, str]]:
    """The file meta's AE titles and addresses, and a preamble that is not zeros (values never shown)."""
    meta = getattr(ds, "file_meta", None)
    found = [
        (k, "file meta holds it; the de-identified copy must not")
        for k in META_IDENTIFYING
        if meta is not None and meta.get(k)
    ]
    if getattr(ds, "preamble", None) and any(ds.preamble):
        found.append(("preamble", "the 128-byte preamble holds data (zero it)"))
    return found


def _leftovers(ds: Dataset, shifted: bool) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for element in ds:
        name = element.keyword or str(element.tag)
        if element.tag.is_private:
            found.append((name, "private tag present"))
            continue
        action = action_for(element.tag)
        if element.VR == "SQ":
            for item in element.value:
                found.extend(_leftovers(item, shifted))
            if action == "X" and element.value:
                found.append((name, "should be removed (X)"))
            continue
        if action is None or element.value in (None, "", b""):
            continue
        value = str(element.value)
        if action in ("U", "U*"):
            uids = element.value if element.VM > 1 else [element.value]
            if any(not str(u).startswith("2.25.") for u in uids):
                found.append((name, "UID not remapped"))
        elif element.VR in ("DA", "DT") and shifted:
            continue
        elif action == "X" and element.tag.group & 0xFF00 in (0x5000, 0x6000):
            found.append((name, "overlay or curve present"))
        elif value not in DUMMIES and not PSEUDONYM.match(value):
            found.append((name, f"holds data; the basic profile says {action}"))
    return found


def _short_uid(uid: Any) -> str:
    return str(uid or "unknown")[-16:].lstrip(".")
