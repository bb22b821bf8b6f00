"""Start a U-Net from a pretrained encoder folder (``medlens pretrain DATA --task segment``), checked first."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlens.errors import ConfigError, ModelError
from medlens.segment.plan import SegPlan

ARCHITECTURE = ("dims", "strides", "filters")  # what decides the weights' shapes
PREPROCESSING = ("target_spacing_mm", "normalization", "modality")  # what decides what the weights have seen


def initialise_unet(model: nn.Module, plan: SegPlan, folder: str | Path, split: dict[str, list[str]]) -> dict[str, Any]:
    """Load a segmentation encoder folder into ``model`` in place, after checking it fits and saw no held-out case."""
    folder = Path(folder)
    if not (folder / "encoder.json").is_file() or not (folder / "encoder.pt").is_file():
        raise ConfigError(
            f"train.init: {folder} is not an encoder folder (encoder.json, encoder.pt); give the --out "
            "folder of `medlens pretrain DATA --task segment`"
        )
    meta = json.loads((folder / "encoder.json").read_text())
    if meta.get("task") != "segmentation":
        raise ConfigError(
            f"train.init: {folder} holds a {meta.get('network', {}).get('name', 'classification')} "
            "classification encoder; a U-Net needs `medlens pretrain DATA --task segment --out ENCODER`"
        )
    ours = plan.to_dict()
    for field in ARCHITECTURE + PREPROCESSING:
        theirs, mine = json.loads(json.dumps(meta["network"].get(field))), json.loads(json.dumps(ours[field]))
        if theirs != mine:
            raise ConfigError(
                f"train.init: the encoder in {folder} was pretrained for plan.{field}={theirs}, this run's "
                f"plan has {mine}; train with --plan {folder / 'plan.json'} or pretrain with this plan"
            )
    seen = set(meta["data"].get("train_cases", []))
    held_out = sorted(seen & set(split.get("val", []) + split.get("test", [])))
    if held_out:
        raise ConfigError(
            f"train.init: the encoder in {folder} was pretrained on {len(held_out)} of this run's validation/"
            f"test images ({', '.join(held_out[:3])}{' ...' if len(held_out) > 3 else ''}), so scores would be "
            "optimistic; pretrain with this run's split settings (seed, split_seed, val_fraction, test_fraction)"
        )
    state = torch.load(folder / "encoder.pt", map_location="cpu", weights_only=True)
    expected = model.state_dict()
    wrong = sorted(k for k in state if k not in expected or tuple(expected[k].shape) != tuple(state[k].shape))
    if wrong or not state:
        raise ModelError(
            f"{folder / 'encoder.pt'} does not fit this U-Net ({', '.join(wrong[:3]) or 'no weights'}); "
            "it was saved for another plan"
        )
    model.load_state_dict(state, strict=False)
    return {
        "source": "encoder",
        "path": str(folder),
        "method": meta.get("method"),
        "loads": meta.get("loads"),
        "tensors": len(state),
        "sha256": hashlib.sha256((folder / "encoder.pt").read_bytes()).hexdigest(),
        "pretrain_volumes": meta["data"].get("n_volumes"),
    }
