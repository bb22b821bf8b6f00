"""Self-describing bundles for reconstruction and enhancement networks.

The manifest names the task, the registered network and its arguments, the input
convention the network was trained on (accelerations, dose, scale, intensity
scaling) and the benchmark numbers, so ``medlens reconstruct / denoise / upscale``
can refuse a bundle of the wrong task and users can see what it was trained for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlens.errors import ModelError
from medlens.models.bundle import WEIGHTS, read_manifest, save_bundle
from medlens.recon.networks import build_recon_network

TASKS = ("mri-reconstruction", "ct-denoising", "super-resolution")
COMMANDS = {"mri-reconstruction": "reconstruct", "ct-denoising": "denoise", "super-resolution": "upscale"}


@dataclass
class EnhanceBundle:
    path: Path
    manifest: dict[str, Any]
    model: nn.Module

    @property
    def task(self) -> str:
        return str(self.manifest["task"])


def save_enhance_bundle(path: Path, model: nn.Module, task: str, network: str, network_kwargs: dict[str, Any],
                        manifest: dict[str, Any], half: bool = True) -> Path:
    if task not in TASKS:
        raise ModelError(f"task {task!r}: choose one of {', '.join(TASKS)}")
    return save_bundle(path, model, {"task": task, "network": {"name": network, "kwargs": network_kwargs}, **manifest}, half=half)


def load_enhance_bundle(name_or_path: str | Path, task: str) -> EnhanceBundle:
    """A bundle by shipped name or folder; refuses one trained for another task, naming the right command."""
    path, manifest = read_manifest(name_or_path)
    if manifest.get("task") != task:
        other = COMMANDS.get(str(manifest.get("task")))
        hint = f"use `medlens {other}`" if other else "it is not a reconstruction/enhancement bundle"
        raise ModelError(f"{path} is a {manifest.get('task')} bundle, not {task}: {hint} "
                         f"(shipped {task} bundles: see `medlens models`)")
    spec = manifest["network"]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("kwargs", {}).items()}
    model = build_recon_network(spec["name"], **kwargs)
    state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise ModelError(f"{path / WEIGHTS} does not fit network {spec['name']} {kwargs} ({str(exc)[:200]})") from exc
    return EnhanceBundle(path, manifest, model.eval())
