"""``medlens pretrain``: learn an encoder from images without their labels; ``medlens train --init`` starts from it.

The images are a dataset's train split (labels never read) plus any folder of
unlabelled images. The validation and test splits are left alone, so the
downstream model is still selected and scored on images its encoder never saw.
Writes ``OUT/encoder.pt`` (the network's weights without its head) and
``OUT/encoder.json`` (network, method, data, settings, loss per epoch).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens import __version__
from medlens.classify.data import load_dataset, subsample
from medlens.classify.semi import read_unlabelled_folder
from medlens.classify.train import make_preprocessing
from medlens.config import TrainConfig
from medlens.errors import ConfigError
from medlens.models.networks import FeatureExtractor, NetworkSpec, build_network, head_parameter_names
from medlens.preprocess.pipeline import normalized_inputs
from medlens.pretrain.methods import METHODS
from medlens.train.device import resolve_device, seed_everything
from medlens.train.loop import optimise_epoch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """How to pretrain; ``model``/``width``/``size`` must be what ``medlens train --init`` will use."""

    dataset: str = "pneumoniamnist"
    size: int = 28
    image_dir: str | None = None
    image_size: tuple[int, ...] | None = None
    unlabelled: str | None = None  # a folder of extra unlabelled images (resized to the dataset's size)
    model: str = "cnn"
    width: float = 1.0
    method: str = "simclr"  # simclr or masked
    epochs: int = 20
    batch_size: int = 128  # SimCLR wants many negatives per batch
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.5  # SimCLR
    mask_ratio: float = 0.5  # masked: share of patches hidden
    patch: int = 4  # masked: patch edge in pixels
    max_images: int | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        METHODS.get(self.method)  # an unknown name raises with "did you mean"
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError(
                f"pretrain: epochs must be >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}"
            )
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"pretrain.mask_ratio: expected a share in (0, 1), got {self.mask_ratio}")


def pretrain(
    cfg: PretrainConfig, out_dir: Path, data_dir: str | Path | None = None, show_progress: bool = True
) -> Path:
    """Pretrain ``cfg.model``'s encoder with ``cfg.method`` and write the encoder folder; returns it."""

    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    images, spec, source = _unlabelled_images(cfg, data_dir)
    model = build_network(spec)
    encoder = FeatureExtractor(model)
    objective = METHODS.get(cfg.method)(
        feature_dim=encoder.feature_dim,
        image_shape=spec.image_shape,
        in_channels=spec.in_channels,
        temperature=cfg.temperature,
        mask_ratio=cfg.mask_ratio,
        patch=cfg.patch,
        seed=cfg.seed,
    )
    encoder.to(device), objective.to(device)
    params = [p for n, p in model.named_parameters() if n not in head_parameter_names(model)]
    optimizer = torch.optim.AdamW([*params, *objective.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, len(images) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    history, started = [], time.perf_counter()
    generator = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        loss, score = _one_epoch(
            encoder,
            objective,
            images,
            cfg.batch_size,
            optimizer,
            scheduler,
            device,
            generator,
            f"pretrain {epoch + 1}/{cfg.epochs}",
            show_progress,
        )
        history.append({"epoch": epoch, "loss": loss, "score": score})
        log.info("pretrain epoch %d: loss %.4f, %s %.4f", epoch, loss, _score_name(cfg.method), score)
    return _save_encoder(out_dir, model, spec, cfg, source, len(images), history, time.perf_counter() - started)


def _unlabelled_images(
    cfg: PretrainConfig, data_dir: str | Path | None
) -> tuple[torch.Tensor, NetworkSpec, dict[str, Any]]:
    data = load_dataset(cfg.dataset, cfg.size, data_dir, cfg.image_dir, cfg.image_size, seed=cfg.seed)
    train = data.splits["train"]
    if cfg.max_images and cfg.max_images < len(train):
        train = subsample(train, cfg.max_images, cfg.seed)
    prep = make_preprocessing(TrainConfig(dataset=cfg.dataset, image_size=cfg.image_size), data)
    arrays = [normalized_inputs(train, prep)]
    if cfg.unlabelled:
        extra = read_unlabelled_folder(Path(cfg.unlabelled), data)
        arrays.append(normalized_inputs(type(train)(extra, np.zeros(len(extra)), [], []), prep))
    images = torch.as_tensor(np.concatenate(arrays), dtype=torch.float32)
    spec = NetworkSpec(
        name=cfg.model,
        spatial_dims=data.spatial_dims,
        in_channels=data.n_channels,
        num_classes=len(data.label_names),
        image_shape=data.image_shape,
        width=cfg.width,
    )
    source = {
        "dataset": data.name,
        **data.source,
        "train_images": len(train),
        "unlabelled_folder_images": len(images) - len(train),
        "labels_used": False,
    }
    return images, spec, source


def _one_epoch(
    encoder: nn.Module,
    objective: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    generator: torch.Generator,
    title: str,
    show_progress: bool,
) -> tuple[float, float]:
    encoder.train(), objective.train()
    order = torch.randperm(len(images), generator=generator)
    batches = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)] or [order]
    return optimise_epoch(
        batches, lambda index: objective(encoder, images[index].to(device)), optimizer, scheduler, title, show_progress
    )


def _score_name(method: str) -> str:
    return {"simclr": "positive-pair accuracy", "masked": "hidden-pixel MSE"}.get(method, "score")


def _save_encoder(
    out_dir: Path,
    model: nn.Module,
    spec: NetworkSpec,
    cfg: PretrainConfig,
    source: dict[str, Any],
    n_images: int,
    history: list[dict[str, float]],
    seconds: float,
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    head = head_parameter_names(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in head}
    torch.save(state, out_dir / "encoder.pt")
    meta = {
        "medlens_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": cfg.method,
        "score_name": _score_name(cfg.method),
        "network": asdict(spec),
        "config": asdict(cfg),
        "data": {**source, "n_images": n_images},
        "history": history,
        "seconds": round(seconds, 1),
        "use": f"medlens train DATA --init {out_dir} --set model={cfg.model} --set width={cfg.width}",
    }
    (out_dir / "encoder.json").write_text(json.dumps(meta, indent=1, default=str))
    return out_dir
