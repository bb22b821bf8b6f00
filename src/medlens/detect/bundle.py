"""A detector bundle: MONAI's RetinaNet rebuilt from its spec, the preprocessing, class names and counting
thresholds. ``predict(files)`` gives boxes in each file's own pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from medlens.bundle.manifest import BundleBase, load_weights, read_manifest
from medlens.detect.evaluate import evaluate_detector
from medlens.detect.infer import detect_file, detect_files, detection_rows
from medlens.detect.network import DetectorSpec, build_detector
from medlens.detect.preprocess import DetectPreprocessing
from medlens.errors import MedlensError


@dataclass
class DetectorBundle(BundleBase):
    """A loaded detector (``model`` is MONAI's RetinaNetDetector with the bundle's weights)."""

    kind: ClassVar[str] = "detector"
    supports: ClassVar[frozenset[str]] = frozenset({"predict", "evaluate", "serve"})
    model: nn.Module
    spec: DetectorSpec
    preprocessing: DetectPreprocessing
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_manifest(cls, path: Path, manifest: dict[str, Any], device: str | torch.device = "cpu") -> DetectorBundle:
        spec = DetectorSpec.from_dict(manifest["network"])
        detector = build_detector(spec)
        load_weights(detector.network, path, f"the {spec.backbone} RetinaNet of its manifest")
        target = torch.device(device)
        return cls(
            path,
            manifest,
            detector.to(target).eval(),
            spec,
            DetectPreprocessing.from_dict(manifest["preprocessing"]),
            target,
        )

    @classmethod
    def summary(cls, manifest: dict[str, Any]) -> dict[str, str]:
        test = manifest.get("metrics", {}).get("test", {})
        pre = manifest["preprocessing"]
        size = f", longest side {pre['max_size']} px" if pre.get("max_size") else ""
        return {
            "task": "detection",
            "labels": ", ".join(manifest["label_names"]),
            "input": f"{manifest.get('config', {}).get('modality') or 'image'} {pre['spatial_dims']}D{size}",
            "score": f"mAP@0.5 {test['map_50']:.3f}" if "map_50" in test else "",
            "accuracy": "",
        }

    @property
    def label_names(self) -> list[str]:
        return [str(n) for n in self.manifest["label_names"]]

    @property
    def count_thresholds(self) -> list[float]:
        return [float(t) for t in self.manifest["count_thresholds"]]

    @property
    def modality(self) -> str:
        return str(self.manifest.get("config", {}).get("modality") or "OT")

    def predict(self, files: list[str | Path], out: str | Path | None = None) -> list[dict[str, Any]]:
        """One row per file: ``counts`` per class, ``boxes`` (one dict per kept box: ``label, score, xmin, ymin,
        xmax, ymax`` in the file's pixels, sizes in mm where known) and ``error`` (the reason a file could not be
        read; empty otherwise). With ``out``, ``medlens detect``'s files are written there too."""
        if out is not None:
            report = detect_files(self, [Path(f) for f in files], Path(out))
            found, problems = report["results"], {p["file"]: p["message"] for p in report["problems"]}
        else:
            found, problems = [], {}
            for file in files:
                try:
                    found.append(detect_file(self, Path(file)))
                except MedlensError as exc:
                    problems[str(file)] = str(exc)
        by_file = {str(f.file): f for f in found}
        rows = []
        for file in map(str, files):
            if file in problems or file not in by_file:
                rows.append({"file": file, "counts": {}, "boxes": [], "error": problems.get(file, "not processed")})
                continue
            f = by_file[file]
            counts = {n: int((f.labels == k).sum()) for k, n in enumerate(self.label_names)}
            rows.append({"file": file, "counts": counts, "boxes": detection_rows(f, self.label_names), "error": ""})
        return rows

    def evaluate(
        self, data: str | Path, out: str | Path, split: str = "test", n_bootstrap: int = 200, seed: int = 0, **_: Any
    ) -> dict[str, Any]:
        """Detect on the split's images of ``data`` (the VOC folder, COCO JSON or box CSV) and score them."""
        result = evaluate_detector(self, data, Path(out), split=split, n_bootstrap=n_bootstrap, seed=seed)
        return {
            **result,
            "title": f"{split} (n={result['n']} images, {result['images_per_second']:.1f} images/s)",
            "where": f"report: {Path(out) / 'report.md'}; metrics: {Path(out) / 'metrics.json'}",
        }


def load_detector(name_or_path: str | Path, device: str = "cpu") -> DetectorBundle:
    path, manifest = read_manifest(name_or_path)
    return DetectorBundle.from_manifest(path, manifest, device)
