"""The service's model registry (a folder of bundles) and routing: which bundles a study goes to.

Routing reads what each bundle says it expects. A bundle may add a
``"routing"`` block to its ``bundle.json``::

    "routing": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"], "series_description": "(?i)chest|thorax|pa|ap",
                "severity": {"pneumonia": 0.6}}

Without it, a classifier takes its expected modality (``CR`` and ``DX`` count
as the same projection radiography) and a segmenter the modalities in its
plan; severity defaults to 1.0. A study that matches no bundle is recorded
with the reason, never dropped silently. A fused (image + clinical) bundle may
say which header field feeds which clinical column,
``"clinical_from_dicom": {"Patient Age": "PatientAge"}``; see
:mod:`medlens.tabular.dicom` for the defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens.bundle.manifest import resolve_bundle_path
from medlens.errors import ConfigError, ModelError, UnknownNameError
from medlens.kinds import open_bundle
from medlens.tabular.dicom import DicomClinical

PROJECTION = {"CR", "DX"}


@dataclass
class ServedModel:
    name: str
    path: Path
    task: str
    bundle: Any
    modalities: set[str]
    body_parts: set[str] = field(default_factory=set)
    series_description: str | None = None
    severity: dict[str, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.bundle.kind)

    def findings(self) -> list[str]:
        """The labels that are findings: a binary model's positive class; every label otherwise."""
        if self.bundle.kind != "classifier":
            return []
        return [self.bundle.positive_label] if self.task == "binary" else list(self.bundle.label_names)

    def clinical(self) -> Any:
        """Where a fused bundle's clinical values come from here: each instance's DICOM header; None otherwise."""
        if self.bundle.kind != "classifier" or self.bundle.tabular is None:
            return None

        return DicomClinical.for_bundle(self.bundle)

    def route(self, study: dict[str, Any]) -> str | None:
        """None if the study should go to this model, else the reason it does not."""
        modality = (study.get("modality") or "").upper()
        wanted = self.modalities | (PROJECTION if self.modalities & PROJECTION else set())
        if modality not in wanted:
            return f"modality {modality or 'missing'} is not one this model reads ({', '.join(sorted(wanted))})"
        body = (study.get("body_part") or "").upper()
        if self.body_parts and body and body not in self.body_parts:
            return f"body part {body} is not {', '.join(sorted(self.body_parts))}"
        if self.series_description and not re.search(self.series_description, study.get("description") or ""):
            return f"series description does not match {self.series_description!r}"
        return None


def load_models(spec: str | Path) -> dict[str, ServedModel]:
    """The bundles to serve, by name: a folder of bundle folders, or a comma-separated list of shipped bundle
    names and bundle folders (``cxr-pneumonia,hippocampus``, ``runs/mine/model``)."""
    root = Path(spec)
    if root.is_dir() and not (root / "bundle.json").is_file():
        found = {p.name: _load(p) for p in sorted(root.iterdir()) if (p / "bundle.json").is_file()}
        if not found:
            raise ConfigError(f"--models {root}: no bundles in it (a bundle is a folder with bundle.json and weights)")
        return found
    paths = [_bundle_path(item.strip()) for item in str(spec).split(",") if item.strip()]
    names = [p.name if p.name != "model" else p.parent.name for p in paths]  # `medlens train` writes OUT/model
    if not paths or len(set(names)) < len(names):
        raise ConfigError(
            f"--models {spec}: give a folder of bundles, or bundle names or folders separated by commas, "
            f"each name once (got {', '.join(names) or 'none'})"
        )
    return {name: _load(path) for name, path in zip(names, paths)}


def _bundle_path(item: str) -> Path:
    try:
        return resolve_bundle_path(item)
    except UnknownNameError as exc:
        raise ConfigError(f"--models: {exc}") from exc


def _load(path: Path) -> ServedModel:
    bundle: Any = open_bundle(path, needs="serve")
    manifest = bundle.manifest
    routing = manifest.get("routing", {})
    default = {bundle.modality.upper()}  # the modality it was trained on, unless the routing block says more
    try:
        served = ServedModel(
            name=path.name,
            path=path,
            task=manifest.get("task", ""),
            bundle=bundle,
            modalities={m.upper() for m in routing.get("modalities", default)},
            body_parts={b.upper() for b in routing.get("body_parts", [])},
            series_description=routing.get("series_description"),
            severity={k: float(v) for k, v in routing.get("severity", {}).items()},
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise ModelError(
            f"{path / 'bundle.json'}: the routing block is malformed ({exc}); see medlens.serve.models"
        ) from exc
    try:
        served.clinical()  # a fused bundle whose clinical columns have no header field fails here, at start-up
    except ConfigError as exc:
        raise ConfigError(f"{path.name}: {exc}") from exc
    return served
