"""A segmenter bundle: the U-Net of its plan, the plan (spacing, patch, intensity), label names, post-processing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from medlens.bundle.manifest import BundleBase, load_weights, read_manifest
from medlens.datasets.catalog import resolve_data_dir
from medlens.errors import DataError, MedlensError, ModelError
from medlens.io.volume import load_volume
from medlens.segment.evaluate import evaluate_segmentation
from medlens.segment.export import export_segmentation_onnx
from medlens.segment.infer import label_volumes_ml, segment_volume
from medlens.segment.plan import SegPlan
from medlens.segment.preprocess import build_unet
from medlens.segment.stage import segment_files


@dataclass
class SegmenterBundle(BundleBase):
    """A loaded segmenter. ``predict(files)`` segments each volume (see :meth:`predict`)."""

    kind: ClassVar[str] = "segmenter"
    supports: ClassVar[frozenset[str]] = frozenset({"predict", "evaluate", "export", "select", "serve"})
    model: nn.Module
    plan: SegPlan

    @classmethod
    def from_manifest(cls, path: Path, manifest: dict[str, Any], device: str | torch.device = "cpu") -> SegmenterBundle:
        """Build the U-Net of the manifest's plan and load the weights (``path``: the bundle folder)."""
        plan = SegPlan.from_dict(manifest["plan"])
        model = load_weights(build_unet(plan), path, "the network of its plan").to(device)
        return cls(path, manifest, model, plan)

    @classmethod
    def summary(cls, manifest: dict[str, Any]) -> dict[str, str]:
        """What ``medlens models`` shows, from the manifest alone."""
        test, plan = manifest.get("metrics", {}).get("test", {}), manifest["plan"]
        return {
            "task": "segmentation",
            "labels": ", ".join(v for k, v in manifest["label_names"].items() if k != "0"),
            "input": f"{plan['modality']} {plan['dims']}D",
            "score": f"Dice {test.get('mean_dice', float('nan')):.3f}",
            "accuracy": "",
        }

    @property
    def modality(self) -> str:
        """The modality of its plan (``MR`` when the plan does not say)."""
        return str(self.plan.modality or "MR")

    @property
    def postprocess(self) -> list[int]:
        return [int(v) for v in self.manifest.get("postprocess_largest_component", [])]

    def predict(
        self, files: list[str | Path], out: str | Path | None = None, tta: bool = False
    ) -> list[dict[str, Any]]:
        """One row per volume (NIfTI, NRRD, MHA or a DICOM series folder): ``file``, ``volumes_ml`` per label,
        ``error``. With ``out``, label maps (and DICOM SEG for DICOM inputs) are written there and each row names
        them; without it each row holds the label map itself as ``labels`` (a :class:`medlens.io.Volume`)."""
        if out is not None:
            report = segment_files(self, [Path(f) for f in files], out, tta=tta)
            rows = [
                {"file": r["input"], **{k: v for k, v in r.items() if k != "input"}, "error": ""}
                for r in report["results"]
            ]
            return rows + [{"file": p["input"], "error": p["message"]} for p in report["problems"]]
        rows = []
        for file in files:
            try:
                labels = segment_volume(self.model, load_volume(Path(file)), self.plan, self.postprocess, tta=tta)
            except MedlensError as exc:
                rows.append({"file": str(file), "error": str(exc)})
                continue
            rows.append(
                {
                    "file": str(file),
                    "labels": labels,
                    "volumes_ml": label_volumes_ml(labels, self.plan.label_names),
                    "error": "",
                }
            )
        return rows

    def evaluate(
        self,
        data: str | Path,
        out: str | Path,
        split: str = "test",
        n_bootstrap: int = 1000,
        seed: int = 0,
        tta: bool = False,
        **_: Any,
    ) -> dict[str, Any]:
        """Segment the split's cases of ``data`` (the dataset folder) from their raw files and score them; writes
        ``per_case.csv`` and ``metrics.json`` (means with bootstrap 95% CIs) to ``out``."""
        result = evaluate_segmentation(self, data, out, split=split, tta=tta, n_bootstrap=n_bootstrap, seed=seed)
        return {
            **result,
            "title": f"{split} (n={result['n']}, {result['seconds_per_case']:.2f} s/case)",
            "where": f"per-case results: {Path(out) / 'per_case.csv'}; summary: {Path(out) / 'metrics.json'}",
        }

    def export(self, data: str | Path | None = None, data_dir: str | Path | None = None, **_: Any) -> dict[str, Any]:
        """Write ``model.onnx`` (one patch in, logits out) into the bundle, checked with the whole sliding window on the
        first validation case of ``data`` (the dataset folder; default: the folder the bundle was trained from)."""
        root = Path(data or self.manifest.get("data", {}).get("root", ""))
        base = resolve_data_dir(data_dir)
        if data is None and not root.is_dir() and base is not None:  # a shipped bundle names its folder in the data dir
            root = base / root
        cases = self.manifest.get("split", {}).get("val", [])[:1]
        found = [p for c in cases for p in sorted((root / "imagesTr").glob(f"{c}.*")) if p.is_file()] if cases else []
        if not found:
            raise DataError(
                f"no validation case of {self.name} to check the export on under {root}; pass --data with "
                "the bundle's dataset folder (imagesTr/ labelsTr/)"
            )
        record = export_segmentation_onnx(self, found[0])
        return {**record, "checked": f"on the validation case {record['checked_on']}"}


def load_segmenter(name_or_path: str | Path, device: str | torch.device = "cpu") -> SegmenterBundle:
    """A segmenter bundle by shipped name (``hippocampus``) or folder."""
    path, manifest = read_manifest(name_or_path)
    if manifest["kind"] != SegmenterBundle.kind:
        raise ModelError(
            f"{path} is a {manifest['kind']} bundle; segmenting needs a segmentation bundle (e.g. "
            "`hippocampus`, or one from `medlens train DATA --task segment`)"
        )
    return SegmenterBundle.from_manifest(path, manifest, device)
