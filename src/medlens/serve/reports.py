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
from medlens.io.sr_codes import (
    ABSENT,
    FHIR_SYSTEMS,
    IMAGING_STUDY,
    PRESENT,
    SCHEME,
    algorithm_of,
    concept,
    save_measurement_report,
    uid_for,
)


def write_sr(sources: list[Path], findings: list[dict[str, Any]], model: str, job_key: str, path: Path) -> Path:
    """A Comprehensive 3D SR with one measurement group per finding, referencing the source images."""
    import highdicom as hd
    import pydicom

    evidence = [pydicom.dcmread(p, stop_before_pixels=True) for p in sources]
    algorithm = algorithm_of(model)
    groups = []
    for f in findings:
        finding = concept(f["code"])
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uid_for(job_key, f["name"], "tracking"), identifier=f"medlens {f['name']}"[:64]
                ),
                finding_type=finding,
                algorithm_id=algorithm,
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(evidence[f["image_index"]])],
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(name=finding, value=concept(PRESENT if f["present"] else ABSENT))
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
    return save_measurement_report(evidence, groups, model, job_key, 990, "AI findings", path)


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
    values = {name: round(float(ml), 4) for name, ml in volumes_ml.items()}
    report = _quantity_report(study, values, model, job_id, ("volume", "medlens segmentation", "mL", "mL"))
    report["conclusion"] = "; ".join(f"{name}: {ml:.2f} mL" for name, ml in volumes_ml.items())
    return report


def fhir_count_report(study: Any, counts: dict[str, int], model: str, job_id: int) -> dict[str, Any]:
    """A FHIR R4 DiagnosticReport for a detector: one contained Observation (the count, unit {#}) per class."""
    values = {name: int(n) for name, n in counts.items()}
    report = _quantity_report(study, values, model, job_id, ("count", "medlens detection", "count", "{#}"))
    report["conclusion"] = "; ".join(f"{name}: {n}" for name, n in counts.items())
    return report


def _quantity_report(
    study: Any, values: dict[str, float], model: str, job_id: int, kind: tuple[str, ...]
) -> dict[str, Any]:
    """A report with one contained Observation per named quantity; ``kind``: (what, by, unit, UCUM code)."""
    what, by, unit, code = kind
    report = fhir_report(study, [], model, job_id, refer=False)
    report["contained"] = [
        {
            "resourceType": "Observation",
            "id": f"{what}-{i + 1}",
            "status": "preliminary",
            "code": {"text": f"{name} {what} ({by})"},
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": code},
        }
        for i, (name, value) in enumerate(values.items())
    ]
    report["result"] = [{"reference": f"#{o['id']}"} for o in report["contained"]]
    return report
