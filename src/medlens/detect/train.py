"""Training a detector: images scaled once, boxes moved with every augmentation (MONAI's box transforms), the
shared training loop, selection and early stopping on validation mAP@0.5, counting thresholds on validation, a
self-describing bundle."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens import __version__
from medlens.bundle.manifest import save_bundle
from medlens.detect.data import DetectionData, DetectionItem, check_boxes_inside, load_detection_dataset
from medlens.detect.metrics import choose_count_thresholds, coco_map, count_errors
from medlens.detect.network import DetectorSpec, build_detector, plan_anchors, to_array_order, to_xy_order
from medlens.detect.preprocess import DetectPreprocessing, detect_images, prepare_image
from medlens.errors import ConfigError, DataError
from medlens.models.init import imagenet_record
from medlens.train import LoopOptions, fit
from medlens.train.device import resolve_device, seed_everything

AUGMENT_OPTIONS = ("auto", "microscopy", "radiograph", "volume", "none")
COUNT_RULE = "validation split ({n} images): lowest mean absolute count error per image, the middle of the best range"


@dataclass(frozen=True)
class DetectConfig:
    """How to train a detector (``--set key=value``; ``--task detect``). Selection uses validation mAP@0.5 only."""

    dataset: str = ""
    image_dir: str | None = None  # where the annotation's file names start (VOC: JPEGImages/; CSV/COCO: its folder)
    max_size: int = 512  # 2D: the longest side the network sees, in pixels (images are scaled down, never up)
    backbone: str = "auto"  # efficientnet-lite0 (2D, ImageNet weights) | resnet10 | resnet18 (3D)
    init: str | None = "imagenet"  # 2D: ImageNet weights for the backbone; none: random
    fpn_channels: int = 64
    epochs: int = 30
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    patience: int = 8
    augment: str = "auto"  # microscopy: flips and quarter turns; radiograph: small zoom, no flips; volume; none
    modality: str | None = None  # the images' DICOM modality (SM, CT, CR, ...): routing in the service
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.augment not in AUGMENT_OPTIONS:
            raise ConfigError(f"detect.augment: {self.augment!r}; choose {', '.join(AUGMENT_OPTIONS)}")
        if self.max_size < 32:
            raise ConfigError(f"detect.max_size: {self.max_size} is too small; give the longest side in pixels (>= 32)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("detect.epochs and detect.batch_size must be at least 1")


@dataclass
class Prepared:
    """One image as the network sees it: ``image`` (C, *spatial) in [0, 1], boxes in array order, labels."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scale: float
    name: str


def prepare_items(items: list[DetectionItem], pre: DetectPreprocessing) -> tuple[list[Prepared], list[str]]:
    """Read and scale every image of ``items``; an unreadable image or a box outside its image is reported by file
    and the image left out (returned problems), so one bad file does not lose the rest."""
    out, problems = [], []
    for item in items:
        try:
            image, scale = prepare_image(item.file, pre)
            raw_shape = tuple(round(s / scale) for s in image.shape[1:])
            boxes = check_boxes_inside(item, raw_shape) * scale
        except DataError as exc:
            problems.append(str(exc))
            continue
        out.append(Prepared(image, to_array_order(boxes, pre.spatial_dims), item.labels, scale, item.name))
    return out, problems


class BoxDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[Prepared], transform: Any) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        it = self.items[i]
        sample = {
            "image": torch.as_tensor(it.image),
            "boxes": torch.as_tensor(it.boxes),
            "labels": torch.as_tensor(it.labels),
        }
        if self.transform is not None:
            sample = self.transform(sample)
        image = torch.as_tensor(sample["image"]).float()
        return image, {
            "boxes": torch.as_tensor(sample["boxes"]).float(),
            "labels": torch.as_tensor(sample["labels"]).long(),
        }


def pad_batch(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Images padded at the far edges to one shape (boxes are unchanged by that) and stacked; targets as a list."""
    shape = [max(img.shape[d] for img, _ in batch) for d in range(batch[0][0].ndim)]
    images = torch.zeros(len(batch), *shape)
    for k, (img, _) in enumerate(batch):
        images[(k, *(slice(0, s) for s in img.shape))] = img
    return images, [t for _, t in batch]


def box_augmentation(name: str, spatial_dims: int) -> Any:
    """MONAI's box-aware transforms for ``name``: every geometric change moves the boxes with the image."""
    if name == "none":
        return None
    from monai.apps.detection.transforms.dictionary import ClipBoxToImaged, RandFlipBoxd, RandRotateBox90d, RandZoomBoxd
    from monai.transforms import Compose, RandAdjustContrastd, RandScaleIntensityd, RandShiftIntensityd

    keys = {"image_keys": "image", "box_keys": "boxes", "box_ref_image_keys": "image"}
    geometry: list[Any] = [
        RandZoomBoxd(**keys, prob=0.5, min_zoom=0.85, max_zoom=1.15, keep_size=True, padding_mode="edge")
    ]
    if name in ("microscopy", "volume"):  # no preferred orientation
        geometry += [RandFlipBoxd(**keys, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
        geometry.append(RandRotateBox90d(**keys, prob=0.5, max_k=3, spatial_axes=(0, 1)))
    return Compose(
        [
            *geometry,
            ClipBoxToImaged(box_keys="boxes", label_keys="labels", box_ref_image_keys="image", remove_empty=True),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.8, 1.25)),
            RandScaleIntensityd("image", factors=0.1, prob=0.3, channel_wise=True),
            RandShiftIntensityd("image", offsets=0.05, prob=0.3, channel_wise=True),
        ]
    )


def _detection_loss(
    model: torch.nn.Module, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]
) -> torch.Tensor:
    losses = model(images, targets)
    return losses["classification"] + losses["box_regression"]


def train_detector(cfg: DetectConfig, out: Path, show_progress: bool = True) -> Path:
    """Train on ``cfg.dataset``'s train split, select on its validation split; the bundle goes to ``out/model``."""
    seed_everything(cfg.seed)
    data = load_detection_dataset(cfg.dataset, cfg.image_dir, cfg.seed)
    pre = DetectPreprocessing.for_data(data, cfg.max_size)
    train_items, problems = prepare_items(data.split("train"), pre)
    val_items, val_problems = prepare_items(data.split("val"), pre)
    if not train_items or not val_items:
        raise DataError(
            f"{cfg.dataset}: no usable {'training' if not train_items else 'validation'} images; "
            + "; ".join((problems + val_problems)[:3])
        )
    spec = _plan_network(cfg, data, pre, train_items)
    device = resolve_device(cfg.device)
    detector = build_detector(spec, imagenet=cfg.init == "imagenet" and spec.spatial_dims == 2)
    augment = cfg.augment if cfg.augment != "auto" else ("volume" if spec.spatial_dims == 3 else "microscopy")
    loader = torch.utils.data.DataLoader(
        BoxDataset(train_items, box_augmentation(augment, spec.spatial_dims)),
        batch_size=cfg.batch_size,
        shuffle=True,
        collate_fn=pad_batch,
        generator=torch.Generator().manual_seed(cfg.seed),
        drop_last=len(train_items) > cfg.batch_size,
    )
    options = LoopOptions(
        epochs=cfg.epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_epochs=cfg.warmup_epochs,
        patience=cfg.patience,
        device=device,
        show_progress=show_progress,
        loss_takes_model=True,
    )

    def score_val(model: torch.nn.Module) -> dict[str, float]:
        preds = detect_images(model, [v.image for v in val_items], pre, [v.scale for v in val_items], device)
        m = coco_map(preds, _truths(val_items, pre), data.label_names)
        return {"score": m["map_50"], "map_50": m["map_50"], "map": m["map"]}

    result = fit(detector, _detection_loss, loader, score_val, options, out / "checkpoints", run_key=repr(asdict(cfg)))
    detector.load_state_dict(result.best_state)
    detector.eval()
    return _save(cfg, out / "model", detector, spec, pre, data, val_items, result, problems + val_problems, augment)


def _plan_network(
    cfg: DetectConfig, data: DetectionData, pre: DetectPreprocessing, items: list[Prepared]
) -> DetectorSpec:
    half = data.spatial_dims
    sizes = np.concatenate([it.boxes[:, half:] - it.boxes[:, :half] for it in items if len(it.boxes)])
    anchors = plan_anchors(sizes, data.spatial_dims)
    levels = len(anchors["feature_map_scales"])
    backbone = cfg.backbone if cfg.backbone != "auto" else ("efficientnet-lite0" if half == 2 else "resnet10")
    stride = 8 if half == 2 else 4  # the finest level's stride: EfficientNet's third stage / ResNet's first layer
    return DetectorSpec(
        spatial_dims=half,
        num_classes=len(data.label_names),
        in_channels=pre.channels,
        backbone=backbone,
        fpn_channels=cfg.fpn_channels,
        base_anchor_shapes=anchors["base_anchor_shapes"],
        feature_map_scales=anchors["feature_map_scales"],
        size_divisible=stride * 2 ** (levels - 1) * (2 if half == 2 else 1),
        extra={"box_sizes_px": anchors["sizes_px"]},
    )


def _truths(items: list[Prepared], pre: DetectPreprocessing) -> list[dict[str, np.ndarray]]:
    """Ground truth in the source image's pixels and x/y order, as the predictions come out."""
    return [{"boxes": to_xy_order(it.boxes, pre.spatial_dims) / it.scale, "labels": it.labels} for it in items]


def _save(
    cfg: DetectConfig,
    folder: Path,
    detector: torch.nn.Module,
    spec: DetectorSpec,
    pre: DetectPreprocessing,
    data: DetectionData,
    val_items: list[Prepared],
    result: Any,
    problems: list[str],
    augment: str,
) -> Path:
    preds = detect_images(
        detector, [v.image for v in val_items], pre, [v.scale for v in val_items], torch.device("cpu")
    )
    truths = _truths(val_items, pre)
    thresholds = choose_count_thresholds(preds, truths, len(data.label_names))
    val_map = coco_map(preds, truths, data.label_names)
    manifest = {
        "medlens_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": "detection",
        "label_names": list(data.label_names),
        "network": spec.to_dict(),
        "preprocessing": pre.to_dict(),
        "count_thresholds": thresholds,
        "count_thresholds_chosen_on": COUNT_RULE.format(n=len(val_items)),
        "config": {**asdict(cfg), "augment_resolved": augment},
        "init": imagenet_record() if cfg.init == "imagenet" and spec.spatial_dims == 2 else {"source": "random"},
        "data": {
            "dataset": data.name,
            **data.source,
            "license": "user data",
            "counts": data.counts(),
            "problems": (data.problems + problems)[:50],
        },
        "metrics": {"validation": {**val_map, "counts": count_errors(preds, truths, data.label_names, thresholds)}},
        "training": {
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "seconds": round(result.seconds, 1),
            "history": result.history,
        },
    }
    detector.cpu()
    return save_bundle(folder, detector.network, manifest)
