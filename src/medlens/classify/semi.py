"""Semi-supervised classification: FixMatch (Sohn et al., NeurIPS 2020) on unlabelled images.

Each step adds, to the labelled loss, a loss on a batch of unlabelled images:
the model's prediction on a weakly augmented copy becomes a pseudo-label
where it is at least ``fixmatch_threshold`` sure, and the model is taught to
give that label to a strongly augmented copy (:mod:`medlens.preprocess.views`).
Unsure images contribute nothing, so early, uncertain models do not train on
their own mistakes. The share of images above the threshold is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from medlens.classify.data import ArrayDataset
from medlens.classify.predict import expand_inputs
from medlens.config import TrainConfig
from medlens.datasets import ClassificationData, Split
from medlens.errors import ConfigError, DataError, MedlensError
from medlens.io import read_image
from medlens.preprocess import Preprocessing
from medlens.preprocess.pipeline import fit_image
from medlens.preprocess.views import FIXMATCH_STRONG, ViewOptions, random_views

log = logging.getLogger(__name__)


class FixMatchLoss(nn.Module):
    """Labelled loss + ``weight`` x confident-pseudo-label loss on strong views of unlabelled images.

    Called like any loss, ``loss(model(x), y)``; it runs ``model`` itself on
    the unlabelled batch (held by reference, not registered as a submodule).
    For segmentation the same code works voxel by voxel: ``strong`` must then
    leave the geometry alone (:data:`PHOTOMETRIC_STRONG`) so that the pseudo-label
    map still lies on the strong view, and the confident share counts voxels.
    """

    def __init__(
        self,
        supervised: nn.Module,
        model: nn.Module,
        unlabelled: DataLoader,
        threshold: float,
        weight: float,
        seed: int,
        strong: ViewOptions = FIXMATCH_STRONG,
    ) -> None:
        super().__init__()
        self.supervised, self.threshold, self.weight, self.strong = supervised, threshold, weight, strong
        self._model = [model]
        self._loader, self._batches = unlabelled, iter(())
        self._generator = torch.Generator().manual_seed(seed)
        self.confident: list[float] = []
        self.n_unlabelled = len(unlabelled.dataset)  # type: ignore[arg-type]

    def _next_batch(self) -> torch.Tensor:
        try:
            return next(self._batches)[0]
        except StopIteration:
            self._batches = iter(self._loader)
            return next(self._batches)[0]

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        model = self._model[0]
        weak = self._next_batch().to(logits.device)
        with torch.no_grad():
            probs = torch.softmax(model(weak).float(), dim=1)
        confidence, pseudo = probs.max(dim=1)
        mask = (confidence >= self.threshold).float()
        self.confident.append(float(mask.mean()))
        strong = random_views(weak.cpu(), self.strong, self._generator).to(logits.device)
        unsupervised = (F.cross_entropy(model(strong), pseudo, reduction="none") * mask).mean()
        return self.supervised(logits, targets) + self.weight * unsupervised


def unlabelled_split(cfg: TrainConfig, data: ClassificationData, left_out: Split | None) -> Split:
    """The images FixMatch learns from without labels: the train images ``max_train_samples`` left out,
    plus every image in the ``unlabelled`` folder (checked against the data's size and channels)."""
    images = [left_out.images] if left_out is not None and len(left_out) else []
    if cfg.unlabelled:
        images.append(read_unlabelled_folder(Path(cfg.unlabelled), data))
    if not images:
        raise ConfigError(
            "train.semi_supervised=fixmatch needs unlabelled images: --set unlabelled=FOLDER, or "
            "--set max_train_samples=N to hold back the labels of the rest of the train split"
        )
    stacked = np.concatenate(images)
    return Split(stacked, np.zeros(len(stacked), dtype=np.int64), [f"unlabelled-{i}" for i in range(len(stacked))], [])


def read_unlabelled_folder(folder: Path, data: ClassificationData) -> np.ndarray:
    """Every image under ``folder``, resized to the data's shape; a wrong modality or dimension is an error."""

    if not folder.is_dir():
        raise ConfigError(f"train.unlabelled: {folder} is not a folder of images")
    files = expand_inputs([folder])
    if not files:
        raise DataError(f"{folder}: no image files (PNG, JPEG, DICOM, NIfTI) found for unlabelled training")
    prep = Preprocessing(
        spatial_shape=data.image_shape,
        channels=data.n_channels,
        input_range=data.intensity_range,
        resize=True,
        modality=data.modality,
    )
    arrays, problems = [], []
    for path in files:
        try:
            arrays.append(fit_image(read_image(path, expected_modality=data.modality), prep, adapt=True)[0])
        except MedlensError as exc:
            problems.append(f"{path.name}: {exc}")
    if problems:  # training on a silently shrunken pool would be a different experiment: say so instead
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DataError(
            f"{folder}: {len(problems)} of {len(files)} unlabelled images do not fit this dataset's "
            f"{data.spatial_dims}D {data.modality} images ({shown}); move them out of the folder"
        )
    log.info("%d unlabelled images from %s", len(arrays), folder)
    return np.stack(arrays).astype(data.splits["train"].images.dtype)


def make_fixmatch_loss(
    cfg: TrainConfig,
    data: ClassificationData,
    prep: Preprocessing,
    supervised: nn.Module,
    model: nn.Module,
    left_out: Split | None,
    weak: object,
) -> FixMatchLoss:
    if data.task == "multilabel":
        raise ConfigError("train.semi_supervised=fixmatch needs one label per image; multi-label data is not supported")
    pool = unlabelled_split(cfg, data, left_out)
    loader = DataLoader(
        ArrayDataset(pool, prep, weak),
        batch_size=cfg.batch_size * cfg.unlabelled_ratio,
        shuffle=True,
        drop_last=len(pool) > cfg.batch_size * cfg.unlabelled_ratio,
        generator=torch.Generator().manual_seed(cfg.seed + 1),
    )
    log.info("FixMatch: %d unlabelled images, threshold %.2f", len(pool), cfg.fixmatch_threshold)
    return FixMatchLoss(supervised, model, loader, cfg.fixmatch_threshold, cfg.unlabelled_weight, cfg.seed)


def confident_share(loss: nn.Module) -> float | None:
    """Mean share of unlabelled images that passed the threshold (None when not FixMatch)."""
    seen = getattr(loss, "confident", None)
    return float(np.mean(seen)) if seen else None
