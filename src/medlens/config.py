"""Typed, frozen configuration per stage, loaded from TOML and ``--set key=value`` overrides.

Errors name the field and the bad value, e.g.
``ConfigError: train.epochs: expected an integer, got 'ten'``.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from medlens.errors import ConfigError
from medlens.preprocess.pipeline import INTENSITY_OPTIONS
from medlens.preprocess.window import WINDOWS

C = TypeVar("C")

SEMI_SUPERVISED_OPTIONS = ("none", "fixmatch")
FUSION_OPTIONS = ("auto", "image", "intermediate", "late", "tabular")
IMBALANCE_OPTIONS = ("none", "weighted-loss", "balanced-sampler", "focal", "logit-adjusted")
DEVICE_OPTIONS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """How to train a classifier. Every field can be set in a TOML file or with ``--set``.

    ``dataset`` is a MedMNIST catalog name (``pneumoniamnist``) or the path of
    a label CSV for a folder of images. Model selection and early stopping use
    the validation split only.
    """

    dataset: str = "pneumoniamnist"
    size: int = 28  # MedMNIST image size (28, 64, 128, 224)
    image_dir: str | None = None  # folder datasets: where the CSV's file paths start (default: the CSV's folder)
    image_size: tuple[int, ...] | None = None  # folder datasets: resize every image to this (part of the bundle)
    multilabel: bool = False
    label_column: str = "label"  # folder datasets: the CSV column holding the label(s)
    positive_label: str | None = None  # binary: the finding's label (default: the one not naming a negative)
    modality: str | None = None  # folder datasets: the images' DICOM modality (CR, DX, CT, MR, ...): routing, checks
    intensity: str = "fixed"  # folder datasets: "per-image" rescales each image by its percentiles (any bit depth)
    negative_label: str | None = None  # multi-label: the value meaning no finding (e.g. "No Finding"), an all-zero row
    group_column: str | None = (
        "auto"  # patient ID column: splits keep a patient's images together ("auto": patient_id, PatientID, Patient ID)
    )
    numeric_columns: tuple[str, ...] = ()  # clinical inputs from the CSV (age, ...): imputed and standardised on train
    categorical_columns: tuple[str, ...] = ()  # clinical inputs (sex, view, ...): one-hot on train's categories
    fusion: str = "auto"  # image | intermediate | late | tabular; auto: intermediate with clinical columns, else image
    model: str = "resnet18"
    width: float = 1.0
    dropout: float = 0.0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    imbalance: str = "none"
    augment: str = "auto"
    patience: int = 6
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True
    mixed_precision: bool = True  # autocast on CUDA (bf16/fp16); no effect on CPU, where it measured slower
    max_train_samples: int | None = None  # subsample train (stratified) for quick runs and tests
    max_val_samples: int | None = None  # subsample validation too (a label budget pays for validation labels as well)
    window: str | None = None  # CT window preset for model input (lung, mediastinum, soft-tissue, bone, brain, liver)
    init: str | None = None  # "imagenet" (efficientnet-lite0) or an encoder folder from `medlens pretrain`
    freeze_epochs: int = 0  # train only the head this many epochs first (the encoder keeps its init)
    encoder_lr_scale: float = 1.0  # the encoder's learning rate = lr x this (discriminative learning rates)
    semi_supervised: str = "none"  # "fixmatch": also learn from unlabelled images (Sohn et al. 2020)
    unlabelled: str | None = None  # folder of unlabelled images; the train images max_train_samples left out count too
    fixmatch_threshold: float = 0.95  # pseudo-labels only where the weakly augmented prediction is this sure
    unlabelled_weight: float = 1.0  # weight of the unlabelled loss (FixMatch's lambda_u)
    unlabelled_ratio: int = 3  # unlabelled images per labelled image in a step (FixMatch's mu; 7 published)

    @property
    def clinical_columns(self) -> tuple[str, ...]:
        return tuple(self.numeric_columns) + tuple(self.categorical_columns)

    def folder_options(self) -> dict[str, Any]:
        """How a folder dataset's CSV is read (label column, no-finding value, patient grouping)."""
        return {
            "label_column": self.label_column,
            "negative_label": self.negative_label,
            "group_column": self.group_column,
            "positive_label": self.positive_label,
            "intensity": self.intensity,
        }

    def __post_init__(self) -> None:
        _check_choice("train.imbalance", self.imbalance, IMBALANCE_OPTIONS)
        _check_choice("train.device", self.device, DEVICE_OPTIONS)
        _check_choice("train.semi_supervised", self.semi_supervised, SEMI_SUPERVISED_OPTIONS)
        _check_choice("train.fusion", self.fusion, FUSION_OPTIONS)
        _check_choice("train.intensity", self.intensity, INTENSITY_OPTIONS)
        if self.intensity != "fixed" and not self.dataset.lower().endswith(".csv"):
            raise ConfigError(
                f"train.intensity={self.intensity} is for a folder dataset (a label CSV); {self.dataset} comes "
                "with its own fixed intensity range"
            )
        if self.fusion in ("intermediate", "late", "tabular") and not self.clinical_columns:
            raise ConfigError(
                f"train.fusion={self.fusion} needs clinical columns: --set numeric_columns=age "
                "--set categorical_columns=sex,view (columns of the dataset's CSV)"
            )
        both = set(self.numeric_columns) & set(self.categorical_columns)
        if both:
            raise ConfigError(
                f"train: column(s) {', '.join(sorted(both))} declared both numeric and categorical; pick one"
            )
        if self.freeze_epochs < 0 or self.freeze_epochs >= self.epochs:
            raise ConfigError(f"train.freeze_epochs: must be in [0, epochs={self.epochs}), got {self.freeze_epochs}")
        if not 0 < self.encoder_lr_scale <= 10:
            raise ConfigError(f"train.encoder_lr_scale: expected a factor in (0, 10], got {self.encoder_lr_scale}")
        if not 0 < self.fixmatch_threshold < 1:
            raise ConfigError(
                f"train.fixmatch_threshold: expected a probability in (0, 1), got {self.fixmatch_threshold}"
            )
        if self.unlabelled_ratio < 1:
            raise ConfigError(f"train.unlabelled_ratio: must be at least 1, got {self.unlabelled_ratio}")
        if self.window is not None:
            _check_choice("train.window", self.window, tuple(WINDOWS.names()))
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: must be at least 1, got {getattr(self, name)}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"train.lr: expected a learning rate in (0, 1), got {self.lr}")
        if self.width <= 0:
            raise ConfigError(f"train.width: must be positive, got {self.width}")


def fusion_mode(cfg: TrainConfig) -> str:
    """What ``fusion=auto`` means for this config: intermediate when clinical columns are declared, else image only."""
    if cfg.fusion != "auto":
        return cfg.fusion
    return "intermediate" if cfg.clinical_columns else "image"


def _check_choice(field: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{field}: expected one of {', '.join(options)}, got {value!r}")


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None, section: str = ""
) -> C:
    """Build a config dataclass from a TOML file (optionally one ``[section]``) plus ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_toml(Path(path), section))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set epochs=5")
        values[key.strip()] = raw.strip()
    return build_config(cls, values, prefix=section or cls.__name__.removesuffix("Config").lower())


def build_config(cls: type[C], values: dict[str, Any], prefix: str) -> C:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            import difflib

            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(fields)}"
            raise ConfigError(f"{prefix}.{key}: unknown setting{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}.{key}")
    return cls(**kwargs)


def _read_toml(path: Path, section: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    if section:
        data = data.get(section, {})
    return data


def _coerce(value: Any, hint: Any, field: str) -> Any:
    """Convert a TOML value or a ``--set`` string to the field's declared type."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], field)
    if typing.get_origin(hint) is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_coerce(v, args[0], field) for v in items)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        return str(value)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(hint, str(hint))
        raise ConfigError(f"{field}: expected {kind}, got {value!r}") from None
