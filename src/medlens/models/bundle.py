"""Self-describing model bundles: a folder that carries everything prediction needs.

``bundle.json`` holds the network spec, label names, the operating threshold
chosen on validation, the preprocessing (expected input: modality, channels,
size, intensity range), metrics, the training data's checksum and licence, and
the medlens version; ``weights.pt`` holds the state dict. Shipped bundles live
in ``medlens/pretrained/<name>/`` and are addressed by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.errors import ModelError, UnknownNameError
from medlens.models.networks import NetworkSpec, build_network
from medlens.preprocess import Preprocessing
from medlens.registry import Registry

BUNDLE_FORMAT = "medlens-bundle/1"
MANIFEST = "bundle.json"
WEIGHTS = "weights.pt"


@dataclass
class Bundle:
    """A loaded bundle: the network in eval mode plus its manifest."""

    path: Path
    manifest: dict[str, Any]
    model: nn.Module
    preprocessing: Preprocessing
    tabular: Any = None  # the clinical-feature encoder of a fused bundle (medlens.tabular.encode.TabularEncoder)

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["label_names"])

    @property
    def thresholds(self) -> list[float]:
        """Operating threshold(s) chosen on validation: one for binary, one per label for multi-label."""
        return [float(t) for t in self.manifest.get("thresholds", [])]

    @property
    def temperature(self) -> float:
        """Temperature fitted on validation by ``medlens calibrate`` (1.0: not calibrated)."""
        return float(self.manifest.get("calibration", {}).get("temperature", 1.0))

    def predict_proba(self, inputs: np.ndarray | tuple[np.ndarray, ...], batch_size: int = 256) -> np.ndarray:
        """Class probabilities for already-normalised inputs ``(N, C, ...)``: softmax, or sigmoid for multi-label.

        Calibrated bundles divide the logits by their temperature first.
        """
        return predict_proba(self.model, inputs, self.task, batch_size, self.temperature)

    def predict_logits(self, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return predict_logits(self.model, inputs, batch_size)


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: np.ndarray | tuple[np.ndarray, ...], batch_size: int = 256) -> np.ndarray:
    """Raw network outputs ``(N, classes)`` for normalised inputs (or ``(images, clinical features)``), batch by batch."""
    model.eval()
    device = next(model.parameters()).device
    parts = inputs if isinstance(inputs, tuple) else (inputs,)  # (images, clinical features) for fused models
    outputs = []
    for start in range(0, len(parts[0]), batch_size):
        batch = [torch.as_tensor(p[start : start + batch_size], dtype=torch.float32, device=device) for p in parts]
        with torch.autocast(device.type, enabled=device.type == "cuda"):  # mixed precision on a GPU; fp32 on CPU
            outputs.append(model(*batch).float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def predict_proba(model: nn.Module, inputs: np.ndarray | tuple[np.ndarray, ...], task: str, batch_size: int = 256,
                  temperature: float = 1.0) -> np.ndarray:
    from medlens.trust.calibrate import scale_logits

    logits = predict_logits(model, inputs, batch_size)
    return scale_logits(logits, task, temperature) if len(logits) else logits


def save_bundle(path: Path, model: nn.Module, manifest: dict[str, Any], half: bool = False) -> Path:
    """Write weights and manifest. ``half`` stores float16 weights (for shipped bundles; loaded back as float32)."""
    path.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    torch.save(state, path / WEIGHTS)
    (path / MANIFEST).write_text(json.dumps({"format": BUNDLE_FORMAT, **manifest}, indent=1, default=json_default))
    return path


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def pretrained_names() -> list[str]:
    return _pretrained().names()


def _pretrained() -> Registry[Path]:
    registry: Registry[Path] = Registry("model")
    root = resources.files("medlens") / "pretrained"
    if root.is_dir():
        for entry in root.iterdir():
            if entry.is_dir() and entry.joinpath(MANIFEST).is_file():
                registry.add(entry.name, Path(str(entry)))
    return registry


def resolve_bundle_path(name_or_path: str | Path) -> Path:
    """A shipped bundle's name (``pneumonia``) or a folder path."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    registry = _pretrained()
    if str(name_or_path) in registry:
        return registry.get(str(name_or_path))
    raise UnknownNameError(
        f"{name_or_path!r} is neither a bundle folder nor a shipped model; "
        + registry.unknown_message(str(name_or_path)).removeprefix("unknown ")
    )


def read_manifest(name_or_path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A bundle's folder and checked ``bundle.json``, without building the network (cheap: for listings)."""
    path = resolve_bundle_path(name_or_path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ModelError(f"{path} is not a medlens bundle: it needs {MANIFEST} and {WEIGHTS} (made by `medlens train`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{manifest_path}: not valid JSON ({exc})") from exc
    networkless = manifest.get("task") == "survival" and manifest.get("inputs") == "clinical"  # a Cox model's coefficients
    if not networkless and not (path / WEIGHTS).is_file():
        raise ModelError(f"{path} is not a medlens bundle: it needs {MANIFEST} and {WEIGHTS} (made by `medlens train`)")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{manifest_path}: format {manifest.get('format')!r}, this medlens reads {BUNDLE_FORMAT!r}")
    return path, manifest


def load_bundle(name_or_path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle by shipped name or path, rebuild its network and load the weights."""
    path, manifest = read_manifest(name_or_path)
    if manifest.get("task") == "segmentation":
        raise ModelError(f"{path} is a segmentation bundle: use `medlens segment {name_or_path} IMAGES --out DIR`")
    if manifest.get("task") == "survival":
        raise ModelError(f"{path} is a survival bundle: `medlens predict` gives its risks and risk groups; export, explain, "
                         "calibrate and audit take classification bundles for now")
    raw_spec = dict(manifest["network"])
    raw_spec["image_shape"] = tuple(raw_spec["image_shape"])
    model = build_network(NetworkSpec(**raw_spec))
    tabular = None
    if manifest.get("fusion") == "intermediate":
        from medlens.models.fusion import FusionNet
        from medlens.tabular.encode import load_tabular

        tabular = load_tabular(path)
        model = FusionNet(model, len(manifest["tabular"]["features"]), len(manifest["label_names"]))
    state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ModelError(f"{path / WEIGHTS} does not fit the network in {MANIFEST} ({exc})") from exc
    model.to(device).eval()
    return Bundle(path, manifest, model, Preprocessing.from_dict(manifest["preprocessing"]), tabular)
