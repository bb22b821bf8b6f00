"""A detector's findings as a DICOM SR (TID 1500 measurement report, highdicom): one planar ROI group per box.

Each group names the finding's class, holds its region as an SCOORD rectangle
(a closed polyline of the box's corners in the source image's pixel frame,
column then row, 0.0 at the top-left corner of the top-left pixel: the box
coordinates of ``detections.csv``), the detector's score, and the longest side
in mm when the image states its pixel spacing. It says it is preliminary,
unverified machine output; UIDs are derived from the image and the model, so a
rerun replaces rather than duplicates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from medlens.io.sr_codes import SCHEME, algorithm_of, concept, finding_code, save_measurement_report, uid_for

SCORE = ("score", SCHEME, "Detection score")


def box_polyline(box: np.ndarray) -> np.ndarray:
    """The rectangle ``xmin, ymin, xmax, ymax`` as a closed polyline of (column, row) points."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def write_detection_sr(source: Path, found: Any, bundle: Any, path: Path, key: str | None = None) -> Path:
    """The SR for ``found`` (a :class:`medlens.detect.infer.FileDetections` of the DICOM image ``source``); ``key``
    fixes its UIDs (default: the image's and the model's), so writing it again replaces it in a PACS."""
    evidence = pydicom.dcmread(source, stop_before_pixels=True)
    model = bundle.name
    key = key or f"{evidence.get('SOPInstanceUID', source.name)}/{model}"
    algorithm = algorithm_of(model)
    codes_map = bundle.manifest.get("finding_codes")
    groups = []
    for n, (box, label, score) in enumerate(zip(found.boxes, found.labels, found.scores)):
        name = bundle.label_names[int(label)]
        measurements = [
            hd.sr.Measurement(
                name=concept(SCORE),
                value=round(float(score), 4),
                unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
                algorithm_id=algorithm,
            )
        ]
        if found.spacing_mm:
            longest = max((box[2] - box[0]) * found.spacing_mm[0], (box[3] - box[1]) * found.spacing_mm[1])
            measurements.append(
                hd.sr.Measurement(
                    name=codes.SCT.Diameter,
                    value=float(f"{float(longest):.4g}"),
                    unit=codes.UCUM.Millimeter,
                    algorithm_id=algorithm,
                )
            )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uid_for(key, str(n)), identifier=f"{name} {n + 1}"[:64]
                ),
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=box_polyline(box),
                    source_image=hd.sr.SourceImageForRegion.from_source_image(evidence),
                ),
                finding_type=concept(finding_code(name, codes_map)),
                algorithm_id=algorithm,
                measurements=measurements,
            )
        )
    return save_measurement_report([evidence], groups, model, key, 991, "detections", path)
