"""Results out: a DICOM SR (TID 1500 measurement report, highdicom) and a FHIR R4 DiagnosticReport.

Both carry the same findings: for each finding, present or absent at the
bundle's validation-chosen threshold, and the model's probability. Both say
they are preliminary, unverified machine output. UIDs are derived from the
study, the model and the job, so a job redone after a crash writes the same
instances again (a PACS replaces them) instead of new ones.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=None, entropy_srcs=[*parts]))


def write_sr(sources: list[Path], findings: list[dict[str, Any]], model: str, job_key: str, path: Path) -> Path:
    """A Comprehensive 3D SR with one measurement group per finding, referencing the source images."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    evidence = [pydicom.dcmread(p, stop_before_pixels=True) for p in sources]
    device = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid_for("medlens-device", model),
            name=f"medlens {model}"[:64],
            manufacturer_name="medlens",
            model_name=model[:64],
        ),
    )
    algorithm = hd.sr.AlgorithmIdentification(name=f"medlens {model}"[:64], version=__version__)
    groups = []
    for f in findings:
        concept = _concept(f["code"])
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uid_for(job_key, f["name"], "tracking"), identifier=f"medlens {f['name']}"[:64]
                ),
                finding_type=concept,
                algorithm_id=algorithm,
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(evidence[f["image_index"]])],
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(name=concept, value=_concept(PRESENT if f["present"] else ABSENT))
                ],
                measurements=[
                    hd.sr.Measurement(
                        name=hd.sr.CodedConcept("probability", SCHEME, f"Probability of {f['name']}"[:64]),
                        value=round(float(f["probability"]), 4),
                        unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
                        algorithm_id=algorithm,
                    )
                ],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_concept(IMAGING_STUDY),
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uid_for(job_key, "sr-series"),
        series_number=990,
        sop_instance_uid=uid_for(job_key, "sr"),
        instance_number=1,
        manufacturer="medlens",
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = f"medlens {model} AI findings (preliminary, not verified)"[:64]
    path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(path)
    return path


def fhir_report(study: Any, findings: list[dict[str, Any]], model: str, job_id: int, refer: bool) -> dict[str, Any]:
    """A FHIR R4 DiagnosticReport (JSON) with one contained Observation per finding.

    ``study`` is a source instance's header: the report names the patient and
    the study the way the hospital's systems do (PatientID, Study Instance UID).
    """
    observations, conclusion = [], []
    for i, f in enumerate(findings):
        value, scheme, meaning = f["code"]
        state = PRESENT if f["present"] else ABSENT
        observations.append(
            {
                "resourceType": "Observation",
                "id": f"finding-{i + 1}",
                "status": "preliminary",
                "code": {
                    "coding": [
                        {"system": FHIR_SYSTEMS.get(scheme, f"urn:medlens:{scheme}"), "code": value, "display": meaning}
                    ]
                },
                "valueCodeableConcept": {
                    "coding": [{"system": FHIR_SYSTEMS["SCT"], "code": state[0], "display": state[2]}]
                },
                "component": [
                    {
                        "code": {"text": "probability"},
                        "valueQuantity": {
                            "value": round(float(f["probability"]), 4),
                            "unit": "1",
                            "system": "http://unitsofmeasure.org",
                            "code": "1",
                        },
                    }
                ],
                "note": [{"text": f"threshold {f['threshold']:.4f} chosen on validation data"}],
            }
        )
        conclusion.append(
            f"{f['name']}: {'present' if f['present'] else 'absent'} (probability {f['probability']:.2f})"
        )
    if refer:
        conclusion.append("uncertain: refer to a radiologist")
    return {
        "resourceType": "DiagnosticReport",
        "id": f"medlens-{job_id}",
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
                ]
            }
        ],
        "code": {
            "coding": [{"system": FHIR_SYSTEMS["LN"], "code": IMAGING_STUDY[0], "display": IMAGING_STUDY[2]}],
            "text": f"medlens {model}: AI triage (preliminary, not verified by a radiologist)",
        },
        "subject": {"identifier": {"value": str(study.get("PatientID", "") or "unknown")}},
        "issued": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "performer": [{"display": f"medlens {__version__} model {model} (software, not a clinician)"}],
        "imagingStudy": [{"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study.StudyInstanceUID}"}}],
        "contained": observations,
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "conclusion": "; ".join(conclusion),
    }


def fhir_volume_report(study: Any, volumes_ml: dict[str, float], model: str, job_id: int) -> dict[str, Any]:
    """A FHIR R4 DiagnosticReport for a segmentation: one contained Observation (volume in mL) per structure."""
    report = fhir_report(study, [], model, job_id, refer=False)
    report["contained"] = [
        {
            "resourceType": "Observation",
            "id": f"volume-{i + 1}",
            "status": "preliminary",
            "code": {"text": f"{name} volume (medlens segmentation)"},
            "valueQuantity": {
                "value": round(float(ml), 4),
                "unit": "mL",
                "system": "http://unitsofmeasure.org",
                "code": "mL",
            },
        }
        for i, (name, ml) in enumerate(volumes_ml.items())
    ]
    report["result"] = [{"reference": f"#{o['id']}"} for o in report["contained"]]
    report["conclusion"] = "; ".join(f"{name}: {ml:.2f} mL" for name, ml in volumes_ml.items())
    return report


def _concept(code: tuple[str, str, str]) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=code[0], scheme_designator=code[1], meaning=code[2])
