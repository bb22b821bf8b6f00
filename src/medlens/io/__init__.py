"""Read medical images from PNG/JPEG, DICOM and NIfTI files into float32 arrays."""

from medlens.io.read import IMAGE_SUFFIXES, read_image

__all__ = ["IMAGE_SUFFIXES", "read_image"]
