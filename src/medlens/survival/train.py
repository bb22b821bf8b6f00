"""Train a survival model (image, image + clinical, or clinical-only Cox) and write its bundle, report and KM plot.

The network is selected on the validation C-index. After selection the test
split (never seen before) is scored once: C-index with a bootstrap interval,
time-dependent AUC at 1 and 2 years, integrated Brier score, and a
Kaplan-Meier plot of the test patients in risk groups cut at the *training*
risk quantiles, with a log-rank test. ``inputs=clinical`` fits lifelines'
penalised Cox model on the encoded clinical columns instead: the baseline
every image model must beat.
"""

from __future__ import annotations

import json
import tempfile
import time as clock
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens import __version__
from medlens.bundle.manifest import save_bundle
from medlens.errors import ConfigError
from medlens.models.fusion import FusionNet
from medlens.models.networks import NetworkSpec, build_network
from medlens.models.probs import predict_logits
from medlens.survival.data import SurvivalData, check_survival, load_survival_folder
from medlens.survival.heads import HEADS, event_time_cuts
from medlens.survival.metrics import c_index_interval, kaplan_meier_plot, risk_groups, survival_metrics, time_grid
from medlens.tabular.encode import fit_tabular, leakage_report
from medlens.train import LoopOptions, fit
from medlens.train.device import resolve_device, seed_everything

INPUTS = ("image", "fused", "clinical")
GROUP_NAMES = {2: ["low risk", "high risk"], 3: ["low risk", "intermediate risk", "high risk"]}


@dataclass(frozen=True)
class SurvivalConfig:
    """How to train a prognosis model; ``inputs``: image only, image + clinical (intermediate fusion), clinical only."""

    head: str = "cox"  # cox (DeepSurv) or discrete (logistic hazard)
    inputs: str = "fused"
    numeric_columns: tuple[str, ...] = ()
    categorical_columns: tuple[str, ...] = ()
    intervals: int = 10  # discrete head: time intervals, cut at training event-time quantiles
    model: str = "cnn"
    width: float = 1.0
    dropout: float = 0.1
    epochs: int = 30
    batch_size: int = 64  # the Cox loss compares patients within a batch: keep it large
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 10
    penalizer: float = 0.1  # clinical-only Cox (lifelines): L2 penalty
    risk_groups: int = 2  # 2 (median) or 3 (tertiles) of the training risk
    n_bootstrap: int = 500  # resamples for the C-index confidence interval
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        HEADS.get(self.head)
        if self.inputs not in INPUTS:
            raise ConfigError(f"survival.inputs: choose one of {', '.join(INPUTS)}, got {self.inputs!r}")
        if self.inputs != "image" and not (self.numeric_columns or self.categorical_columns):
            raise ConfigError(
                f"survival.inputs={self.inputs} needs clinical columns: --set numeric_columns=age "
                "--set categorical_columns=Overall.Stage,Histology (or --set inputs=image)"
            )
        if self.risk_groups not in GROUP_NAMES:
            raise ConfigError(f"survival.risk_groups: 2 or 3, got {self.risk_groups}")
        if self.intervals < 2 or self.batch_size < 8:
            raise ConfigError("survival: intervals must be >= 2 and batch_size >= 8 (the Cox loss needs risk sets)")


class SurvivalSet(torch.utils.data.Dataset):
    """Normalised images (left-right flipped at random when training), clinical features, (time, event) targets."""

    def __init__(
        self, images: np.ndarray, features: np.ndarray | None, time: np.ndarray, event: np.ndarray, seed: int | None
    ) -> None:
        self.images, self.features = images, features
        self.targets = torch.as_tensor(np.stack([time, event], axis=1), dtype=torch.float32)
        self.rng = np.random.default_rng(seed) if seed is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        x = self.images[i]
        if self.rng is not None and self.rng.random() < 0.5:
            x = x[..., ::-1]
        x = torch.from_numpy(np.ascontiguousarray(x))
        if self.features is not None:
            return (x, torch.from_numpy(self.features[i])), self.targets[i]
        return x, self.targets[i]


def train_survival(data_path: str | Path, cfg: SurvivalConfig, out_dir: str | Path, show_progress: bool = True) -> Path:
    """Train and write ``OUT/model`` (a bundle; clinical-only writes no network), ``OUT/survival_report.json`` and
    ``OUT/km_test.png``; returns ``OUT``."""

    out = Path(out_dir)
    seed_everything(cfg.seed)
    data = load_survival_folder(data_path, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    parts = {name: data.subset(name) for name in ("train", "val", "test")}
    check_survival(parts["train"].time, parts["train"].event, parts["train"].ids, f"{data.name}: training split")
    encoder, features, leakage = _clinical(cfg, parts)
    started = clock.perf_counter()
    if cfg.inputs == "clinical":
        model, settings, scores = _fit_clinical_cox(cfg, parts, features)
        history: list[dict[str, float]] = []
    else:
        model, settings, scores, history = _fit_network(cfg, parts, features, show_progress)
    seconds = clock.perf_counter() - started
    head = HEADS.get(settings["head"])
    cutoffs = np.quantile(head.risk(scores["train"], settings), np.linspace(0, 1, cfg.risk_groups + 1)[1:-1]).tolist()
    report = _score(head, settings, scores, parts, cutoffs, cfg, out)
    manifest = {
        "task": "survival",
        "medlens_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": cfg.inputs,
        "head": settings["head"],
        "settings": settings,
        "risk_cutoffs": cutoffs,
        "risk_group_names": GROUP_NAMES[cfg.risk_groups],
        "config": asdict(cfg),
        "data": {"dataset": data.name, **data.source, **{f"n_{k}": len(v.time) for k, v in parts.items()}},
        "split_ids": {k: v.ids for k, v in parts.items()},
        "training": {"seconds": round(seconds, 1), "history": history},
        "metrics": {"validation": report["validation"]},
        **({"tabular": {**encoder.describe(), "leakage_warnings": leakage}} if encoder else {}),
    }
    (out / "survival_report.json").write_text(json.dumps(report, indent=1, default=float))
    bundle = save_bundle(out / "model", model, manifest)  # no model: a Cox model's coefficients are in the manifest
    if encoder is not None:
        encoder.save(bundle)  # the clinical-only model predicts from a CSV alone
    return out


def _clinical(
    cfg: SurvivalConfig, parts: dict[str, SurvivalData]
) -> tuple[Any, dict[str, np.ndarray | None], list[str]]:
    if cfg.inputs == "image":
        return None, {k: None for k in parts}, []

    train = parts["train"]
    encoder = fit_tabular(train.metadata, cfg.numeric_columns, cfg.categorical_columns, f"{train.name}: training split")
    features = {k: encoder.transform(v.metadata, f"{train.name}: {k} split") for k, v in parts.items()}
    leakage = leakage_report(
        train.metadata, train.event, cfg.numeric_columns, cfg.categorical_columns, ["censored", "event"]
    )
    return encoder, features, leakage


def _normalise(images: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((images - low) / max(high - low, 1e-6) * 2 - 1, -1, 1).astype(np.float32)


def _fit_network(
    cfg: SurvivalConfig, parts: dict[str, SurvivalData], features: dict[str, np.ndarray | None], show_progress: bool
) -> tuple[nn.Module, dict[str, Any], dict[str, np.ndarray], list[dict[str, float]]]:
    train = parts["train"]
    low, high = (float(v) for v in np.percentile(train.images, [0.5, 99.5]))
    settings: dict[str, Any] = {"head": cfg.head, "intensity": {"low": low, "high": high}}
    if cfg.head == "discrete":
        settings["cuts"] = event_time_cuts(train.time, train.event, cfg.intervals).tolist()
    head = HEADS.get(cfg.head)
    spec = NetworkSpec(
        name=cfg.model,
        spatial_dims=2,
        in_channels=train.images.shape[1],
        num_classes=head.n_outputs(settings),
        image_shape=tuple(train.images.shape[2:]),
        width=cfg.width,
        dropout=cfg.dropout,
    )
    settings["network"] = asdict(spec)
    model = build_network(spec)
    if features["train"] is not None:
        model = FusionNet(model, features["train"].shape[1], spec.num_classes)
    images = {k: _normalise(v.images, low, high) for k, v in parts.items()}
    inputs = {k: (images[k], features[k]) if features[k] is not None else images[k] for k in parts}
    loader = torch.utils.data.DataLoader(
        SurvivalSet(images["train"], features["train"], train.time, train.event, cfg.seed),
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    val = parts["val"]

    def score_val(net: nn.Module) -> dict[str, float]:
        c_index = survival_metrics(
            head.risk(predict_logits(net, inputs["val"]), settings), val.time, val.event, horizons=()
        )["c_index"]
        return {"score": c_index, "c_index": c_index}

    options = LoopOptions(
        epochs=cfg.epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_epochs=1,
        patience=cfg.patience,
        device=resolve_device(cfg.device),
        show_progress=show_progress,
    )
    with tempfile.TemporaryDirectory() as tmp:  # a survival run is minutes long: checkpoints are not kept to resume
        result = fit(
            model,
            head.loss(settings),
            loader,
            score_val,
            options,
            Path(tmp) / "checkpoints",
            json.dumps(asdict(cfg), sort_keys=True),
        )
    model.load_state_dict(result.best_state)
    model.cpu().eval()
    scores = {k: predict_logits(model, inputs[k]) for k in parts}
    if cfg.head == "cox":
        settings["baseline"] = head.fit_baseline(head.risk(scores["train"], settings), train.time, train.event)
    return model, settings, scores, result.history


def _fit_clinical_cox(
    cfg: SurvivalConfig, parts: dict[str, SurvivalData], features: dict[str, np.ndarray | None]
) -> tuple[None, dict[str, Any], dict[str, np.ndarray]]:
    """Lifelines' penalised Cox model on the encoded clinical columns; scores are its log partial hazards."""
    import pandas as pd
    from lifelines import CoxPHFitter

    train = parts["train"]
    columns = [f"x{j}" for j in range(features["train"].shape[1])]
    frame = pd.DataFrame(features["train"], columns=columns).assign(time=train.time, event=train.event)
    cph = CoxPHFitter(penalizer=cfg.penalizer).fit(frame, duration_col="time", event_col="event")
    scores = {
        k: cph.predict_log_partial_hazard(pd.DataFrame(features[k], columns=columns)).to_numpy()[:, None] for k in parts
    }
    head = HEADS.get("cox")
    settings = {
        "head": "cox",
        "model": "lifelines CoxPHFitter",
        "coefficients": cph.params_.tolist(),
        "feature_means": cph._norm_mean.tolist(),  # lifelines centres X on its training means: risk = (x - mean) . beta
        "baseline": head.fit_baseline(scores["train"][:, 0], train.time, train.event),
    }
    return None, settings, scores


def _score(
    head: Any,
    settings: dict[str, Any],
    scores: dict[str, np.ndarray],
    parts: dict[str, SurvivalData],
    cutoffs: list[float],
    cfg: SurvivalConfig,
    out: Path,
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for split in ("validation", "test"):
        part = parts["val" if split == "validation" else split]
        if not len(part.time):
            continue
        check_survival(part.time, part.event, part.ids, f"{split} split", training=False)
        risk = head.risk(scores["val" if split == "validation" else split], settings)
        grid = time_grid(part.time)
        curves = head.survival(scores["val" if split == "validation" else split], settings, grid)
        report[split] = {
            **survival_metrics(risk, part.time, part.event, curves, grid),
            "c_index_ci": c_index_interval(risk, part.time, part.event, cfg.n_bootstrap, seed=cfg.seed),
        }
    test = parts["test"]
    groups = risk_groups(head.risk(scores["test"], settings), cutoffs)
    out.mkdir(parents=True, exist_ok=True)
    report["kaplan_meier_test"] = kaplan_meier_plot(
        test.time,
        test.event,
        groups,
        GROUP_NAMES[cfg.risk_groups],
        out / "km_test.png",
        f"{test.name}, test split: {cfg.inputs} {settings['head']} model\n(risk groups cut at training-risk quantiles)",
    )
    return report


def survival_summary(folder: Path) -> dict[str, Any]:
    """What ``medlens train --task survival`` shows from ``survival_report.json``: a metric table per split
    (titled with the C-index 95% CI) and the Kaplan-Meier line of the test split."""
    report = json.loads((Path(folder) / "survival_report.json").read_text())
    tables = []
    for split in ("validation", "test"):
        if split in report:
            ci = report[split].get("c_index_ci", {})
            title = f"{split} (C-index 95% CI {ci.get('low', float('nan')):.3f}-{ci.get('high', float('nan')):.3f})"
            tables.append((title, {k: v for k, v in report[split].items() if isinstance(v, (int, float))}))
    km = report["kaplan_meier_test"]
    line = f"Kaplan-Meier by predicted risk group (test split): {Path(folder) / km['plot']}, log-rank p = {km['logrank_p']:.3g}"
    return {"tables": tables, "kaplan_meier": line}
