"""Training a segmentation model from a plan: Dice + cross-entropy, foreground-oversampled patches, augmentation,
poly learning rate, validation Dice every epoch; post-processing chosen on validation; a self-describing bundle."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens import __version__
from medlens.bundle.manifest import save_bundle
from medlens.classify.semi import confident_share
from medlens.errors import ConfigError
from medlens.segment.data import SegDataset, load_seg_dataset, read_pair
from medlens.segment.infer import keep_largest_component, predict_probabilities
from medlens.segment.init import initialise_unet
from medlens.segment.metrics import case_metrics, mean_foreground_dice
from medlens.segment.plan import SegPlan
from medlens.segment.preprocess import build_unet, preprocess_image, preprocess_label
from medlens.segment.semi import make_seg_fixmatch_loss
from medlens.train import LoopOptions, fit
from medlens.train.device import resolve_device, seed_everything
from medlens.train.distributed import DistInfo, barrier, distributed_session, shard_batch_size


@dataclass(frozen=True)
class SegTrainConfig:
    """How to train. ``test_fraction`` holds cases out of training entirely (recorded in the bundle for
    ``medlens evaluate --split test``); ``folds`` > 1 with ``fold`` picks one cross-validation fold as validation."""

    epochs: int = 40
    samples_per_epoch: int = 250
    lr: float = 3e-3
    weight_decay: float = 3e-5
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    folds: int = 0
    fold: int = 0
    seed: int = 0
    patience: int = 15
    device: str = "auto"
    mixed_precision: bool = True  # autocast on CUDA; CPU trains in fp32
    max_cases: int | None = None
    max_train_cases: int | None = None  # label only this many training cases (seeded); validation and test stay whole
    labelled_cases: str | None = (
        None  # a file of the training cases whose labels may be used (one ID a line, or `medlens select` CSV)
    )
    split_seed: int | None = None  # seed of the train/validation/test split when it should not follow ``seed``
    semi_supervised: str = "none"  # "fixmatch": also learn from unlabelled volumes (medlens.segment.semi)
    unlabelled: str | None = None  # a folder of unlabelled volumes for semi_supervised
    fixmatch_threshold: float = 0.95  # pseudo-label only voxels the model is this sure of
    unlabelled_weight: float = 1.0  # weight of the pseudo-label loss
    init: str | None = None  # an encoder folder from `medlens pretrain DATA --task segment` (medlens.segment.pretrain)

    def __post_init__(self) -> None:
        if self.semi_supervised not in ("none", "fixmatch"):
            raise ConfigError(f"train.semi_supervised: choose none or fixmatch, got {self.semi_supervised!r}")
        if not 0 < self.fixmatch_threshold < 1:
            raise ConfigError(
                f"train.fixmatch_threshold: expected a probability in (0, 1), got {self.fixmatch_threshold}"
            )
        if self.max_train_cases is not None and self.max_train_cases < 1:
            raise ConfigError(f"train.max_train_cases: expected at least 1 labelled case, got {self.max_train_cases}")
        if self.folds > 1 and not 0 <= self.fold < self.folds:
            raise ConfigError(f"train.fold: must be in 0..{self.folds - 1} for {self.folds} folds, got {self.fold}")
        if not 0 <= self.test_fraction < 0.9 or not 0 < self.val_fraction < 0.9:
            raise ConfigError("train.val_fraction / test_fraction: must be fractions below 0.9 (e.g. 0.2)")


def split_cases(case_ids: list[str], cfg: SegTrainConfig) -> dict[str, list[str]]:
    """Seeded split: test first (if any), then validation by fraction or by fold; the rest trains."""
    seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    order = [case_ids[i] for i in np.random.default_rng(seed).permutation(len(case_ids))]
    n_test = int(round(len(order) * cfg.test_fraction))
    test, rest = order[:n_test], order[n_test:]
    if cfg.folds > 1:
        val = rest[cfg.fold :: cfg.folds]
    else:
        val = rest[: max(1, int(round(len(rest) * cfg.val_fraction)))]
    train = [c for c in rest if c not in set(val)]
    if not train:
        raise ConfigError(f"only {len(case_ids)} cases: nothing left to train on after the validation/test split")
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def limit_labels(split: dict[str, list[str]], cfg: SegTrainConfig) -> dict[str, list[str]]:
    """Train on the labels of ``labelled_cases`` (or a seeded ``max_train_cases``); the other training cases
    become ``train_unlabelled`` (images only, for ``semi_supervised``)."""
    train = split["train"]
    if cfg.labelled_cases:
        wanted = read_case_list(Path(cfg.labelled_cases))
        outside = sorted(set(wanted) - set(train))
        if outside:
            raise ConfigError(
                f"train.labelled_cases: {len(outside)} case(s) are not in this run's training split "
                f"({', '.join(outside[:5])}); validation and test cases cannot be labelled for training"
            )
        keep = [c for c in train if c in set(wanted)]
    elif cfg.max_train_cases and cfg.max_train_cases < len(train):
        picked = set(np.random.default_rng(cfg.seed).permutation(len(train))[: cfg.max_train_cases].tolist())
        keep = [c for i, c in enumerate(train) if i in picked]
    else:
        return split
    return {**split, "train": keep, "train_unlabelled": [c for c in train if c not in set(keep)]}


def read_case_list(path: Path) -> list[str]:
    """Case IDs, one a line, or the ``case`` column of a CSV (``medlens select`` writes one)."""
    if not path.is_file():
        raise ConfigError(f"train.labelled_cases: {path} does not exist; give a file of case IDs, one a line")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if lines and "," in lines[0]:
        import csv

        rows = list(csv.DictReader(lines))
        if not rows or "case" not in rows[0]:
            raise ConfigError(f"train.labelled_cases: {path} is a CSV without a 'case' column")
        lines = [r["case"] for r in rows]
    ids = [Path(c).name.split(".nii")[0] for c in lines]  # a selection lists files: keep the case ID
    if not ids:
        raise ConfigError(f"train.labelled_cases: {path} lists no cases")
    return ids


class PatchDataset(torch.utils.data.Dataset):
    """Random patches, one third centred on foreground (nnU-Net's oversampling), with MONAI augmentation."""

    def __init__(
        self, images: list[np.ndarray], labels: list[np.ndarray], plan: SegPlan, samples: int, seed: int
    ) -> None:
        self.images, self.labels, self.samples = images, labels, samples
        self.transform = _augmentation(plan)
        self.transform.set_random_state(seed)

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = index % len(self.images)
        out = self.transform({"image": self.images[i], "label": self.labels[i][None]})
        item = out[0] if isinstance(out, list) else out
        return torch.as_tensor(item["image"]).float(), torch.as_tensor(item["label"]).long()


def _augmentation(plan: SegPlan) -> Any:
    from monai.transforms import (
        Compose,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    rotate = (0.26,) * (1 if plan.dims == 2 else 3)  # +-15 degrees
    return Compose(
        [
            SpatialPadd(keys, spatial_size=plan.patch_size),
            RandCropByPosNegLabeld(keys, label_key="label", spatial_size=plan.patch_size, pos=1, neg=2, num_samples=1),
            RandAffined(
                keys,
                prob=0.2,
                rotate_range=rotate,
                scale_range=0.15,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            *[RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in plan.mirror_axes],
            RandGaussianNoised("image", prob=0.1, std=0.1),
            RandScaleIntensityd("image", factors=0.25, prob=0.15),
            RandShiftIntensityd("image", offsets=0.1, prob=0.15),
        ]
    )


def load_cases(dataset: SegDataset, ids: list[str], plan: SegPlan) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Preprocessed images ``(1, X, Y, Z)`` and labels on the same grid, in ``ids`` order."""
    by_id = {c.case_id: c for c in dataset.cases}
    images, labels = [], []
    for case_id in ids:
        volume, label = read_pair(by_id[case_id])
        image, _ = preprocess_image(volume, plan)
        images.append(image)
        labels.append(preprocess_label(label, volume, plan))
    return images, labels


def _as_slices(images: list[np.ndarray], labels: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """2D plans train on every axial slice (last axis) of every case."""
    return (
        [im[..., k] for im in images for k in range(im.shape[-1])],
        [lb[..., k] for lb in labels for k in range(lb.shape[-1])],
    )


def train_segmenter(
    data: str | Path, plan: SegPlan, cfg: SegTrainConfig, out_dir: str | Path, show_progress: bool = True
) -> Path:
    """Train, choose post-processing on validation, and write ``OUT/model`` (a bundle ``medlens segment`` reads).

    Under ``torchrun`` each process draws its own patches (``samples_per_epoch`` and the plan's batch are
    split across processes) and rank 0 validates and writes the bundle.
    """

    with distributed_session(resolve_device(cfg.device)) as (info, device):
        bundle = _train_segmenter(data, plan, cfg, Path(out_dir), show_progress and info.is_main, info, device)
        barrier()
    return bundle


def _train_segmenter(
    data: str | Path,
    plan: SegPlan,
    cfg: SegTrainConfig,
    out_dir: Path,
    show_progress: bool,
    info: DistInfo,
    device: torch.device,
) -> Path:
    seed_everything(cfg.seed)
    dataset = load_seg_dataset(data)
    ids = [c.case_id for c in dataset.cases if c.label is not None][: cfg.max_cases]
    split = limit_labels(split_cases(ids, cfg), cfg)
    train_images, train_labels = load_cases(dataset, split["train"], plan)
    val_images, val_labels = load_cases(dataset, split["val"], plan) if info.is_main else ([], [])
    if plan.dims == 2:
        train_images, train_labels = _as_slices(train_images, train_labels)
    model = build_unet(plan)
    init = initialise_unet(model, plan, cfg.init, split) if cfg.init else {"source": "random"}
    loss_fn = _dice_ce()
    if cfg.semi_supervised == "fixmatch":
        held_back = load_cases(dataset, split.get("train_unlabelled", []), plan)[0]
        loss_fn = make_seg_fixmatch_loss(cfg, loss_fn, model, held_back, plan, info.world_size)
    patches = PatchDataset(
        train_images, train_labels, plan, cfg.samples_per_epoch // info.world_size, cfg.seed + info.rank
    )
    loader = torch.utils.data.DataLoader(
        patches,
        batch_size=shard_batch_size(plan.batch_size, info, "plan.batch_size"),
        shuffle=True,
        num_workers=0,
        drop_last=True,
    )
    fg = [v for v in plan.label_names if v]

    def score_val(m: torch.nn.Module) -> dict[str, float]:
        preds = [predict_probabilities(m, im, plan).argmax(0).numpy() for im in val_images]
        return {"score": float(np.mean([mean_foreground_dice(p, t, fg) for p, t in zip(preds, val_labels)]))}

    started = time.perf_counter()
    options = LoopOptions(
        epochs=cfg.epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_epochs=0,
        patience=cfg.patience,
        device=device,
        show_progress=show_progress,
        schedule="poly",
        mixed_precision=cfg.mixed_precision,
    )
    run_key = str(sorted({**asdict(cfg), "epochs": None, "plan": plan.to_dict()}.items()))
    result = fit(model, loss_fn, loader, score_val, options, out_dir / "checkpoints", run_key)
    if not info.is_main:
        return out_dir / "model"
    model.load_state_dict(result.best_state)
    model.cpu().eval()
    postprocess, val_metrics = choose_postprocessing(model, val_images, val_labels, plan)
    manifest = {
        "task": "segmentation",
        "name": dataset.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "medlens_version": __version__,
        "plan": plan.to_dict(),
        "label_names": {str(k): v for k, v in plan.label_names.items()},
        "postprocess_largest_component": postprocess,
        "config": asdict(cfg),
        "split": split,
        "init": init,
        "data": {"dataset": dataset.name, "root": str(dataset.root), "licence": dataset.licence},
        "training": {
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "seconds": round(time.perf_counter() - started, 1),
            "history": result.history,
            "processes": info.world_size,
        },
        "metrics": {"validation": val_metrics},
    }
    if cfg.semi_supervised == "fixmatch":
        manifest["training"]["fixmatch"] = {
            "unlabelled_images": loss_fn.n_unlabelled,
            "confident_share": confident_share(loss_fn),
        }
    return save_bundle(out_dir / "model", model, manifest)


def choose_postprocessing(
    model: torch.nn.Module, images: list[np.ndarray], labels: list[np.ndarray], plan: SegPlan
) -> tuple[list[int], dict[str, float]]:
    """Keep-largest-component per label, only for labels where it raises validation Dice (as nnU-Net decides)."""
    fg = [v for v in plan.label_names if v]
    raw = [predict_probabilities(model, im, plan).argmax(0).numpy().astype(np.uint8) for im in images]
    chosen = []
    for v in fg:
        before = np.mean([mean_foreground_dice(p, t, [v]) for p, t in zip(raw, labels)])
        after = np.mean([mean_foreground_dice(keep_largest_component(p, [v]), t, [v]) for p, t in zip(raw, labels)])
        if after > before:
            chosen.append(v)
    final = [keep_largest_component(p, chosen) for p in raw]
    per_case = [case_metrics(p, t, plan.label_names, plan.target_spacing_mm) for p, t in zip(final, labels)]
    summary = {k: float(np.nanmean([c[k] for c in per_case])) for k in per_case[0]} if per_case else {}
    summary["mean_dice"] = (
        float(np.mean([summary[f"dice_{plan.label_names[v]}"] for v in fg])) if per_case else float("nan")
    )
    summary["n"] = len(per_case)
    return chosen, summary


def _dice_ce() -> torch.nn.Module:
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)
