"""Dataset fingerprint -> training plan, the nnU-Net idea as two plain functions and an editable JSON.

The fingerprint is measured (spacings, shapes, foreground intensities); the plan
is derived from it with rules a user can read and override in ``plan.json``:
median spacing as target, a patch covering the median shape (multiple of the
network's total stride) shrunk until batch and activations fit the memory
budget, network depth from the patch, CT clipped to foreground percentiles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import ConfigError, DataError
from medlens.segment.data import SegDataset, check_dataset, read_pair


@dataclass(frozen=True)
class SegPlan:
    """Everything training and inference need to agree on; saved as ``plan.json`` and inside the bundle."""

    dims: int
    target_spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, ...]
    batch_size: int
    strides: tuple[tuple[int, ...], ...]
    filters: tuple[int, ...]
    modality: str
    normalization: str  # "ct" or "zscore"
    clip_hu: tuple[float, float] | None
    ct_mean: float | None
    ct_std: float | None
    label_names: dict[int, str]
    memory_budget_mb: int
    mirror_axes: tuple[int, ...] = ()  # augmentation and TTA flips; only axes that keep label meaning
    notes: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return max(self.label_names) + 1

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["label_names"] = {str(k): v for k, v in self.label_names.items()}
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "SegPlan":
        raw = dict(raw)
        try:
            raw["target_spacing_mm"] = tuple(float(v) for v in raw["target_spacing_mm"])
            raw["patch_size"] = tuple(int(v) for v in raw["patch_size"])
            raw["strides"] = tuple(tuple(int(x) for x in s) for s in raw["strides"])
            raw["filters"] = tuple(int(v) for v in raw["filters"])
            raw["clip_hu"] = tuple(raw["clip_hu"]) if raw.get("clip_hu") else None
            raw["label_names"] = {int(k): str(v) for k, v in raw["label_names"].items()}
            raw["mirror_axes"] = tuple(int(v) for v in raw.get("mirror_axes", ()))
            return cls(**raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"plan: field {exc} is missing or malformed; regenerate it with `medlens plan`") from exc


def fingerprint(dataset: SegDataset, max_cases: int | None = None) -> dict[str, Any]:
    """Measure the dataset: shapes and spacings, label values, foreground intensity statistics; problems listed."""
    report = check_dataset(dataset)
    if report["usable"] == 0:
        raise DataError(f"{dataset.root}: no usable image-label pair: " + "; ".join(report["problems"][:5]))
    foreground: list[np.ndarray] = []
    for case in dataset.cases[: max_cases or len(dataset.cases)]:
        try:
            image, label = read_pair(case)
        except DataError:
            continue
        if label is not None and label.any():
            values = image.array[label > 0]
            foreground.append(values[:: max(1, values.size // 2000)])
    fg = np.concatenate(foreground) if foreground else np.zeros(1, np.float32)
    return {
        "dataset": dataset.name,
        "modality": dataset.modality,
        "licence": dataset.licence,
        "cases": report["cases"],
        "usable": report["usable"],
        "problems": report["problems"],
        "label_values": report["label_values"],
        "label_names": {str(k): v for k, v in _label_names(dataset, report["label_values"]).items()},
        "median_shape": [int(v) for v in np.median(np.asarray(report["shapes"]), axis=0)],
        "max_shape": [int(v) for v in np.max(np.asarray(report["shapes"]), axis=0)],
        "median_spacing_mm": [round(float(v), 4) for v in np.median(np.asarray(report["spacings_mm"]), axis=0)],
        "axis_codes": report["axis_codes"],
        "foreground_percentiles_0.5_50_99.5": [float(np.percentile(fg, p)) for p in (0.5, 50, 99.5)],
        "foreground_mean": float(fg.mean()),
        "foreground_std": float(fg.std()),
    }


def _label_names(dataset: SegDataset, seen: list[int]) -> dict[int, str]:
    return dataset.label_names or {v: ("background" if v == 0 else f"label{v}") for v in seen}


def make_plan(fp: dict[str, Any], memory_budget_mb: int = 2000, dims: int = 3, width: int = 16) -> SegPlan:
    """Derive the plan; ``dims=2`` plans a slice-wise model on the same data (for comparison)."""
    if dims not in (2, 3):
        raise ConfigError(f"plan.dims: must be 2 or 3, got {dims}")
    spacing = tuple(float(v) for v in fp["median_spacing_mm"])
    shape = [int(v) for v in fp["median_shape"]]
    if dims == 2:
        shape = shape[:2]
    depth = _depth(shape)
    multiple = 2**depth
    patch = [int(np.ceil(s / multiple) * multiple) for s in shape]
    batch, notes = 2, []
    while _activation_mb(patch, batch, width, depth) > memory_budget_mb and max(patch) > multiple:
        axis = int(np.argmax(patch))
        patch[axis] -= multiple
        notes.append(f"patch reduced along axis {axis} to fit {memory_budget_mb} MB")
    while _activation_mb(patch, batch * 2, width, depth) <= memory_budget_mb and batch < (32 if dims == 2 else 8):
        batch *= 2
    strides = ((1,) * dims,) + tuple(tuple(2 if s >= 2 ** (i + 1) * 4 else 1 for s in patch) for i in range(depth))
    filters = tuple(min(width * 2**i, 320) for i in range(depth + 1))
    ct = fp["modality"] == "CT"
    pct = fp["foreground_percentiles_0.5_50_99.5"]
    mirror = _mirror_axes(fp, dims)
    notes.append(
        f"mirroring along axes {list(mirror)}" if mirror else "no mirroring (no left-right axis, or lateralised labels)"
    )
    return SegPlan(
        dims=dims,
        target_spacing_mm=spacing,
        patch_size=tuple(patch),
        batch_size=batch,
        strides=strides,
        filters=filters,
        modality=fp["modality"],
        normalization="ct" if ct else "zscore",
        clip_hu=(pct[0], pct[2]) if ct else None,
        ct_mean=fp["foreground_mean"] if ct else None,
        ct_std=fp["foreground_std"] if ct else None,
        label_names={int(k): v for k, v in fp["label_names"].items()},
        memory_budget_mb=memory_budget_mb,
        mirror_axes=mirror,
        notes=notes,
    )


def _mirror_axes(fp: dict[str, Any], dims: int) -> tuple[int, ...]:
    """Mirror only left-right: flipping front-back or head-foot would swap what labels like 'anterior' mean,
    and no mirroring at all when a label is lateralised ('left kidney')."""
    codes = fp.get("axis_codes") or ""
    names = " ".join(str(v).lower() for v in fp["label_names"].values())
    if len(codes) != 3 or "left" in names or "right" in names:
        return ()
    axis = next((i for i, c in enumerate(codes) if c in "LR"), None)
    return (axis,) if axis is not None and axis < dims else ()


def _depth(shape: list[int]) -> int:
    """Downsample while the smallest axis stays at least 4 voxels (nnU-Net's rule of thumb), at most 5 times."""
    depth = 0
    while depth < 5 and min(shape) / 2 ** (depth + 1) >= 4:
        depth += 1
    return max(depth, 1)


def _activation_mb(patch: list[int], batch: int, width: int, depth: int) -> float:
    """Rough training memory: float32 activations kept for backward, about 12 per voxel per filter at full res."""
    voxels = float(np.prod(patch))
    per_level = sum(voxels / (2 ** len(patch)) ** i * width * 2**i for i in range(depth + 1))
    return batch * per_level * 12 * 4 / 2**20


def save_plan(plan: SegPlan, fp: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fingerprint.json").write_text(json.dumps(fp, indent=1, default=str))
    path = out_dir / "plan.json"
    path.write_text(json.dumps(plan.to_dict(), indent=1))
    return path


def load_plan(path: str | Path) -> SegPlan:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no plan file; create one with `medlens plan DATA --out DIR`")
    return SegPlan.from_dict(json.loads(path.read_text()))
