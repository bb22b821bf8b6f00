"""Semi-supervised segmentation: FixMatch voxel by voxel on unlabelled volumes.

Labelled patches train as usual (Dice + cross-entropy). Each step also draws a
batch of patches from unlabelled volumes: the model's softmax on the patch
becomes a pseudo-label map wherever it is at least ``fixmatch_threshold`` sure,
and the model is taught that map on a photometrically perturbed copy of the
same patch (contrast, brightness, noise, cut-out; no geometric change, so the
map still fits). Unlabelled volumes are the training cases whose labels were
held back (``max_train_cases``) and every volume in the ``unlabelled`` folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medlens.classify.semi import FixMatchLoss
from medlens.errors import ConfigError, DataError, MedlensError
from medlens.io.volume import load_volume
from medlens.preprocess.views import PHOTOMETRIC_STRONG
from medlens.segment.plan import SegPlan
from medlens.segment.preprocess import preprocess_image

log = logging.getLogger(__name__)
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


class UnlabelledPatches(Dataset):
    """Random patches (padded where the image is smaller, mirrored along the plan's axes) from unlabelled images."""

    def __init__(self, images: list[np.ndarray], plan: SegPlan, samples: int, seed: int) -> None:
        from monai.transforms import Compose, RandFlip, RandSpatialCrop, SpatialPad

        self.images, self.samples = images, samples
        self.transform = Compose(
            [
                SpatialPad(plan.patch_size),
                RandSpatialCrop(plan.patch_size, random_size=False),
                *[RandFlip(prob=0.5, spatial_axis=axis) for axis in plan.mirror_axes],
            ]
        )
        self.transform.set_random_state(seed)

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.as_tensor(self.transform(self.images[index % len(self.images)])).float(), 0


def read_volume_for_plan(path: Path, plan: SegPlan) -> np.ndarray:
    """One volume preprocessed like the plan's training images, or a DataError saying why it does not fit."""

    volume = load_volume(path)
    if volume.array.ndim != 3 or min(volume.shape) < 2:
        raise DataError(f"shape {tuple(volume.shape)} is not a 3D volume")
    if plan.modality == "CT" and float(np.min(volume.array)) >= 0:
        raise DataError("no negative values: not CT in Hounsfield units, as this plan's training images are")
    return preprocess_image(volume, plan)[0]


def read_unlabelled_volumes(folder: Path, plan: SegPlan) -> list[np.ndarray]:
    """Every volume in ``folder`` preprocessed like training images; anything that is not a 3D volume is an error
    naming each such file (training on a silently shrunken pool would be a different experiment)."""
    if not folder.is_dir():
        raise ConfigError(f"train.unlabelled: {folder} is not a folder of volumes ({', '.join(VOLUME_SUFFIXES)})")
    files = sorted(
        p for p in folder.iterdir() if p.name.lower().endswith(VOLUME_SUFFIXES) and not p.name.startswith(".")
    )
    if not files:
        raise DataError(f"{folder}: no volumes ({', '.join(VOLUME_SUFFIXES)}) found for unlabelled training")
    images, problems = [], []
    for path in files:
        try:
            images.append(read_volume_for_plan(path, plan))
        except MedlensError as exc:
            problems.append(f"{path.name}: {exc}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DataError(
            f"{folder}: {len(problems)} of {len(files)} unlabelled volumes do not fit this {plan.modality} "
            f"plan ({shown}); move them out of the folder"
        )
    return images


def make_seg_fixmatch_loss(
    cfg: Any, supervised: nn.Module, model: nn.Module, held_back: list[np.ndarray], plan: SegPlan, world_size: int
) -> FixMatchLoss:
    """FixMatch around the Dice + CE loss, from held-back training cases plus ``cfg.unlabelled`` volumes."""
    if world_size > 1:
        raise ConfigError("train.semi_supervised=fixmatch runs in one process; start it without torchrun")
    images = list(held_back)
    if cfg.unlabelled:
        images += read_unlabelled_volumes(Path(cfg.unlabelled), plan)
    if not images:
        raise ConfigError(
            "train.semi_supervised=fixmatch needs unlabelled volumes: --set unlabelled=FOLDER, or "
            "--set max_train_cases=N to hold back the labels of the other training cases"
        )
    n_volumes = len(images)
    if plan.dims == 2:
        images = [im[..., k] for im in images for k in range(im.shape[-1])]
    patches = UnlabelledPatches(images, plan, cfg.samples_per_epoch, cfg.seed + 1)
    loader = DataLoader(patches, batch_size=plan.batch_size, shuffle=False, num_workers=0, drop_last=True)
    log.info(
        "FixMatch: %d unlabelled %s, threshold %.2f",
        len(images),
        "slices" if plan.dims == 2 else "volumes",
        cfg.fixmatch_threshold,
    )
    loss = FixMatchLoss(
        supervised, model, loader, cfg.fixmatch_threshold, cfg.unlabelled_weight, cfg.seed, strong=PHOTOMETRIC_STRONG
    )
    loss.n_unlabelled = n_volumes  # volumes (a 2D plan draws from their slices)
    return loss
