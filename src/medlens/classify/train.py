"""Classification: build the network and loss for a dataset, train, choose the threshold, save the bundle."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens import __version__
from medlens.bundle.manifest import save_bundle
from medlens.classify.data import ArrayDataset, load_training_data, make_loader
from medlens.classify.gate import fit_classifier_gate
from medlens.classify.semi import confident_share, make_fixmatch_loss
from medlens.config import TrainConfig, fusion_mode
from medlens.datasets import ClassificationData
from medlens.errors import ConfigError
from medlens.evaluate.metrics import choose_thresholds, classification_metrics
from medlens.models.fusion import FusionNet
from medlens.models.init import initialise
from medlens.models.networks import NetworkSpec, build_network, head_parameter_names
from medlens.models.probs import predict_proba
from medlens.preprocess import Preprocessing
from medlens.preprocess.augment import build_augmentation, resolve_augmentation
from medlens.preprocess.pipeline import normalized_inputs
from medlens.preprocess.window import window_preset
from medlens.tabular.encode import fit_tabular, leakage_report
from medlens.train import LoopOptions, fit
from medlens.train.device import resolve_device, seed_everything
from medlens.train.distributed import DistInfo, barrier, distributed_session, shard_batch_size

log = logging.getLogger(__name__)


def train_classifier(
    cfg: TrainConfig,
    out_dir: Path,
    data_dir: str | Path | None = None,
    show_progress: bool = True,
    data: ClassificationData | None = None,
) -> Path:
    """Train on the train split, select on validation, and write a bundle to ``out_dir``.

    Returns the bundle folder. The test split is never used here; ``medlens
    evaluate`` scores the bundle on it afterwards. ``data`` overrides the
    config's dataset (e.g. a derived 28^3 version of a 64^3 set). Under
    ``torchrun`` the processes share the work and rank 0 writes the bundle.
    """
    with distributed_session(resolve_device(cfg.device)) as (info, device):
        bundle = _train_classifier(cfg, out_dir, data_dir, show_progress and info.is_main, data, info, device)
        barrier()  # the other processes return once rank 0 has written the bundle
    return bundle


def _train_classifier(
    cfg: TrainConfig,
    out_dir: Path,
    data_dir: str | Path | None,
    show_progress: bool,
    data: ClassificationData | None,
    info: DistInfo,
    device: torch.device,
) -> Path:
    seed_everything(cfg.seed)
    data, held_back = (data, None) if data is not None else load_training_data(cfg, data_dir)
    prep = make_preprocessing(cfg, data)
    spec = NetworkSpec(
        name=cfg.model,
        spatial_dims=data.spatial_dims,
        in_channels=data.n_channels,
        num_classes=len(data.label_names),
        image_shape=data.image_shape,
        width=cfg.width,
        dropout=cfg.dropout,
    )
    model = build_network(spec)
    init = initialise(model, spec, cfg.init)
    fused = _clinical_inputs(cfg, data, info)
    if fused is not None:
        model = FusionNet(model, fused["encoder"].n_features, len(data.label_names))
    features = fused["features"] if fused else {}
    augmentation = resolve_augmentation(cfg.augment, data.modality, data.spatial_dims)
    train_set = ArrayDataset(
        data.splits["train"],
        prep,
        build_augmentation(augmentation, data.spatial_dims, cfg.seed + info.rank),
        features.get("train"),
    )
    batches = make_loader(
        train_set,
        shard_batch_size(cfg.batch_size, info),
        cfg.seed,
        cfg.imbalance == "balanced-sampler",
        data.task,
        info,
    )
    val = data.splits["val"]
    val_inputs = normalized_inputs(val, prep) if not fused else (normalized_inputs(val, prep), features["val"])
    loss_fn = make_loss(data, cfg.imbalance).to(device)
    if cfg.semi_supervised == "fixmatch":
        if fused:
            raise ConfigError("train.semi_supervised=fixmatch does not take clinical columns yet; train image-only")
        if info.active:
            raise ConfigError("train.semi_supervised=fixmatch runs in one process; start it without torchrun")
        weak = build_augmentation(augmentation, data.spatial_dims, cfg.seed + 1)
        loss_fn = make_fixmatch_loss(cfg, data, prep, loss_fn, model, held_back, weak)

    def score_val(net: nn.Module) -> dict[str, float]:
        probs = predict_proba(net, val_inputs, data.task)
        metrics = classification_metrics(data.task, val.labels, probs, list(data.label_names), [])
        accuracy = metrics.get("accuracy", metrics.get("subset_accuracy", float("nan")))
        score = metrics["auc"] if np.isfinite(metrics["auc"]) else accuracy  # AUC is undefined if val lacks a label
        return {"score": score, "auc": metrics["auc"], "accuracy": accuracy}

    options = LoopOptions(
        epochs=cfg.epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_epochs=cfg.warmup_epochs,
        patience=cfg.patience,
        device=device,
        memory_format=torch.channels_last if cfg.channels_last and data.spatial_dims == 2 else torch.contiguous_format,
        show_progress=show_progress,
        mixed_precision=cfg.mixed_precision,
        head_names=frozenset(head_parameter_names(model))
        if cfg.freeze_epochs or cfg.encoder_lr_scale != 1
        else frozenset(),
        freeze_epochs=cfg.freeze_epochs,
        encoder_lr_scale=cfg.encoder_lr_scale,
    )
    started = time.perf_counter()
    run_key = json.dumps({**asdict(cfg), "epochs": None}, sort_keys=True)  # more epochs may resume a run
    result = fit(model, loss_fn, batches, score_val, options, out_dir / "checkpoints", run_key)
    if not info.is_main:
        return out_dir / "model"
    model.load_state_dict(result.best_state)
    model.to(device, memory_format=torch.contiguous_format)
    val_probs = predict_proba(model, val_inputs, data.task)
    thresholds = choose_thresholds(data.task, val.labels, val_probs)
    val_metrics = classification_metrics(data.task, val.labels, val_probs, list(data.label_names), thresholds)
    manifest = _manifest(
        cfg, data, spec, prep, augmentation, thresholds, val_metrics, result, time.perf_counter() - started
    )
    manifest["training"]["processes"] = info.world_size
    manifest["training"]["init"] = init
    if fused:
        manifest["fusion"] = "intermediate"
        manifest["tabular"] = {**fused["encoder"].describe(), "leakage_warnings": fused["leakage"]}
    if confident_share(loss_fn) is not None:
        manifest["training"]["fixmatch"] = {
            "unlabelled_images": loss_fn.n_unlabelled,
            "confident_share": round(confident_share(loss_fn), 4),
        }
    gate, manifest["ood_gate"] = fit_classifier_gate(model, data, prep, fused["encoder"] if fused else None)
    bundle = save_bundle(out_dir / "model", model.cpu(), manifest)
    gate.save(bundle)
    if fused:
        fused["encoder"].save(bundle)
    return bundle


def _clinical_inputs(cfg: TrainConfig, data: ClassificationData, info: DistInfo) -> dict[str, Any] | None:
    """The clinical encoder fitted on the training split, every split's features, and leakage warnings;
    ``None`` for an image-only run. Late fusion and the tabular-only baseline live in medlens.tabular.baselines."""

    mode = fusion_mode(cfg)
    if mode == "image":
        return None
    if mode != "intermediate":
        raise ConfigError(
            f"train.fusion={mode}: `medlens train` builds intermediate fusion (one network); late fusion and "
            "the tabular-only baseline are compared in benchmarks/multimodal.py for now"
        )
    if info.active:
        raise ConfigError("train.fusion=intermediate runs in one process; start it without torchrun")

    train = data.splits["train"]
    encoder = fit_tabular(train.metadata, cfg.numeric_columns, cfg.categorical_columns, f"{data.name}: training split")
    features = {
        name: encoder.transform(split.metadata, f"{data.name}: {name} split") for name, split in data.splits.items()
    }
    leakage = leakage_report(
        train.metadata, train.labels, cfg.numeric_columns, cfg.categorical_columns, list(data.label_names)
    )
    return {"encoder": encoder, "features": features, "leakage": leakage}


def make_preprocessing(cfg: TrainConfig, data: ClassificationData) -> Preprocessing:
    return Preprocessing(
        spatial_shape=data.image_shape,
        channels=data.n_channels,
        input_range=data.intensity_range,
        resize=cfg.image_size is not None,
        modality=data.modality,
        window=window_preset(cfg.window) if cfg.window else None,
        intensity=cfg.intensity,
    )


FOCAL_GAMMA = 2.0  # Lin et al. 2017's default


def make_loss(data: ClassificationData, imbalance: str = "none") -> nn.Module:
    """The training loss for ``imbalance`` (a TrainConfig choice); cross-entropy (BCE for multi-label) at heart.

    - ``weighted-loss``: classes weighed by inverse train frequency;
    - ``focal``: MONAI's FocalLoss (gamma 2), which down-weighs the easy, mostly majority-class cases;
    - ``logit-adjusted``: cross-entropy on logits + log(class prior) (Menon et al., ICLR 2021), so the raw
      logits used at prediction learn the balanced error; single-label only.
    """
    labels = data.splits["train"].labels
    n_classes = len(data.label_names)
    if imbalance == "focal":
        from monai.losses import FocalLoss

        return _OneHotFocal(FocalLoss(gamma=FOCAL_GAMMA, use_softmax=data.task != "multilabel"), n_classes, data.task)
    if data.task == "multilabel":
        if imbalance == "logit-adjusted":
            raise ConfigError(
                "train.imbalance: logit-adjusted needs one label per image; use focal or weighted-loss "
                "for multi-label data"
            )
        positives = labels.sum(axis=0).clip(min=1)
        weighted = imbalance == "weighted-loss"
        pos_weight = torch.as_tensor((len(labels) - positives) / positives, dtype=torch.float32) if weighted else None
        return _FloatTargets(nn.BCEWithLogitsLoss(pos_weight=pos_weight))
    counts = np.bincount(labels, minlength=n_classes).clip(min=1)
    if imbalance == "logit-adjusted":
        return _LogitAdjusted(torch.as_tensor(np.log(counts / counts.sum()), dtype=torch.float32))
    if imbalance == "weighted-loss":
        return nn.CrossEntropyLoss(weight=torch.as_tensor(len(labels) / (n_classes * counts), dtype=torch.float32))
    return nn.CrossEntropyLoss()


class _OneHotFocal(nn.Module):
    """MONAI's FocalLoss on (batch, classes) logits and integer (or multi-hot) targets, scaled so that gamma 0 is
    exactly cross-entropy (MONAI averages over the class axis too)."""

    def __init__(self, focal: nn.Module, n_classes: int, task: str) -> None:
        super().__init__()
        self.focal, self.n_classes, self.multilabel = focal, n_classes, task == "multilabel"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            return self.focal(logits, targets.float())
        return (
            self.focal(logits, nn.functional.one_hot(targets.long(), self.n_classes).to(logits.dtype)) * self.n_classes
        )


class _LogitAdjusted(nn.Module):
    def __init__(self, log_prior: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("log_prior", log_prior)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits + self.log_prior, targets)


class _FloatTargets(nn.Module):
    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, targets.float())


def _manifest(
    cfg: TrainConfig,
    data: ClassificationData,
    spec: NetworkSpec,
    prep: Preprocessing,
    augmentation: str,
    thresholds: list[float],
    val_metrics: dict[str, float],
    result: Any,
    seconds: float,
) -> dict[str, Any]:
    return {
        "medlens_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": data.task,
        "label_names": list(data.label_names),
        **({"positive_label": data.label_names[1]} if data.task == "binary" else {}),
        "thresholds": thresholds,
        "threshold_method": "Youden's J on the validation split" if thresholds else "arg-max",
        "network": asdict(spec),
        "preprocessing": prep.to_dict(),
        "expected_input": {
            "modality": data.modality,
            "channels": data.n_channels,
            "spatial_shape": list(data.image_shape),
            "intensity_range": list(data.intensity_range),
            "resized_by_pipeline": prep.resize,
        },
        "config": {**asdict(cfg), "augment_resolved": augmentation},
        "data": {
            "dataset": data.name,
            **data.source,
            "n_train": len(data.splits["train"]),
            "n_val": len(data.splits["val"]),
        },
        "training": {
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "seconds": round(seconds, 1),
            "history": result.history,
        },
        "metrics": {"validation": val_metrics},
    }
