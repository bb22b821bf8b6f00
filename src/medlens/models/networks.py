"""Classification networks by registered name, all from MONAI, for 2D and 3D.

Small medical images (MedMNIST's 28 px, 64^3 volumes) lose everything in an
ImageNet stem (7x7 stride-2 conv + max-pool turns 28 px into 7 px), so the
ResNets adapt their stem to the input size the way the MedMNIST baselines do.
``width`` scales channel counts (ResNet ``widen_factor``), the main knob for
CPU cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from medlens.errors import ConfigError
from medlens.registry import Registry


@dataclass(frozen=True)
class NetworkSpec:
    """Everything a factory needs; stored in the bundle so the same net is rebuilt for prediction."""

    name: str
    spatial_dims: int
    in_channels: int
    num_classes: int
    image_shape: tuple[int, ...]
    width: float = 1.0
    dropout: float = 0.0
    norm: str = ""  # "" keeps the net's own normalisation; "group" swaps BatchNorm for GroupNorm (what DP-SGD needs)


NETWORKS: Registry[Callable[[NetworkSpec], nn.Module]] = Registry("network")


def network_names() -> list[str]:
    return NETWORKS.names()


# Smallest input edge each net survives: its downsampling leaves no pixels below this.
MIN_IMAGE_SIZE = {"densenet121": 32, "efficientnet-b0": 64, "vit-small": 8}


def build_network(spec: NetworkSpec) -> nn.Module:
    """Build the network a spec names; an unknown name raises with "did you mean"."""
    factory = NETWORKS.get(spec.name)
    minimum = MIN_IMAGE_SIZE.get(spec.name, 1)
    if min(spec.image_shape) < minimum:
        raise ConfigError(
            f"train.model: {spec.name} needs images of at least {minimum} px per side, the data has "
            f"{'x'.join(map(str, spec.image_shape))}; use a larger size (e.g. --set size=64) or model=resnet18"
        )
    model = factory(spec)
    if spec.norm == "group":
        from opacus.validators import ModuleValidator

        model = ModuleValidator.fix(model)  # BatchNorm -> GroupNorm: per-sample gradients need no batch statistics
        for module in model.modules():
            if getattr(module, "inplace", False):
                module.inplace = False  # Opacus' backward hooks cannot see through in-place activations
    elif spec.norm:
        raise ConfigError(f"network.norm: expected '' or 'group', got {spec.norm!r}")
    return model


def _resnet_stem(spec: NetworkSpec) -> dict[str, object]:
    smallest = min(spec.image_shape)
    return {
        "conv1_t_size": 3 if smallest <= 64 else 7,
        "conv1_t_stride": 1 if smallest <= 32 else 2,
        "no_max_pool": smallest <= 64,
    }


def _resnet(depth: int) -> Callable[[NetworkSpec], nn.Module]:
    def make(spec: NetworkSpec) -> nn.Module:
        from monai.networks.nets import resnet

        factory = getattr(resnet, f"resnet{depth}")
        net = factory(
            spatial_dims=spec.spatial_dims,
            n_input_channels=spec.in_channels,
            num_classes=spec.num_classes,
            widen_factor=spec.width,
            **_resnet_stem(spec),
        )
        if spec.dropout:  # MONAI's ResNet has no dropout argument: put it before the classifier (MC dropout needs it)
            net.fc = nn.Sequential(nn.Dropout(spec.dropout), net.fc)
        return net

    return make


for _depth in (10, 18, 34, 50):
    NETWORKS.add(f"resnet{_depth}", _resnet(_depth))


@NETWORKS.register("densenet121")
def make_densenet121(spec: NetworkSpec) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.num_classes,
        dropout_prob=spec.dropout,
    )


@NETWORKS.register("efficientnet-b0")
def make_efficientnet_b0(spec: NetworkSpec) -> nn.Module:
    from monai.networks.nets import EfficientNetBN

    if spec.dropout:
        raise ConfigError("efficientnet-b0 uses its own fixed dropout (0.2, as published) and takes no dropout setting; "
                          "leave dropout at 0 for it")
    return EfficientNetBN(
        "efficientnet-b0",
        pretrained=False,
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        num_classes=spec.num_classes,
    )


class _FirstOutput(nn.Module):
    """MONAI's ViT returns (logits, hidden states); the trainer wants logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


@NETWORKS.register("vit-small")
def make_vit_small(spec: NetworkSpec) -> nn.Module:
    """A small ViT (192 wide, 6 layers, 3 heads); patches of 4 px for small images, 16 otherwise."""
    from monai.networks.nets import ViT

    patch = 4 if min(spec.image_shape) <= 64 else 16
    return _FirstOutput(
        ViT(
            in_channels=spec.in_channels,
            img_size=spec.image_shape,
            patch_size=(patch,) * spec.spatial_dims,
            hidden_size=192,
            mlp_dim=768,
            num_layers=6,
            num_heads=3,
            classification=True,
            num_classes=spec.num_classes,
            dropout_rate=spec.dropout,
            spatial_dims=spec.spatial_dims,
        )
    )


@NETWORKS.register("cnn")
def make_cnn(spec: NetworkSpec) -> nn.Module:
    """MONAI's ``Classifier``: strided residual conv units, cheap enough for 64^3 volumes on a CPU."""
    from monai.networks.nets import Classifier

    base = max(4, int(round(16 * spec.width)))
    levels = 4 if min(spec.image_shape) <= 32 else 5
    channels = tuple(base * 2**i for i in range(levels))
    return Classifier(
        in_shape=(spec.in_channels, *spec.image_shape),
        classes=spec.num_classes,
        channels=channels,
        strides=(2,) * levels,
        num_res_units=2,
        dropout=spec.dropout or None,
    )
