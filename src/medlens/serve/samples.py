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


def write_cr_study(
    image_path: Path,
    out: Path,
    patient_id: str,
    accession: str = "",
    age: str = "",
    sex: str = "O",
    view: str = "PA",
    size: tuple[int, int] | None = None,
    bits: int = 8,
    monochrome1: bool = False,
) -> Path:
    """One-image CR study (chest) from a real grey image file; returns the DICOM file written.

    ``age`` (a DICOM age string such as ``058Y``), ``sex`` and ``view`` fill the header fields a fused model reads,
    e.g. from the NIH metadata that comes with the image. ``size`` (rows, columns), ``bits`` stored (8-16) and
    ``monochrome1`` (stored inverted, as many CR readers do) write it as a detector would."""
    import pydicom
    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    grey = Image.open(image_path).convert("L")
    if size is not None:
        grey = grey.resize((size[1], size[0]), Image.BILINEAR)
    top = 2**bits - 1
    pixels = np.round(np.asarray(grey, dtype=np.float64) / 255.0 * top)
    pixels = (top - pixels if monochrome1 else pixels).astype(np.uint8 if bits <= 8 else np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    now = datetime.now()
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"Test^{patient_id}", patient_id, "", sex
    ds.PatientAge = age
    ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = accession, "1", ""
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", view
    ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = f"Chest {view}", 1, 1
    ds.PatientOrientation = ["L", "F"]
    ds.Manufacturer = "medlens sample (Kermany et al. 2018, CC BY 4.0)"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    allocated = 8 if bits <= 8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, bits, bits - 1, 0
    if size is not None:
        ds.ImagerPixelSpacing = [0.15, 0.15]  # a typical CR plate's pixel, mm
    ds.PixelData = pixels.tobytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def write_smear_image(image_path: Path, out: Path, patient_id: str, spacing_mm: float = 7.0e-5) -> Path:
    """A real colour microscopy image (a blood smear) as a one-image RGB Secondary Capture study, modality SM, with
    a pixel spacing (default about 0.07 um per pixel: a red cell of 7.5 um spans about 105 pixels, as in BCCD)."""
    import pydicom
    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(Image.open(image_path).convert("RGB"))
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    now = datetime.now()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"Test^{patient_id}", patient_id, "", "O"
    ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "", "1", ""
    ds.Modality, ds.SeriesDescription, ds.ConversionType = "SM", "Blood smear", "DI"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Manufacturer = "medlens sample (BCCD, MIT)"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelSpacing = [spacing_mm, spacing_mm]
    ds.PixelData = pixels.tobytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out


def stow_body(files: list[Path], boundary: str = "medlens-boundary") -> tuple[bytes, str]:
    """A STOW-RS request body and its Content-Type for DICOM files (PS3.18 multipart/related)."""
    parts = [
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + Path(f).read_bytes() + b"\r\n"
        for f in files
    ]
    body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_mr_series(nifti_path: Path, out_dir: Path, patient_id: str) -> list[Path]:
    """A real MR volume (NIfTI, e.g. an MSD hippocampus case) as a DICOM MR series, one file per axial slice.

    Geometry is kept: each slice's position and orientation come from the
    NIfTI affine (RAS) converted to DICOM's LPS patient coordinates, so a
    reader that rebuilds the volume from the series gets the same grid.
    """
    import nibabel as nib
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    image = nib.load(str(nifti_path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine  # RAS -> LPS
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    row_dir, col_dir = affine[:3, 0] / spacing[0], affine[:3, 1] / spacing[1]  # DICOM rows run along i, columns along j
    slope = max(float(np.abs(data).max()) / 32000.0, 1e-6)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MR_IMAGE_STORAGE, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"Test^{patient_id}", patient_id, "", "O"
        ds.StudyDate = ds.SeriesDate = datetime.now().strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = datetime.now().strftime("%H%M%S")
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "", "1", ""
        ds.Modality, ds.BodyPartExamined, ds.SeriesDescription = "MR", "BRAIN", "T1 hippocampus (MSD Task04 crop)"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.Manufacturer = "medlens sample (Medical Segmentation Decathlon, CC BY-SA 4.0)"
        ds.ImageOrientationPatient = [*map(float, row_dir), *map(float, col_dir)]
        ds.ImagePositionPatient = [float(v) for v in (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # (between rows, between columns)
        ds.SliceThickness = float(spacing[2])
        pixels = np.round(data[:, :, k].T / slope).astype(np.int16)  # rows along j, columns along i
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0.0, slope
        ds.PixelData = pixels.tobytes()
        path = out_dir / f"slice{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
