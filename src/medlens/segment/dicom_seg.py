"""A label map as a DICOM Segmentation (highdicom) that references the source series, for PACS viewers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medlens import __version__
from medlens.errors import GeometryError
from medlens.io.dicom import read_dataset
from medlens.io.series import find_dicom_files
from medlens.types import LPS_TO_RAS, Volume

if TYPE_CHECKING:
    from medlens.segment.bundle import SegmenterBundle


TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
)


def write_dicom_seg(source: Path, labels: Volume, bundle: SegmenterBundle, target: Path) -> Path:
    """One SEG instance: a segment per foreground label, frames aligned with the source slices by position."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    datasets = [read_dataset(f, pixels=False) for f in find_dicom_files(source)]  # headers only: pixels are not needed
    datasets = [d for d in datasets if "PixelData" in d]
    for ds in datasets:  # Type 2 patient/study attributes highdicom copies: present, empty when the source lacks them
        for keyword in TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    inverse = np.linalg.inv(labels.affine)
    frames = np.zeros((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), dtype=np.uint8)
    for i, ds in enumerate(datasets):
        ras = LPS_TO_RAS[:3, :3] @ np.asarray(ds.ImagePositionPatient, dtype=float)
        k = inverse[:3, :3] @ ras + inverse[:3, 3]
        index = int(round(k[2]))
        if abs(k[0]) > 1e-2 or abs(k[1]) > 1e-2 or not 0 <= index < labels.shape[2]:
            raise GeometryError(
                f"{source}: slice of instance {ds.get('InstanceNumber')} is not on the label map's grid"
            )
        frames[i] = np.rint(labels.array[:, :, index].T).astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"medlens {bundle.manifest.get('name', 'segmentation')}",
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
    )
    names = {int(k): v for k, v in bundle.plan.label_names.items() if int(k)}
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Hippocampus
            if "hippocampus" in str(bundle.manifest.get("name", "")).lower()
            else codes.SCT.AnatomicalStructure,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in sorted(names.items())
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=9901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="medlens",
        manufacturer_model_name="medlens",
        software_versions=__version__,
        device_serial_number="none",
        omit_empty_frames=False,
        content_description="medlens automatic segmentation, research use only",
    )
    seg.save_as(target)
    return target
