"""The bundle format: one folder per model, ``bundle.json`` (the manifest) beside ``weights.pt``.

Every manifest names its ``format`` (``medlens-bundle/2``; ``/1`` bundles still
load), its ``kind`` (``classifier``, ``segmenter``, ``survival``, ``enhancer``),
its ``task`` within that kind (a classifier's ``binary`` / ``multiclass`` /
``multilabel``, an enhancer's ``mri-reconstruction`` / ``ct-denoising`` /
``super-resolution``), its training data with ``data.license``, and what the
kind needs to rebuild the network. Shipped bundles live in
``medlens/pretrained/<name>/`` and are addressed by name. See the bundle format
page of the documentation for every key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from medlens.errors import ModelError, UnknownNameError
from medlens.registry import Registry

BUNDLE_FORMAT = "medlens-bundle/2"
READABLE_FORMATS = ("medlens-bundle/1", BUNDLE_FORMAT)
MANIFEST = "bundle.json"
WEIGHTS = "weights.pt"
KIND_OF_TASK = {
    "binary": "classifier",
    "multiclass": "classifier",
    "multilabel": "classifier",
    "segmentation": "segmenter",
    "survival": "survival",
    "mri-reconstruction": "enhancer",
    "ct-denoising": "enhancer",
    "super-resolution": "enhancer",
    "detection": "detector",
}


@dataclass
class BundleBase:
    """What every kind of bundle has: its folder and manifest, its kind, and the operations it supports."""

    kind: ClassVar[str] = ""
    supports: ClassVar[frozenset[str]] = frozenset()
    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        """The folder's name (``medlens train`` writes ``OUT/model``: then the run's folder name)."""
        return self.path.name if self.path.name != "model" else self.path.parent.name

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def license(self) -> str:
        return license_of(self.manifest)

    @classmethod
    def from_manifest(cls, path: Path, manifest: dict[str, Any], device: str = "cpu") -> BundleBase:
        """Build the loaded bundle from its folder and checked manifest (each kind rebuilds its own network)."""
        raise NotImplementedError

    @classmethod
    def summary(cls, manifest: dict[str, Any]) -> dict[str, str]:
        """What ``medlens models`` shows about a bundle of this kind: ``task``, ``labels``, ``input``, ``score``,
        ``accuracy`` (from the manifest alone, nothing loaded)."""
        raise NotImplementedError

    def require(self, operation: str) -> None:
        """Raise a :class:`ModelError` naming what this bundle can do if it cannot do ``operation``."""
        if operation not in self.supports:
            raise ModelError(
                f"{self.path} is a {self.kind} bundle ({self.task}); {operation} is not something it does "
                f"(it supports: {', '.join(sorted(self.supports))})"
            )


def kind_of(manifest: dict[str, Any], where: Path | str = MANIFEST) -> str:
    """The manifest's ``kind``; format-1 bundles, which have none, get it from their ``task``."""
    kind = manifest.get("kind") or KIND_OF_TASK.get(str(manifest.get("task")))
    if kind not in set(KIND_OF_TASK.values()):
        raise ModelError(
            f"{where}: unknown kind of model (kind {manifest.get('kind')!r}, task {manifest.get('task')!r}); "
            f"this medlens reads {', '.join(sorted(set(KIND_OF_TASK.values())))} bundles"
        )
    return str(kind)


def license_of(manifest: dict[str, Any]) -> str:
    """The training data's licence, ``data.license`` (older bundles spelt it ``licence``)."""
    data = manifest.get("data", {})
    return str(data.get("license") or data.get("licence") or "")


def save_bundle(path: Path, model: nn.Module | None, manifest: dict[str, Any], half: bool = False) -> Path:
    """Write weights (none for a networkless model) and the manifest, with ``format``, ``kind`` and
    ``data.license`` filled in. ``half`` stores float16 weights (shipped bundles; loaded back as float32)."""
    path.mkdir(parents=True, exist_ok=True)
    if model is not None:
        state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
        torch.save(state, path / WEIGHTS)
    rest = {k: v for k, v in manifest.items() if k not in ("format", "kind")}
    body = {"format": BUNDLE_FORMAT, "kind": kind_of(manifest, path / MANIFEST), **rest}
    if "data" in body:
        data = {k: v for k, v in body["data"].items() if k != "licence"}
        body["data"] = {**data, "license": license_of(manifest)} if license_of(manifest) else data
    (path / MANIFEST).write_text(json.dumps(body, indent=1, default=json_default))
    return path


def load_weights(model: nn.Module, path: Path, what: str) -> nn.Module:
    """Load ``weights.pt`` into ``model`` (float16 weights come back as float32); a mismatch names ``what``."""
    state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ModelError(f"{path / WEIGHTS} does not fit {what} ({str(exc)[:200]})") from exc
    return model.eval()


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


# Shipped models that were renamed: the old name is refused with the new one, never silently swapped.
RENAMED = {
    "pneumonia": "'pneumonia' is now 'pneumonia-28px' (the PneumoniaMNIST model, 28 x 28 thumbnails); for chest "
    "radiographs at full resolution use 'cxr-pneumonia'"
}


def resolve_bundle_path(name_or_path: str | Path) -> Path:
    """A shipped bundle's name (``cxr-pneumonia``) or a folder path."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    registry = _pretrained()
    if str(name_or_path) in registry:
        return registry.get(str(name_or_path))
    if str(name_or_path) in RENAMED:
        raise UnknownNameError(f"{RENAMED[str(name_or_path)]}; `medlens models` lists the shipped models")
    raise UnknownNameError(
        f"{name_or_path!r} is neither a bundle folder nor a shipped model; "
        + registry.unknown_message(str(name_or_path)).removeprefix("unknown ")
    )


def read_manifest(name_or_path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A bundle's folder and checked ``bundle.json`` with ``kind`` filled in, without building the network
    (cheap: for listings)."""
    path = resolve_bundle_path(name_or_path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ModelError(f"{path} is not a medlens bundle: it needs {MANIFEST} and {WEIGHTS} (made by `medlens train`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ModelError(f"{manifest_path}: format {found!r}, this medlens reads {', '.join(READABLE_FORMATS)}")
    manifest["kind"] = kind_of(manifest, manifest_path)
    networkless = manifest["kind"] == "survival" and manifest.get("inputs") == "clinical"  # a Cox model's coefficients
    if not networkless and not (path / WEIGHTS).is_file():
        raise ModelError(f"{path} is not a medlens bundle: it needs {MANIFEST} and {WEIGHTS} (made by `medlens train`)")
    return path, manifest
