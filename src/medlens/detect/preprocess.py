"""What a detector does to an image before the network, the same in training, evaluation and serving, and the
way back: boxes in the source file's pixels.

2D images are scaled so the longest side is at most ``max_size`` (never enlarged)
and brought to [0, 1] (8-bit rasters and 8-bit DICOM by /255, so the same pixels
give the same boxes in either; anything else by its own 0.5-99.5th percentiles);
volumes keep their voxel grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch

from medlens.detect.network import to_xy_order
from medlens.errors import InputMismatchError
from medlens.io import read_image
from medlens.io.dicom import has_dicom_marker
from medlens.io.volume import load_volume
from medlens.preprocess.pipeline import rescale_per_image

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


@dataclass(frozen=True)
class DetectPreprocessing:
    spatial_dims: int
    channels: int
    max_size: int  # 2D: longest side in network pixels; volumes: 0 (kept as they are)
    intensity: str = "raster-255"  # "raster-255": 8-bit files /255, others per image; "per-image": always

    @classmethod
    def for_data(cls, data: Any, max_size: int) -> DetectPreprocessing:
        """From the first training image: its channels, and whether it is a volume."""
        first = data.split("train")[0].file
        if data.spatial_dims == 3:
            return cls(3, 1, 0, "per-image")
        return cls(2, int(read_image(first).shape[0]), max_size)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectPreprocessing:
        return cls(**{k: d[k] for k in ("spatial_dims", "channels", "max_size", "intensity") if k in d})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_image(path: Path, pre: DetectPreprocessing) -> tuple[np.ndarray, float]:
    """``path`` as the network takes it, ``(C, *spatial)`` float32 in [0, 1], and the factor its pixels were scaled
    by (network pixel = source pixel x factor)."""
    if pre.spatial_dims == 3:
        if not str(path).lower().endswith(VOLUME_SUFFIXES) and not Path(path).is_dir():
            raise InputMismatchError(f"{path}: a 3D detector takes volumes (NIfTI, NRRD, MHA or a DICOM series folder)")
        return rescale_per_image(load_volume(Path(path)).array[None].astype(np.float32)), 1.0
    image = read_image(path)
    if image.ndim != 3:
        raise InputMismatchError(f"{path}: a 2D detector takes 2D images; this file holds a {image.ndim - 1}D image")
    image = _channels(image, pre.channels, path)
    if pre.intensity == "raster-255" and image.min() >= 0 and image.max() <= 255 and _eight_bit(path):
        image = image / 255.0
    else:
        image = rescale_per_image(image)
    scale = min(1.0, pre.max_size / max(image.shape[1:]))
    if scale < 1.0:
        size = [max(1, round(s * scale)) for s in image.shape[1:]]
        scale = size[0] / image.shape[1]  # the rows' exact factor (the columns' differs by under half a pixel)
        image = torch.nn.functional.interpolate(
            torch.as_tensor(image, dtype=torch.float32)[None], size=size, mode="bilinear", antialias=True
        )[0].numpy()
    return np.ascontiguousarray(image, np.float32), scale


def _channels(image: np.ndarray, channels: int, path: Path) -> np.ndarray:
    if image.shape[0] == channels:
        return image
    if channels == 3 and image.shape[0] == 1:
        return np.repeat(image, 3, axis=0)
    if channels == 1 and image.shape[0] in (3, 4):
        return image[:3].mean(0, keepdims=True)
    raise InputMismatchError(
        f"{path}: {image.shape[0]} channels; the detector was trained on {channels}-channel images"
    )


def _eight_bit(path: Path) -> bool:
    """An 8-bit raster file, or a DICOM image stored in 8 bits: the same pixels, the same scaling (/255)."""
    if has_dicom_marker(Path(path)):
        return int(pydicom.dcmread(path, stop_before_pixels=True).get("BitsStored", 16)) <= 8
    return Path(path).suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def detect_images(
    model: torch.nn.Module,
    images: list[np.ndarray],
    pre: DetectPreprocessing,
    scales: list[float],
    device: torch.device,
    batch_size: int = 4,
) -> list[dict[str, np.ndarray]]:
    """The detector's boxes for prepared ``images``, back in each source image's pixels and x/y order:
    ``boxes`` (N, 2*dims), ``labels`` (N,), ``scores`` (N,), best score first."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start, stop in _same_shape_batches(images, batch_size):
            # one (B, C, ...) tensor of images of one shape: MONAI then clips each box to that shape (a list of
            # tensors would take MONAI's padding path, which NumPy 2 deprecates)
            batch = torch.as_tensor(np.stack(images[start:stop]), device=device)
            for k, det in enumerate(model(batch)):
                scale = scales[start + k]
                boxes = det["boxes"].float().cpu().numpy().reshape(-1, 2 * pre.spatial_dims)
                scores = det["labels_scores"].float().cpu().numpy()
                order = np.argsort(-scores, kind="stable")
                out.append(
                    {
                        "boxes": to_xy_order(boxes[order], pre.spatial_dims) / scale,
                        "labels": det["labels"].cpu().numpy().astype(np.int64)[order],
                        "scores": scores[order],
                    }
                )
    return out


def _same_shape_batches(images: list[np.ndarray], batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) ranges of consecutive images that share a shape, at most ``batch_size`` long."""
    ranges, start = [], 0
    for i in range(1, len(images) + 1):
        if i == len(images) or images[i].shape != images[start].shape or i - start == batch_size:
            ranges.append((start, i))
            start = i
    return ranges
