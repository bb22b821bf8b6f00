"""Self-supervised pretraining of the segmentation U-Net on volumes without labels; ``--init`` starts training from it.

Two methods, chosen by registered name:

- ``masked`` (inpainting, as Models Genesis does for 3D U-Nets, Zhou et al. 2019):
  blocks covering about ``mask_ratio`` of each patch are set to the image
  mean and the whole U-Net, through a one-channel output layer, redraws them.
  Every layer but the output layer learns, so ``--init`` loads encoder and
  decoder; the output layer starts random because it must learn the labels.
- ``simclr``: the encoder path (input block, downsamplings, bottleneck,
  globally pooled) maps two photometric views of a patch close together and
  far from the batch's other patches (MONAI ``ContrastiveLoss``). Only the
  encoder path is saved; the decoder starts random.

The volumes are the training split's images (labels never read) plus an
optional folder of unlabelled volumes; validation and test cases are left out
with the same split rules ``medlens train --task segment`` uses, and
``--init`` refuses an encoder that saw the run's validation or test images.
Writes ``encoder.pt``, ``encoder.json`` and the ``plan.json`` it was built for.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlens import __version__
from medlens.errors import ConfigError
from medlens.preprocess.views import ViewOptions, random_views
from medlens.registry import Registry
from medlens.segment.data import load_seg_dataset
from medlens.segment.init import ARCHITECTURE, PREPROCESSING
from medlens.segment.plan import SegPlan
from medlens.segment.preprocess import build_unet
from medlens.segment.semi import UnlabelledPatches, read_unlabelled_volumes, read_volume_for_plan
from medlens.segment.train import SegTrainConfig, split_cases
from medlens.train.device import resolve_device, seed_everything
from medlens.train.loop import optimise_epoch

log = logging.getLogger(__name__)
ENCODER_PATH = ("input_block.", "downsamples.", "bottleneck.")
# z-scored intensities have no [-1, 1] range (no gamma), and a view must not mirror what the plan does not mirror
SEG_CONTRASTIVE_VIEWS = ViewOptions(
    rotate_deg=10.0, zoom=(0.7, 1.0), shift=0.1, contrast=0.3, brightness=0.3, gamma=(1.0, 1.0), noise=0.1, cutout=0.3
)
SEG_METHODS: Registry[Callable[..., nn.Module]] = Registry("segmentation pretraining method")


@dataclass(frozen=True)
class SegPretrainConfig:
    """How to pretrain; the split settings must be those ``medlens train --task segment`` will use."""

    method: str = "masked"  # masked (inpainting, whole U-Net) or simclr (encoder path)
    epochs: int = 20
    samples_per_epoch: int = 1500
    lr: float = 3e-3
    weight_decay: float = 3e-5
    mask_ratio: float = 0.5  # masked: share of each patch hidden
    block: int = 8  # masked: edge of a hidden block, in voxels
    temperature: float = 0.5  # simclr
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0
    split_seed: int | None = None
    max_cases: int | None = None
    unlabelled: str | None = None  # a folder of extra unlabelled volumes
    device: str = "auto"

    def __post_init__(self) -> None:
        SEG_METHODS.get(self.method)
        if self.epochs < 1 or self.samples_per_epoch < 2:
            raise ConfigError(
                f"pretrain: epochs must be >= 1 and samples_per_epoch >= 2, got {self.epochs} and {self.samples_per_epoch}"
            )
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"pretrain.mask_ratio: expected a share in (0, 1), got {self.mask_ratio}")
        if self.block < 1:
            raise ConfigError(f"pretrain.block: expected a block edge of at least 1 voxel, got {self.block}")


class Inpainting(nn.Module):
    """Hide blocks of each patch; the U-Net (one output channel) redraws them; scored on the hidden voxels only."""

    def __init__(self, unet: nn.Module, plan: SegPlan, cfg: SegPretrainConfig) -> None:
        from monai.networks.blocks.dynunet_block import UnetOutBlock

        super().__init__()
        unet.output_block = UnetOutBlock(plan.dims, plan.filters[0], 1)
        self.unet, self.ratio, self.block = unet, cfg.mask_ratio, cfg.block
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
        shape = batch.shape[2:]
        grid = [-(-s // self.block) for s in shape]
        hidden = (torch.rand(len(batch), 1, *grid, generator=self.generator) < self.ratio).float()
        for axis, size in enumerate(shape):
            hidden = hidden.repeat_interleave(self.block, dim=2 + axis).narrow(2 + axis, 0, size)
        hidden = hidden.to(batch.device)
        drawn = self.unet(batch * (1 - hidden))  # z-scored input: 0 is the image mean
        error = ((drawn - batch) ** 2 * hidden).sum() / hidden.sum().clamp(min=1)
        return error, float(error.detach())

    def saved_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.unet.state_dict().items() if not k.startswith(("output_block.", "skip_layers."))}


class EncoderContrastive(nn.Module):
    """SimCLR on the U-Net's encoder path, pooled over space, through a projection MLP thrown away after."""

    def __init__(self, unet: nn.Module, plan: SegPlan, cfg: SegPretrainConfig) -> None:
        from monai.losses import ContrastiveLoss

        super().__init__()
        self.unet = unet
        self.projection = nn.Sequential(nn.Linear(plan.filters[-1], 128), nn.ReLU(), nn.Linear(128, 64))
        self.loss = ContrastiveLoss(temperature=cfg.temperature)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.unet.input_block(x)
        for down in self.unet.downsamples:
            x = down(x)
        return self.unet.bottleneck(x).mean(dim=tuple(range(2, x.ndim)))

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
        a = random_views(batch.cpu(), SEG_CONTRASTIVE_VIEWS, self.generator).to(batch.device)
        b = random_views(batch.cpu(), SEG_CONTRASTIVE_VIEWS, self.generator).to(batch.device)
        za, zb = self.projection(self.features(a)), self.projection(self.features(b))
        with torch.no_grad():
            similarity = nn.functional.normalize(za, dim=1) @ nn.functional.normalize(zb, dim=1).T
            accuracy = float((similarity.argmax(dim=1) == torch.arange(len(za), device=za.device)).float().mean())
        return self.loss(za, zb), accuracy

    def saved_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.unet.state_dict().items() if k.startswith(ENCODER_PATH)}


SEG_METHODS.add("masked", Inpainting)
SEG_METHODS.add("simclr", EncoderContrastive)
SCORE_NAMES = {"masked": "hidden-voxel MSE", "simclr": "positive-pair accuracy"}


def pretrain_segmenter(
    data: str | Path, plan: SegPlan, cfg: SegPretrainConfig, out_dir: str | Path, show_progress: bool = True
) -> Path:
    """Pretrain the plan's U-Net with ``cfg.method`` on the training split's images and write the encoder folder."""

    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    dataset = load_seg_dataset(data)
    ids = [c.case_id for c in dataset.cases if c.label is not None][: cfg.max_cases]
    split = split_cases(
        ids,
        SegTrainConfig(
            val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed, split_seed=cfg.split_seed
        ),
    )
    by_id = {c.case_id: c for c in dataset.cases}
    images = [read_volume_for_plan(by_id[c].image, plan) for c in split["train"]]  # images only: labels never read
    n_extra = 0
    if cfg.unlabelled:
        extra = read_unlabelled_volumes(Path(cfg.unlabelled), plan)
        images, n_extra = images + extra, len(extra)
    n_volumes = len(images)
    if plan.dims == 2:
        images = [im[..., k] for im in images for k in range(im.shape[-1])]
    loader = torch.utils.data.DataLoader(
        UnlabelledPatches(images, plan, cfg.samples_per_epoch, cfg.seed),
        batch_size=plan.batch_size,
        shuffle=False,
        num_workers=0,
        drop_last=True,
    )
    objective = SEG_METHODS.get(cfg.method)(build_unet(plan), plan, cfg).to(device)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (1 - min(s, steps - 1) / steps) ** 0.9)
    history, started = [], time.perf_counter()
    for epoch in range(cfg.epochs):
        loss, score = _one_epoch(
            objective, loader, optimizer, scheduler, device, f"pretrain {epoch + 1}/{cfg.epochs}", show_progress
        )
        history.append({"epoch": epoch, "loss": loss, "score": score})
        log.info("segmentation pretrain epoch %d: loss %.4f, %s %.4f", epoch, loss, SCORE_NAMES[cfg.method], score)
    source = {
        "dataset": dataset.name,
        "root": str(dataset.root),
        "licence": dataset.licence,
        "labels_used": False,
        "train_cases": split["train"],
        "left_out": {"val": split["val"], "test": split["test"]},
        "unlabelled_folder_volumes": n_extra,
        "n_volumes": n_volumes,
    }
    return _save(Path(out_dir), objective, plan, cfg, source, history, time.perf_counter() - started)


def _one_epoch(
    objective: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    title: str,
    show_progress: bool,
) -> tuple[float, float]:
    objective.train()
    return optimise_epoch(
        loader, lambda item: objective(item[0].to(device)), optimizer, scheduler, title, show_progress
    )


def _save(
    out_dir: Path,
    objective: nn.Module,
    plan: SegPlan,
    cfg: SegPretrainConfig,
    source: dict[str, Any],
    history: list[dict[str, float]],
    seconds: float,
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in objective.saved_state().items()}, out_dir / "encoder.pt")
    (out_dir / "plan.json").write_text(json.dumps(plan.to_dict(), indent=1))  # train with --plan on it
    meta = {
        "medlens_version": __version__,
        "task": "segmentation",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": cfg.method,
        "score_name": SCORE_NAMES[cfg.method],
        "loads": "the whole U-Net but its output layer" if cfg.method == "masked" else "the U-Net's encoder path",
        "network": {"name": "dynunet", **{k: plan.to_dict()[k] for k in ARCHITECTURE + PREPROCESSING}},
        "config": asdict(cfg),
        "data": source,
        "history": history,
        "seconds": round(seconds, 1),
        "use": f"medlens train DATA --task segment --plan {out_dir / 'plan.json'} --init {out_dir}",
    }
    (out_dir / "encoder.json").write_text(json.dumps(meta, indent=1, default=str))
    return out_dir
