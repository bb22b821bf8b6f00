"""Real chest radiographs as DICOM studies, for demos, tests and the service benchmark.

The Kermany paediatric chest X-rays (CC BY 4.0) come as JPEGs; a PACS speaks
DICOM. :func:`write_cr_study` wraps one real image, pixels unchanged, in a
Computed Radiography instance with a made-up patient (no real identifiers
exist in the source) and new UIDs, so the whole path from PACS to report runs
on real images.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def write_cr_study(image_path: Path, out: Path, patient_id: str, accession: str = "") -> Path:
    """One-image CR study (PA chest) from a real grey image file; returns the DICOM file written."""
    import pydicom
    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(Image.open(image_path).convert("L"), dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    now = datetime.now()
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"Test^{patient_id}", patient_id, "", "O"
    ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = accession, "1", ""
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "Chest PA", 1, 1
    ds.PatientOrientation = ["L", "F"]
    ds.Manufacturer = "medlens sample (Kermany et al. 2018, CC BY 4.0)"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def stow_body(files: list[Path], boundary: str = "medlens-boundary") -> tuple[bytes, str]:
    """A STOW-RS request body and its Content-Type for DICOM files (PS3.18 multipart/related)."""
    parts = [b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + Path(f).read_bytes() + b"\r\n" for f in files]
    body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'
