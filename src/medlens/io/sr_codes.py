"""What every DICOM SR medlens writes shares (classification findings, detected boxes): SNOMED CT codes for known
findings, a private scheme for the rest, UIDs derived from their parts so a rerun writes the same instances again,
and the TID 1500 measurement report around the measurement groups, marked preliminary and unverified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medlens import __version__

SCHEME = "99MEDLENS"  # private coding scheme for findings a bundle does not map to SNOMED CT
KNOWN_FINDINGS = {
    "pneumonia": ("233604007", "SCT", "Pneumonia"),
    "pneumothorax": ("36118008", "SCT", "Pneumothorax"),
    "intracranial haemorrhage": ("1386000", "SCT", "Intracranial hemorrhage"),
}
PRESENT, ABSENT = ("52101004", "SCT", "Present"), ("2667000", "SCT", "Absent")
IMAGING_STUDY = ("18748-4", "LN", "Diagnostic imaging study")
FHIR_SYSTEMS = {"SCT": "http://snomed.info/sct", "LN": "http://loinc.org", SCHEME: "urn:medlens:finding"}


def finding_code(name: str, codes: dict[str, list[str]] | None = None) -> tuple[str, str, str]:
    """(value, scheme, meaning) for a finding: the bundle's mapping, a known SNOMED CT code, or a private code."""
    if codes and name in codes:
        value, scheme, meaning = codes[name]
        return str(value), str(scheme), str(meaning)
    return KNOWN_FINDINGS.get(name.lower(), (name[:16], SCHEME, name))


def uid_for(*parts: str) -> str:
    """A DICOM UID that is the same every time for the same parts (2.25 + a hash)."""
    return str(generate_uid(prefix=None, entropy_srcs=[*parts]))


def concept(code: tuple[str, str, str]) -> hd.sr.CodedConcept:
    """(value, scheme, meaning) as a highdicom coded concept."""
    return hd.sr.CodedConcept(value=code[0], scheme_designator=code[1], meaning=code[2])


def algorithm_of(model: str) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=f"medlens {model}"[:64], version=__version__)


def save_measurement_report(
    evidence: list[Any], groups: list[Any], model: str, key: str, series_number: int, what: str, path: Path
) -> Path:
    """A Comprehensive 3D SR (TID 1500) of ``groups`` about the ``evidence`` datasets, observed by the medlens
    device ``model``, UIDs fixed by ``key``, described as ``medlens MODEL WHAT (preliminary, not verified)``."""
    device = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid_for("medlens-device", model),
            name=f"medlens {model}"[:64],
            manufacturer_name="medlens",
            model_name=model[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=concept(IMAGING_STUDY),
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uid_for(key, "sr-series"),
        series_number=series_number,
        sop_instance_uid=uid_for(key, "sr"),
        instance_number=1,
        manufacturer="medlens",
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = f"medlens {model} {what} (preliminary, not verified)"[:64]
    path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(path)
    return path
