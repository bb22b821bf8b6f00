"""Image-to-image networks for reconstruction and enhancement, chosen by registered name.

Every network maps a ``(B, C, H, W)`` tensor to a ``(B, 1, H, W)`` image. The MRI
networks take *packed* k-space (channels: real, imaginary, sampled-column mask; see
``pack_kspace``) so one training loop and one bundle format serve them all:

- ``unet-recon``: zero-filled magnitude -> MONAI BasicUNet residual (Jin et al.-style post-processing);
- ``varnet``: MONAI's end-to-end VarNet (Sriram et al. 2020): unrolled cascades of soft
  data consistency + complex U-Net refinement, single coil (sensitivity = 1 coil's phase);
- ``unrolled-unet``: MoDL-style (Aggarwal et al. 2019): the same residual U-Net applied
  ``iterations`` times, each followed by a hard data-consistency layer in k-space;
- ``residual-unet``: image -> image + correction (super-resolution on a bicubic input);
- ``redcnn``: RED-CNN (Chen et al. 2017), the residual conv/deconv encoder-decoder for low-dose CT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.registry import Registry

RECON_NETWORKS: Registry[Callable[..., nn.Module]] = Registry("reconstruction network")


def pack_kspace(masked_kspace: torch.Tensor, columns: np.ndarray) -> torch.Tensor:
    """``(1, H, W, 2)`` masked k-space + ``(W,)`` sampled columns -> ``(3, H, W)`` network input."""
    k = masked_kspace[0].permute(2, 0, 1)
    mask = torch.from_numpy(np.asarray(columns, dtype=np.float32)).expand(k.shape[1], -1)
    return torch.cat([k, mask[None]], dim=0).float()


def _unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 3, H, W)`` -> k-space ``(B, 1, H, W, 2)`` (MONAI's layout, coil axis 1) and mask ``(1, 1, 1, W, 1)``."""
    kspace = packed[:, :2].permute(0, 2, 3, 1)[:, None].contiguous()
    mask = packed[:1, 2:3, :1, :, None]  # (1, 1, 1, W, 1): the batch shares one mask in VarNet's API
    return kspace, mask


def zero_filled_t(packed: torch.Tensor) -> torch.Tensor:
    from monai.apps.reconstruction.complex_utils import complex_abs
    from monai.networks.blocks.fft_utils_t import ifftn_centered_t

    kspace, _ = _unpack(packed)
    return complex_abs(ifftn_centered_t(kspace, spatial_dims=2, is_complex=True))  # (B, 1, H, W)


class ResidualUNet(nn.Module):
    """MONAI's BasicUNet predicting the correction to its input image."""

    def __init__(self, features: tuple[int, ...] = (16, 32, 64, 128, 256, 16)) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=tuple(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class UNetRecon(nn.Module):
    def __init__(self, features: tuple[int, ...] = (16, 32, 64, 128, 256, 16)) -> None:
        super().__init__()
        self.unet = ResidualUNet(features)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.unet(zero_filled_t(packed))


class UnrolledUNet(nn.Module):
    """Shared-weight residual U-Net and data consistency, unrolled; can start from a trained ``unet-recon``."""

    def __init__(self, iterations: int = 3, features: tuple[int, ...] = (16, 32, 64, 128, 256, 16)) -> None:
        super().__init__()
        self.unet = ResidualUNet(features)
        self.iterations = iterations

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        from monai.apps.reconstruction.complex_utils import complex_abs
        from monai.networks.blocks.fft_utils_t import fftn_centered_t, ifftn_centered_t

        measured, _ = _unpack(packed)  # (B, 1, H, W, 2)
        keep = packed[:, 2:3, :, :, None]  # each sample's own mask, (B, 1, H, W, 1)
        x = complex_abs(ifftn_centered_t(measured, spatial_dims=2, is_complex=True))
        for _ in range(self.iterations):
            x = self.unet(x)
            k = fftn_centered_t(torch.stack([x, torch.zeros_like(x)], dim=-1), spatial_dims=2, is_complex=True)
            x = complex_abs(ifftn_centered_t(k * (1 - keep) + measured * keep, spatial_dims=2, is_complex=True))
        return x


class VarNetRecon(nn.Module):
    """MONAI ``VariationalNetworkModel`` on packed single-coil k-space.

    Batches must share one mask (VarNet's API takes one ``(1, 1, 1, W, 1)`` mask), so
    training draws one mask per batch.
    """

    def __init__(
        self,
        cascades: int = 6,
        features: tuple[int, ...] = (16, 16, 32, 64, 128, 16),
        sens_features: tuple[int, ...] = (8, 8, 16, 32, 64, 8),
    ) -> None:
        super().__init__()
        from monai.apps.reconstruction.networks.nets.coil_sensitivity_model import CoilSensitivityModel
        from monai.apps.reconstruction.networks.nets.complex_unet import ComplexUnet
        from monai.apps.reconstruction.networks.nets.varnet import VariationalNetworkModel

        self.net = VariationalNetworkModel(
            CoilSensitivityModel(spatial_dims=2, features=tuple(sens_features)),
            ComplexUnet(spatial_dims=2, features=tuple(features)),
            num_cascades=cascades,
        )

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        kspace, mask = _unpack(packed)
        return self.net(kspace, mask.bool())[:, None]


class REDCNN(nn.Module):
    """RED-CNN: five 5x5 convolutions, five transposed convolutions, three residual shortcuts (Chen et al. 2017)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.encoder = nn.ModuleList([nn.Conv2d(1 if i == 0 else width, width, 5) for i in range(5)])
        self.decoder = nn.ModuleList([nn.ConvTranspose2d(width, 1 if i == 4 else width, 5) for i in range(5)])
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        h = x
        for i, conv in enumerate(self.encoder):
            h = self.relu(conv(h))
            if i in (1, 3):
                skips.append(h)
        for i, deconv in enumerate(self.decoder):
            h = deconv(h)
            if i in (0, 2):
                h = self.relu(h + skips.pop())
            elif i == 4:
                h = h + skips.pop()
            else:
                h = self.relu(h)
        return h


RECON_NETWORKS.add("unet-recon", UNetRecon)
RECON_NETWORKS.add("unrolled-unet", UnrolledUNet)
RECON_NETWORKS.add("varnet", VarNetRecon)
RECON_NETWORKS.add("residual-unet", ResidualUNet)
RECON_NETWORKS.add("redcnn", REDCNN)


def build_recon_network(name: str, **kwargs: Any) -> nn.Module:
    return RECON_NETWORKS.get(name)(**kwargs)
