"""A survival bundle: a risk model from images, clinical values or both, with its risk groups and horizons.

``inputs`` says what it reads: ``image`` (a network), ``fused`` (a network
fused with clinical values) or ``clinical`` (a Cox model whose coefficients are
in the manifest: no weights file, no image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from medlens.bundle.manifest import BundleBase, load_weights, read_manifest
from medlens.classify.predict import expand_inputs
from medlens.errors import DataError, ModelError
from medlens.models.fusion import FusionNet
from medlens.models.networks import NetworkSpec, build_network
from medlens.survival.predict import predict_survival_clinical, predict_survival_files
from medlens.tabular.encode import ClinicalTable, load_tabular


@dataclass
class SurvivalBundle(BundleBase):
    """A loaded survival model. ``predict(files, clinical=CSV)`` gives risks (see :meth:`predict`)."""

    kind: ClassVar[str] = "survival"
    supports: ClassVar[frozenset[str]] = frozenset({"predict"})
    model: nn.Module | None
    tabular: Any = None

    @classmethod
    def from_manifest(cls, path: Path, manifest: dict[str, Any], device: str = "cpu") -> SurvivalBundle:
        """Rebuild the model the manifest describes (``path``: the bundle folder). Survival models run on the CPU."""
        if manifest["inputs"] == "clinical":
            return cls(path, manifest, None, load_tabular(path))
        raw = dict(manifest["settings"]["network"])
        raw["image_shape"] = tuple(raw["image_shape"])
        model = build_network(NetworkSpec(**raw))
        encoder = None
        if manifest["inputs"] == "fused":
            encoder = load_tabular(path)
            model = FusionNet(model, len(manifest["tabular"]["features"]), raw["num_classes"])
        return cls(path, manifest, load_weights(model, path, "the survival network in its manifest"), encoder)

    @classmethod
    def summary(cls, manifest: dict[str, Any]) -> dict[str, str]:
        """What ``medlens models`` shows, from the manifest alone."""
        validation = manifest.get("metrics", {}).get("validation", {})
        return {
            "task": f"survival ({manifest['inputs']})",
            "labels": ", ".join(manifest.get("risk_group_names", [])),
            "input": manifest["inputs"],
            "score": f"C-index {validation.get('c_index', float('nan')):.3f} (validation)",
            "accuracy": "",
        }

    @property
    def inputs(self) -> str:
        return str(self.manifest["inputs"])

    def predict(
        self, files: list[str | Path] | None = None, clinical: str | Path | None = None
    ) -> list[dict[str, Any]]:
        """One row per image file (or, for a clinical-only model, per row of the ``clinical`` CSV): ``risk``,
        ``risk_group``, ``survival_<days>d`` at each horizon, ``error``. Fused models need ``clinical`` too
        (a CSV with a ``file`` column and the model's clinical columns)."""
        if self.inputs == "clinical":
            if files:
                raise DataError(
                    f"{self.path} is a clinical-only Cox model: it reads no images; give only --clinical CSV"
                )
            if clinical is None:
                raise DataError(
                    f"{self.path} is a clinical-only survival model: give --clinical CSV (in Python: "
                    f"clinical=CSV), one row per patient with {', '.join(self.tabular.columns)}"
                )
            return predict_survival_clinical(self, Path(clinical))
        if not files:
            raise DataError("give the image files or folders to predict (after the bundle)")
        table = ClinicalTable(Path(clinical)) if clinical is not None else None
        return predict_survival_files(self, expand_inputs(list(files)), table)


def load_survival(name_or_path: str | Path) -> SurvivalBundle:
    """A survival bundle by folder (``medlens train DATA --task survival`` writes ``OUT/model``)."""
    path, manifest = read_manifest(name_or_path)
    if manifest["kind"] != SurvivalBundle.kind:
        raise ModelError(f"{path} is a {manifest['kind']} bundle, not a survival model")
    return SurvivalBundle.from_manifest(path, manifest)
