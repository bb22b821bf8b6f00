"""Strong random views of a normalised batch, in torch, for 2D and 3D: what SimCLR and FixMatch learn from.

Chosen for medical images rather than photographs: no colour jitter (grey
scans), no left-right flip by default (laterality matters on a chest X-ray;
``flip=True`` for anatomy without it), gentle rotations (patients lie roughly
aligned), zoom-in crops of 60-100 % so the finding usually stays in view,
contrast/brightness/gamma changes like another scanner or exposure, noise
like a lower dose, and a cut-out box. Works on a whole batch at once
(``affine_grid``), so a CPU spends its time in the network, not in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class ViewOptions:
    rotate_deg: float = 15.0
    zoom: tuple[float, float] = (0.6, 1.0)  # fraction of the field of view kept (a random resized crop)
    shift: float = 0.1  # translation, as a fraction of the field of view
    contrast: float = 0.3  # intensity x (1 +- contrast)
    brightness: float = 0.2  # + brightness (the input spans [-1, 1])
    gamma: tuple[float, float] = (0.7, 1.5)
    noise: float = 0.05  # Gaussian noise standard deviation, at most
    cutout: float = 0.4  # side of the cut-out box, as a fraction of each edge, at most (0: none)
    flip: bool = False  # left-right flips (never for projection X-rays)


SIMCLR_VIEWS = ViewOptions()
FIXMATCH_STRONG = ViewOptions(zoom=(0.8, 1.0), cutout=0.5)
# Segmentation's strong view keeps every voxel where it was (the pseudo-label map must still fit) and works on
# z-scored MR/CT intensities (no gamma, whose [-1, 1] range they do not have): contrast, brightness, noise, cut-out.
PHOTOMETRIC_STRONG = ViewOptions(
    rotate_deg=0.0, zoom=(1.0, 1.0), shift=0.0, contrast=0.3, brightness=0.3, gamma=(1.0, 1.0), noise=0.1, cutout=0.4
)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator).to(device) * (high - low) + low


def _affine(x: torch.Tensor, opts: ViewOptions, generator: torch.Generator | None) -> torch.Tensor:
    if not (opts.rotate_deg or opts.shift or opts.flip or opts.zoom != (1.0, 1.0)):
        return x  # no geometric change asked for: keep voxels exactly (segmentation)
    n, dims = x.shape[0], x.ndim - 2
    theta = torch.zeros(n, dims, dims + 1, device=x.device)
    zoom = _uniform(n, *opts.zoom, generator, x.device)
    angle = _uniform(n, -1, 1, generator, x.device) * math.radians(opts.rotate_deg)
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    for axis in range(dims):
        theta[:, axis, axis] = zoom
    a, b = dims - 2, dims - 1
    theta[:, a, a], theta[:, a, b], theta[:, b, a], theta[:, b, b] = (
        cos,
        -sin,
        sin,
        cos,
    )  # rotation in the plane of the last two grid axes
    if opts.flip:
        theta[:, :, 0] *= torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(x.device)[:, None]
    theta[:, :, dims] = (torch.rand(n, dims, generator=generator).to(x.device) * 2 - 1) * opts.shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _intensity(x: torch.Tensor, opts: ViewOptions, generator: torch.Generator | None) -> torch.Tensor:
    n = x.shape[0]
    shape = (n,) + (1,) * (x.ndim - 1)
    if opts.gamma != (1.0, 1.0):  # gamma assumes the [-1, 1] range of classification inputs
        gamma = _uniform(n, *opts.gamma, generator, x.device).view(shape)
        x = ((x.clamp(-1, 1) + 1) / 2) ** gamma * 2 - 1
    x = x * (1 + _uniform(n, -opts.contrast, opts.contrast, generator, x.device).view(shape))
    x = x + _uniform(n, -opts.brightness, opts.brightness, generator, x.device).view(shape)
    sigma = _uniform(n, 0, opts.noise, generator, x.device).view(shape)
    return x + sigma * torch.randn(x.shape, generator=generator).to(x.device)


def _cutout(x: torch.Tensor, opts: ViewOptions, generator: torch.Generator | None) -> torch.Tensor:
    if not opts.cutout:
        return x
    n, spatial = x.shape[0], x.shape[2:]
    keep = torch.ones_like(x[:, :1])
    for i in range(n):
        box = [slice(None), slice(None)]
        for edge in spatial:
            side = max(1, int(edge * opts.cutout * float(torch.rand(1, generator=generator))))
            start = int(torch.randint(0, edge - side + 1, (1,), generator=generator))
            box.append(slice(start, start + side))
        keep[i][tuple(box[1:])] = 0
    return x * keep + (1 - keep) * x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)


def random_views(
    x: torch.Tensor, opts: ViewOptions = SIMCLR_VIEWS, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One random strong view of each image in a (N, C, *spatial) batch normalised to about [-1, 1]."""
    with torch.no_grad():
        return _cutout(_intensity(_affine(x.float(), opts, generator), opts, generator), opts, generator)
