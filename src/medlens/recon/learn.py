"""A learned MRI reconstruction: residual U-Net on the zero-filled image, then a data-consistency step.

Each training step draws a fresh mask for each slice (the network must not learn
one mask's aliasing). Images are scaled by the zero-filled image's maximum, which
is known at inference time; after the network, the sampled k-space lines are put
back exactly (data consistency), so the output never contradicts the measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medlens.recon.metrics import volume_metrics
from medlens.recon.mri import to_kspace, undersample, zero_filled
from medlens.train import LoopOptions, fit


@dataclass(frozen=True)
class ReconTrainConfig:
    mask: str = "random"
    acceleration: float = 4.0
    center_fraction: float = 0.08
    epochs: int = 30
    samples_per_epoch: int = 64
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0
    features: tuple[int, ...] = (16, 32, 64, 128, 256, 16)


class ResidualUNet(nn.Module):
    """MONAI's BasicUNet predicting the correction to the zero-filled image."""

    def __init__(self, features: tuple[int, ...]) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class UndersampledSlices(torch.utils.data.Dataset):
    """(zero-filled, target) pairs, both scaled by the zero-filled maximum, a new random mask per draw."""

    def __init__(self, images: list[np.ndarray], cfg: ReconTrainConfig, samples: int, seed: int) -> None:
        self.images, self.cfg, self.samples = images, cfg, samples
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index % len(self.images)]
        masked, _, _ = undersample(to_kspace(image), self.cfg.mask, self.cfg.acceleration, self.cfg.center_fraction,
                                   seed=int(self.rng.integers(2**31)))
        zf = zero_filled(masked)
        scale = float(zf.max()) or 1.0
        return torch.from_numpy(zf / scale)[None], torch.from_numpy(image.astype(np.float32) / scale)[None]


def data_consistency(image: np.ndarray, masked_kspace: torch.Tensor, columns: np.ndarray) -> np.ndarray:
    """Replace the sampled columns of the image's k-space by the measured ones; magnitude back."""
    kspace = to_kspace(image)
    keep = torch.from_numpy(columns.astype(np.float32))[None, None, :, None]
    return zero_filled(kspace * (1 - keep) + masked_kspace * keep)


@torch.no_grad()
def unet_reconstruct(model: nn.Module, masked_kspace: torch.Tensor, columns: np.ndarray) -> np.ndarray:
    """Zero-filled -> network -> data consistency, magnitude ``(H, W)`` in the input's units."""
    model.eval()
    zf = zero_filled(masked_kspace)
    scale = float(zf.max()) or 1.0
    out = model(torch.from_numpy(zf / scale)[None, None])[0, 0].numpy() * scale
    return data_consistency(np.clip(out, 0, None), masked_kspace, columns)


def train_recon_unet(train: list[np.ndarray], val: list[np.ndarray], cfg: ReconTrainConfig, out_dir: Path,
                     show_progress: bool = False) -> tuple[nn.Module, dict]:
    """Train on ``train`` slices, select the epoch by mean validation PSNR (fixed validation masks)."""
    torch.manual_seed(cfg.seed)
    model = ResidualUNet(cfg.features)
    loader = torch.utils.data.DataLoader(UndersampledSlices(train, cfg, cfg.samples_per_epoch, cfg.seed),
                                         batch_size=cfg.batch_size, shuffle=True, num_workers=0)
    val_cases = [(image, *undersample(to_kspace(image), cfg.mask, cfg.acceleration, cfg.center_fraction, seed=10_000 + i))
                 for i, image in enumerate(val)]

    def score_val(m: nn.Module) -> dict[str, float]:
        psnr = [volume_metrics(image, unet_reconstruct(m, masked, columns))["psnr"] for image, masked, _, columns in val_cases]
        return {"score": float(np.mean(psnr))}

    options = LoopOptions(epochs=cfg.epochs, lr=cfg.lr, weight_decay=0.0, warmup_epochs=1, patience=cfg.epochs,
                          device=torch.device("cpu"), show_progress=show_progress)
    result = fit(model, nn.L1Loss(), loader, score_val, options, out_dir / "checkpoints", run_key=repr(cfg))
    model.load_state_dict(result.best_state)
    return model.eval(), {"best_epoch": result.best_epoch, "val_psnr": result.best_score, "history": result.history}
