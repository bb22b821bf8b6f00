"""Self-supervised objectives by registered name: what an encoder learns from images without labels.

- ``simclr`` (Chen et al. 2020): two strong views of each image
  (:mod:`medlens.preprocess.views`, medical-image augmentations) must map
  close together and far from the other images in the batch (NT-Xent, MONAI
  ``ContrastiveLoss``), through a projection MLP that is thrown away after.
- ``masked``: half of the image is hidden in square (cubic in 3D) patches
  and a small decoder must redraw the hidden pixels from the encoder's
  features (a masked autoencoder for CNNs: the decoder reads the same
  features the classifier head will, so what helps it helps the head).

Each objective is a module: ``objective(encoder, batch) -> (loss, score)``,
where ``score`` is a number to watch (positive-pair accuracy, or the hidden
pixels' mean squared error).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from medlens.preprocess.views import SIMCLR_VIEWS, random_views
from medlens.registry import Registry

Objective = nn.Module
METHODS: Registry[Callable[..., Objective]] = Registry("pretraining method")


class SimCLR(nn.Module):
    def __init__(
        self,
        feature_dim: int,
        image_shape: tuple[int, ...],
        temperature: float = 0.5,
        seed: int = 0,
        flip: bool = False,
        **_: object,
    ) -> None:
        from monai.losses import ContrastiveLoss

        super().__init__()
        self.projection = nn.Sequential(nn.Linear(feature_dim, 256), nn.ReLU(), nn.Linear(256, 128))
        self.loss = ContrastiveLoss(temperature=temperature)
        self.generator = torch.Generator().manual_seed(seed)
        self.views = SIMCLR_VIEWS if not flip else type(SIMCLR_VIEWS)(flip=True)

    def forward(self, encoder: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
        a = random_views(batch.cpu(), self.views, self.generator).to(batch.device)
        b = random_views(batch.cpu(), self.views, self.generator).to(batch.device)
        za, zb = self.projection(encoder(a)), self.projection(encoder(b))
        with torch.no_grad():
            similarity = F.normalize(za, dim=1) @ F.normalize(zb, dim=1).T
            accuracy = float((similarity.argmax(dim=1) == torch.arange(len(za), device=za.device)).float().mean())
        return self.loss(za, zb), accuracy


class MaskedReconstruction(nn.Module):
    """Decode at most 4096 values (a coarse image), upsample, and score the hidden pixels only."""

    def __init__(
        self,
        feature_dim: int,
        image_shape: tuple[int, ...],
        in_channels: int = 1,
        mask_ratio: float = 0.5,
        patch: int = 4,
        seed: int = 0,
        **_: object,
    ) -> None:
        super().__init__()
        self.image_shape, self.mask_ratio, self.patch = tuple(image_shape), mask_ratio, patch
        factor = max(1, math.ceil((math.prod(image_shape) * in_channels / 4096) ** (1 / len(image_shape))))
        self.coarse = tuple(max(1, s // factor) for s in image_shape)
        self.channels = in_channels
        self.decoder = nn.Sequential(
            nn.Linear(feature_dim, 512), nn.ReLU(), nn.Linear(512, in_channels * math.prod(self.coarse))
        )
        self.generator = torch.Generator().manual_seed(seed)

    def mask(self, batch: torch.Tensor) -> torch.Tensor:
        """1 where hidden: random patches covering about ``mask_ratio`` of the image."""
        grid = [math.ceil(s / self.patch) for s in self.image_shape]
        hidden = (torch.rand(len(batch), 1, *grid, generator=self.generator) < self.mask_ratio).float()
        for axis, size in enumerate(self.image_shape):
            hidden = hidden.repeat_interleave(self.patch, dim=2 + axis).narrow(2 + axis, 0, size)
        return hidden.to(batch.device)

    def forward(self, encoder: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
        hidden = self.mask(batch)
        features = encoder(batch * (1 - hidden))  # hidden pixels set to 0, mid-grey of the [-1, 1] input
        coarse = self.decoder(features).view(len(batch), self.channels, *self.coarse)
        mode = "bilinear" if len(self.image_shape) == 2 else "trilinear"
        drawn = F.interpolate(coarse, size=self.image_shape, mode=mode, align_corners=False)
        error = ((drawn - batch) ** 2 * hidden).sum() / hidden.sum().clamp(min=1) / self.channels
        return error, float(error.detach())


METHODS.add("simclr", SimCLR)
METHODS.add("masked", MaskedReconstruction)
