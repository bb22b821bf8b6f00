"""Reader for MedMNIST ``.npz`` files (2D and 3D; binary, multi-class, multi-label, ordinal)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medlens.datasets.base import ClassificationData, Split
from medlens.datasets.catalog import file_sha256, get_dataset_info, resolve_dataset_file
from medlens.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def load_medmnist(
    name: str, size: int = 28, data_dir: str | Path | None = None, download: bool = True
) -> ClassificationData:
    """Load a MedMNIST set by catalog name, e.g. ``load_medmnist("pneumoniamnist")``.

    Images come back channel-first uint8; labels as class indices (or 0/1 rows
    for multi-label). Split sizes are checked against the official counts so a
    truncated or wrong file is refused rather than trained on.
    """
    info = get_dataset_info(name)
    path = resolve_dataset_file(info.name, size, data_dir=data_dir, download=download)
    splits = read_medmnist_npz(path, dims=info.dims, multilabel=info.task == "multilabel")
    for split_name, split in splits.items():
        expected = info.n_samples[split_name]
        if len(split) != expected:
            raise DataError(
                f"{path}: split {split_name!r} has {len(split)} images, the official {info.name} has {expected}; "
                f"the file is incomplete or not {info.name}: download it again from {info.files[size].url}"
            )
    data = ClassificationData(
        name=info.name,
        task=info.task,
        label_names=info.labels,
        splits=splits,
        modality=_MODALITY.get(info.name, "unknown"),
        intensity_range=(0.0, 255.0),
        source={"file": path.name, "sha256": file_sha256(path), "license": info.license, "size": str(size)},
    )
    data.validate()
    return data


_MODALITY = {
    "pneumoniamnist": "CR",
    "chestmnist": "CR",
    "breastmnist": "US",
    "octmnist": "OCT",
    "adrenalmnist3d": "CT",
    "organmnist3d": "CT",
    "nodulemnist3d": "CT",
    "fracturemnist3d": "CT",
    "vesselmnist3d": "MR",
    "synapsemnist3d": "EM",
}


def read_medmnist_npz(path: Path, dims: int, multilabel: bool = False) -> dict[str, Split]:
    """Read the ``{split}_images`` / ``{split}_labels`` arrays of one MedMNIST file."""
    try:
        archive = np.load(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc}); download it again") from exc
    with archive:
        splits = {}
        for split in SPLITS:
            keys = (f"{split}_images", f"{split}_labels")
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise DataError(f"{path} lacks array(s) {', '.join(missing)}; it is not a MedMNIST file")
            images, labels = archive[keys[0]], archive[keys[1]]
            splits[split] = Split(
                images=_channel_first(images, dims, path),
                labels=labels.astype(np.int64) if multilabel else labels.reshape(-1).astype(np.int64),
                ids=[f"{split}:{i}" for i in range(len(labels))],
            )
    return splits


def _channel_first(images: np.ndarray, dims: int, path: Path) -> np.ndarray:
    if images.ndim == dims + 1:  # grey: add the channel axis
        return images[:, None]
    if images.ndim == dims + 2 and dims == 2 and images.shape[-1] in (3, 4):  # (N, H, W, C)
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise DataError(f"{path}: images have shape {images.shape}, expected {dims}D images (N, ...)")
