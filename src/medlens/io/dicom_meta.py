"""Metadata that may leave the reader: technical acquisition tags only, never patient identifiers.

A whitelist, not a blacklist: a tag is copied to a Volume's ``meta`` (and so to
sidecars, logs and ``medlens info``) only if it is named here, and a test checks
that none of these is an attribute the PS3.15 basic de-identification profile
removes or replaces. Free-text descriptions (SeriesDescription, ProtocolName)
are left out because sites type patient names into them.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

TECHNICAL_TAGS = (
    "Modality",
    "SeriesNumber",
    "AcquisitionNumber",
    "ImageType",
    "Manufacturer",
    "ManufacturerModelName",
    "MagneticFieldStrength",
    "EchoTime",
    "RepetitionTime",
    "InversionTime",
    "FlipAngle",
    "EchoNumbers",
    "SliceThickness",
    "SpacingBetweenSlices",
    "KVP",
    "ConvolutionKernel",
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "PatientPosition",
)
UNITS = {"CT": "HU"}


def phi_free_meta(ds: Dataset, n_slices: int, repeat: int = 0) -> dict[str, Any]:
    """Technical tags of one series as JSON-ready values, plus a file-safe ``name`` built from them."""
    meta: dict[str, Any] = {}
    for keyword in TECHNICAL_TAGS:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        meta[keyword] = _json_value(value)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None:
        meta["TransferSyntax"] = getattr(syntax, "name", str(syntax)) or str(syntax)
    meta["units"] = UNITS.get(str(ds.get("Modality", "")), "rescaled stored values")
    meta["n_slices"] = n_slices
    if repeat:
        meta["repeat"] = repeat
    meta["name"] = volume_name(ds, repeat)
    return meta


def volume_name(ds: Dataset, repeat: int = 0) -> str:
    """``MR_s11``, ``MR_s5_e2_ph``, ``CT_s3_r2``: modality, series number, echo, phase, repeat; no free text."""
    number = ds.get("SeriesNumber")
    parts = [str(ds.get("Modality") or "OT")] + ([f"s{number}"] if number not in (None, "") else [])
    echo = ds.get("EchoNumbers")
    if echo not in (None, "", 1, "1"):
        parts.append(f"e{echo}")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])][2:]
    if "PHASE" in image_type or "P" in image_type:
        parts.append("ph")
    if repeat:
        parts.append(f"r{repeat}")
    return "_".join("".join(c if c.isalnum() else "-" for c in p) for p in parts)


def _json_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_json_value(v) for v in value]
    if isinstance(value, (int, float, str)):
        return value if not isinstance(value, str) else str(value)
    try:
        number = float(value)
        return int(number) if number.is_integer() and "." not in str(value) else number
    except (TypeError, ValueError):
        return str(value)
