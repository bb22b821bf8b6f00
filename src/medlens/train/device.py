"""Where and how reproducibly to run: seeding and the device, shared by every kind of training."""

from __future__ import annotations

import random

import numpy as np
import torch

from medlens.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` (a CUDA GPU when one is visible, else the CPU), ``cpu`` or ``cuda`` (an error without a GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)
