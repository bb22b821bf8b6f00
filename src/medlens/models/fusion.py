"""Intermediate fusion: one network reads the image and the encoded clinical values together.

The image network's encoder (everything before its classifier head, via
:class:`medlens.models.networks.FeatureExtractor`) gives a feature vector; the
clinical features go through a small MLP; the two are concatenated and one
linear head predicts. So the network can learn interactions (a shadow means
more in an older patient, an AP film is taken of sicker patients) that
averaging two models' probabilities (late fusion) cannot.
"""

from __future__ import annotations

import torch
from torch import nn

from medlens.errors import ModelError
from medlens.models.networks import FeatureExtractor


class FusionNet(nn.Module):
    def __init__(
        self, image_model: nn.Module, n_tabular: int, num_classes: int, hidden: int = 32, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.image = FeatureExtractor(image_model)
        self.tabular = nn.Sequential(nn.Linear(n_tabular, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(self.image.feature_dim + hidden, num_classes)
        self.n_tabular = n_tabular

    def forward(self, image: torch.Tensor, tabular: torch.Tensor | None = None) -> torch.Tensor:
        if tabular is None:
            raise ModelError(
                "this model fuses the image with clinical values: give them too (medlens predict or "
                "explain --clinical CSV or --clinical dicom)"
            )
        if tabular.shape[-1] != self.n_tabular:
            raise ModelError(f"clinical features: expected {self.n_tabular} encoded values, got {tabular.shape[-1]}")
        return self.head(torch.cat([self.image(image), self.tabular(tabular.to(image.dtype))], dim=1))


def image_network(model: nn.Module) -> nn.Module:
    """The image network inside a fused model (its embedding is the image's; shift and drift are watched there),
    or the model itself."""
    return model.image.model if isinstance(model, FusionNet) else model
