"""One job: a study's images through one model, to findings, urgency, an SR, a heatmap and a FHIR report.

Study level: a finding's probability is its highest over the study's images
(a finding seen on one view is in the study); it is present at the bundle's
threshold. Urgency = max over findings of probability x severity (severity
set per finding in the bundle's routing block, 1.0 by default). A study any of
whose images the bundle's referral rule calls uncertain is ``referred``: it
stays in the worklist, marked for a human read, like every other study.
Images the bundle's out-of-distribution gate turns away are left out of the
findings; a study with no other image is ``not-assessed``, with no finding,
SR or FHIR report: a model's probability on an image unlike its training
images is not a finding.
A fused (image + clinical) bundle takes its clinical values from each
instance's DICOM header (:mod:`medlens.tabular.dicom`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from medlens.classify.predict import predict_files
from medlens.detect.infer import detect_file, write_overlay
from medlens.detect.sr import write_detection_sr
from medlens.errors import DataError, MedlensError
from medlens.explain.stage import explain_files
from medlens.io.sr_codes import finding_code, uid_for
from medlens.models.ood import OUTSIDE_NOTE
from medlens.models.probs import finding_thresholds
from medlens.segment.stage import segment_files
from medlens.serve.models import ServedModel
from medlens.serve.monitor import observe
from medlens.serve.reports import fhir_count_report, fhir_report, fhir_volume_report, write_sr
from medlens.serve.store import NOT_ASSESSED


def run_classification(
    model: ServedModel, files: list[Path], out_dir: Path, job_id: int, job_key: str
) -> tuple[str, float, dict[str, Any]]:
    """(state, urgency, result) for a classification model on a study's DICOM instances."""
    import pydicom

    clinical = model.clinical()  # a fused bundle reads age, sex, view... from each instance's header
    rows = predict_files(model.bundle, files, adapt=True, clinical=clinical)
    good = [(i, r) for i, r in enumerate(rows) if not r.error and r.in_distribution is not False]
    outside = [i for i, r in enumerate(rows) if not r.error and r.in_distribution is False]
    skipped = [{"instance": i, "reason": r.error} for i, r in enumerate(rows) if r.error]
    skipped += [{"instance": i, "reason": OUTSIDE_NOTE} for i in outside]
    if not good and outside:  # never a finding on images unlike those the model learnt from
        result = _not_assessed(model, rows, skipped, files[outside[0]])
        names = model.bundle.label_names  # drift monitoring sees these studies too: they are the drift
        result["observation"] = observe(
            model, [files[i] for i in outside], [[rows[i].probabilities[n] for n in names] for i in outside]
        )
        return NOT_ASSESSED, 0.0, result
    if not good:
        raise DataError(
            f"no image of the study could be read by model {model.name}: " + "; ".join(s["reason"] for s in skipped[:3])
        )
    codes = model.bundle.manifest.get("routing", {}).get("codes")
    cut = finding_thresholds(model.task, model.bundle.label_names, model.bundle.thresholds)
    findings = []
    for name in model.findings():
        probs = np.array([r.probabilities[name] for _, r in good])
        best = int(np.argmax(probs))
        t = cut[name]
        findings.append(
            {
                "name": name,
                "probability": float(probs[best]),
                "present": bool(probs[best] >= t),
                "threshold": float(t),
                "severity": model.severity.get(name, 1.0),
                "image_index": best,
                "code": finding_code(name, codes),
            }
        )
    refer = any(bool(r.refer) for _, r in good)
    urgency = max((f["probability"] * f["severity"] for f in findings), default=0.0)
    sources = [files[i] for i, _ in good]
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"sr": str(write_sr(sources, findings, model.name, job_key, out_dir / "sr.dcm"))}
    key_image = sources[findings[0]["image_index"]] if findings else sources[0]  # the image the first finding rests on
    heat = _heatmap(model, key_image, out_dir, job_key, clinical)
    if heat:
        outputs["heatmap"] = heat
    header = pydicom.dcmread(sources[0], stop_before_pixels=True)
    (out_dir / "fhir.json").write_text(json.dumps(fhir_report(header, findings, model.name, job_id, refer), indent=1))
    outputs["fhir"] = str(out_dir / "fhir.json")

    observation = observe(model, sources, [[r.probabilities[n] for n in model.bundle.label_names] for _, r in good])
    result = {
        "findings": [{k: v for k, v in f.items() if k != "image_index"} for f in findings],
        "refer": refer,
        "images": len(rows),
        "images_used": len(good),
        "skipped_instances": skipped,
        "notes": sorted({n for _, r in good for n in r.notes}),
        "outputs": outputs,
        "key_image": str(key_image),
    }
    result["observation"] = observation  # taken out by the worker into the monitoring table
    return ("referred" if refer else "done"), urgency, result


def _not_assessed(model: ServedModel, rows: list[Any], skipped: list[dict[str, Any]], key: Path) -> dict[str, Any]:
    """The result of a study whose every readable image the model's out-of-distribution gate turned away."""
    return {
        "findings": [],
        "refer": False,
        "assessed": False,
        "images": len(rows),
        "images_used": 0,
        "skipped_instances": skipped,
        "notes": [f"not assessed: the images are outside what model {model.name} was trained on"],
        "outputs": {},
        "key_image": str(key),
    }


def run_segmentation(
    model: ServedModel, folder: Path, out_dir: Path, job_id: int, job_key: str
) -> tuple[str, float, dict[str, Any]]:
    """(state, urgency, result) for a segmentation model on a study's DICOM series: label map, DICOM SEG, volumes, FHIR."""
    import pydicom

    report = segment_files(model.bundle, [folder], out_dir)
    if report["problems"]:
        raise DataError(f"model {model.name} could not segment the study: {report['problems'][0]['message']}")
    row = report["results"][0]
    seg = _fix_uids(out_dir / row["dicom_seg"], job_key, "seg", out_dir / "seg.dcm")
    header = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    volumes = {k: float(v) for k, v in row["volumes_ml"].items()}
    (out_dir / "fhir.json").write_text(json.dumps(fhir_volume_report(header, volumes, model.name, job_id), indent=1))
    outputs = {"seg": str(seg), "labels": str(out_dir / row["labels"]), "fhir": str(out_dir / "fhir.json")}
    return "done", 0.0, {"findings": [], "volumes_ml": volumes, "refer": False, "outputs": outputs}


def run_detection(
    model: ServedModel, files: list[Path], out_dir: Path, job_id: int, job_key: str
) -> tuple[str, float, dict[str, Any]]:
    """(state, urgency, result) for a detector on a study's DICOM images: boxes and counts per class, the key image
    (the one with most boxes) drawn with its boxes, a DICOM SR of its boxes, counts in FHIR."""
    import pydicom

    found, skipped = [], []
    for i, path in enumerate(files):
        try:
            found.append(detect_file(model.bundle, path))
        except MedlensError as exc:
            skipped.append({"instance": i, "reason": str(exc)})
    if not found:
        raise DataError(
            f"no image of the study could be read by model {model.name}: " + "; ".join(s["reason"] for s in skipped[:3])
        )
    names = model.bundle.label_names
    counts = {n: int(sum((f.labels == k).sum() for f in found)) for k, n in enumerate(names)}
    key = max(found, key=lambda f: len(f.labels))
    out_dir.mkdir(parents=True, exist_ok=True)
    sr = write_detection_sr(key.file, key, model.bundle, out_dir / "sr.dcm", job_key)
    overlay = write_overlay(key.file, key, names, out_dir)
    header = pydicom.dcmread(found[0].file, stop_before_pixels=True)
    (out_dir / "fhir.json").write_text(json.dumps(fhir_count_report(header, counts, model.name, job_id), indent=1))
    boxes = [
        {"label": names[int(label)], "score": round(float(score), 4), "box": [round(float(v), 1) for v in box]}
        for box, label, score in zip(key.boxes[:300], key.labels, key.scores)
    ]
    result = {
        "findings": [],
        "counts": counts,
        "detections": boxes,
        "refer": False,
        "images": len(files),
        "images_used": len(found),
        "skipped_instances": skipped,
        "outputs": {"sr": str(sr), "overlay": str(overlay), "fhir": str(out_dir / "fhir.json")},
        "key_image": str(key.file),
    }
    return "done", 0.0, result


def _fix_uids(path: Path, job_key: str, what: str, target: Path) -> Path:
    """Give a written DICOM object UIDs fixed by the job, so a redone job replaces it in the PACS."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.SeriesInstanceUID, ds.SOPInstanceUID = uid_for(job_key, f"{what}-series"), uid_for(job_key, what)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target)
    if path != target:
        path.unlink()
    return target


def _heatmap(model: ServedModel, source: Path, out_dir: Path, job_key: str, clinical: Any = None) -> str | None:
    """Grad-CAM as an RGB Secondary Capture in the source study, with UIDs fixed by the job (idempotent)."""

    report = explain_files(model.bundle, [source], out_dir / "explain", method="gradcam", adapt=True, clinical=clinical)
    made = [Path(o) for o in report["files"][0]["outputs"] if o.endswith(".dcm")]
    if not made:
        return None
    target = _fix_uids(made[0], job_key, "sc", out_dir / "heatmap_sc.dcm")
    shutil.rmtree(out_dir / "explain", ignore_errors=True)
    return str(target)
