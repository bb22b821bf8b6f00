"""Learned reconstruction and enhancement: one training loop for MRI, CT denoising and super-resolution.

MRI training draws a fresh mask for every batch (the network must not learn one
mask's aliasing) and mixes the accelerations it is trained for, so one model serves
4x and 8x. Images are scaled by the zero-filled image's maximum, which is known at
inference time; after the network the sampled k-space lines are put back exactly
(data consistency), so the output never contradicts the measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.recon.metrics import volume_metrics
from medlens.recon.mri import to_kspace, undersample, zero_filled
from medlens.recon.networks import build_recon_network, pack_kspace
from medlens.train import LoopOptions, fit

CENTRE_FRACTIONS = {4: 0.08, 8: 0.04}  # fastMRI: 8% fully sampled centre at 4x, 4% at 8x


@dataclass(frozen=True)
class EnhanceTrainConfig:
    network: str = "unet-recon"
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    samples_per_epoch: int = 64
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class MRIMaskConfig:
    mask: str = "random"
    accelerations: tuple[int, ...] = (4, 8)


def _flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        image = image[:, ::-1]
    if rng.random() < 0.5:
        image = image[::-1]
    return np.ascontiguousarray(image)


class UndersampledBatches(torch.utils.data.Dataset):
    """Whole batches of (packed k-space, target) sharing one fresh mask (VarNet takes one mask per batch)."""

    def __init__(
        self, images: Sequence[np.ndarray], masks: MRIMaskConfig, batches: int, batch_size: int, seed: int
    ) -> None:
        self.images, self.masks, self.batches, self.batch_size = list(images), masks, batches, batch_size
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        acc = int(self.rng.choice(self.masks.accelerations))
        seed = int(self.rng.integers(2**31))
        inputs, targets = [], []
        for _ in range(self.batch_size):
            image = _flip(self.images[int(self.rng.integers(len(self.images)))], self.rng)
            masked, _, columns = undersample(to_kspace(image), self.masks.mask, acc, CENTRE_FRACTIONS[acc], seed=seed)
            scale = float(zero_filled(masked).max()) or 1.0
            inputs.append(pack_kspace(masked / scale, columns))
            targets.append(torch.from_numpy(image.astype(np.float32) / scale)[None])
        return torch.stack(inputs), torch.stack(targets)


def data_consistency(image: np.ndarray, masked_kspace: torch.Tensor, columns: np.ndarray) -> np.ndarray:
    """Replace the sampled columns of the image's k-space by the measured ones; magnitude back."""
    kspace = to_kspace(image)
    keep = torch.from_numpy(columns.astype(np.float32))[None, None, :, None]
    return zero_filled(kspace * (1 - keep) + masked_kspace * keep)


@torch.no_grad()
def mri_reconstruct(model: nn.Module, masked_kspace: torch.Tensor, columns: np.ndarray) -> np.ndarray:
    """Masked k-space ``(1, H, W, 2)`` -> network -> data consistency, magnitude ``(H, W)`` in the input's units."""
    model.eval()
    scale = float(zero_filled(masked_kspace).max()) or 1.0
    out = model(pack_kspace(masked_kspace / scale, columns)[None])[0, 0].numpy() * scale
    return data_consistency(np.clip(out, 0, None), masked_kspace, columns)


def train_enhancer(
    model: nn.Module,
    batches: torch.utils.data.Dataset,
    score_val: Callable[[nn.Module], float],
    cfg: EnhanceTrainConfig,
    out_dir: Path,
    show_progress: bool = False,
) -> tuple[nn.Module, dict]:
    """L1 training, epoch chosen by the validation score (higher is better). ``batches`` yields whole batches."""
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=0)
    options = LoopOptions(
        epochs=cfg.epochs,
        lr=cfg.lr,
        weight_decay=0.0,
        warmup_epochs=1,
        patience=cfg.epochs,
        device=torch.device("cpu"),
        show_progress=show_progress,
    )
    result = fit(
        model,
        nn.L1Loss(),
        loader,
        lambda m: {"score": float(score_val(m))},
        options,
        out_dir / "checkpoints",
        run_key=repr(cfg),
    )
    model.load_state_dict(result.best_state)
    return model.eval(), {
        "best_epoch": result.best_epoch,
        "val_score": result.best_score,
        "history": result.history,
        "train_seconds": result.seconds,
    }


def train_mri(
    train: Sequence[np.ndarray],
    val: Sequence[np.ndarray],
    cfg: EnhanceTrainConfig,
    out_dir: Path,
    masks: MRIMaskConfig = MRIMaskConfig(),
    show_progress: bool = False,
    init: dict[str, torch.Tensor] | None = None,
) -> tuple[nn.Module, dict]:
    """Train an MRI reconstruction network; select the epoch by mean validation PSNR over its accelerations.

    ``init`` is a state dict to start from (e.g. an unrolled network from a trained ``unet-recon``).
    """

    torch.manual_seed(cfg.seed)
    model = build_recon_network(cfg.network, **cfg.network_kwargs)
    if init is not None:
        model.load_state_dict(init)
    batches = UndersampledBatches(
        train, masks, max(1, cfg.samples_per_epoch // cfg.batch_size), cfg.batch_size, cfg.seed
    )
    val_cases = [
        (image, *undersample(to_kspace(image), masks.mask, acc, CENTRE_FRACTIONS[acc], seed=10_000 + i))
        for acc in masks.accelerations
        for i, image in enumerate(val)
    ]

    def score(m: nn.Module) -> float:
        return float(
            np.mean(
                [
                    volume_metrics(image, mri_reconstruct(m, masked, columns))["psnr"]
                    for image, masked, _, columns in val_cases
                ]
            )
        )

    return train_enhancer(model, batches, score, cfg, out_dir, show_progress)
