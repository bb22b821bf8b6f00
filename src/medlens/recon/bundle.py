"""An enhancer bundle: a reconstruction or enhancement network and the input convention it was trained on.

The manifest's ``task`` says which (``mri-reconstruction``, ``ct-denoising``,
``super-resolution``); its ``input`` block the accelerations, dose, scales and
intensity scaling; its ``metrics`` the benchmark numbers, so ``medlens
reconstruct / denoise / upscale`` can refuse a bundle of another task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from medlens.bundle.manifest import BundleBase, load_weights, read_manifest, save_bundle
from medlens.errors import ModelError
from medlens.recon.networks import build_recon_network
from medlens.recon.stage import denoise_files, reconstruct_files, upscale_files

TASKS = ("mri-reconstruction", "ct-denoising", "super-resolution")
COMMANDS = {"mri-reconstruction": "reconstruct", "ct-denoising": "denoise", "super-resolution": "upscale"}


@dataclass
class EnhancerBundle(BundleBase):
    """A loaded enhancer. ``predict(files, out=DIR)`` writes the enhanced volumes (see :meth:`predict`)."""

    kind: ClassVar[str] = "enhancer"
    supports: ClassVar[frozenset[str]] = frozenset({"predict"})
    model: nn.Module

    @classmethod
    def from_manifest(cls, path: Path, manifest: dict[str, Any], device: str = "cpu") -> EnhancerBundle:
        """Build the registered network the manifest names and load the weights. Enhancers run on the CPU."""
        spec = manifest["network"]
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("kwargs", {}).items()}
        model = build_recon_network(spec["name"], **kwargs)
        return cls(path, manifest, load_weights(model, path, f"network {spec['name']} {kwargs}"))

    @classmethod
    def summary(cls, manifest: dict[str, Any]) -> dict[str, str]:
        """What ``medlens models`` shows, from the manifest alone."""
        spec = manifest.get("input", {})
        modality = spec.get("modality", "/".join(spec.get("modalities", [])))
        return {
            "task": manifest["task"],
            "labels": "",
            "input": modality,
            "score": manifest.get("summary", ""),
            "accuracy": "",
        }

    def predict(
        self, files: list[str | Path], out: str | Path, scale: int = 2, simulate: int | None = None, seed: int = 0
    ) -> list[dict[str, Any]]:
        """One row per input: ``file``, ``output`` (the NIfTI written under ``out``) and what was measured, or
        ``error``. ``scale``: super-resolution factor; ``simulate``: MRI acceleration to undersample images with
        (else ``.npy`` k-space is reconstructed)."""
        inputs = [Path(f) for f in files]
        if self.task == "ct-denoising":
            report = denoise_files(self, inputs, Path(out))
        elif self.task == "super-resolution":
            report = upscale_files(self, inputs, Path(out), scale)
        else:
            report = reconstruct_files(self, inputs, Path(out), simulate, seed)
        rows = [
            {"file": w["input"], **{k: v for k, v in w.items() if k != "input"}, "error": ""} for w in report["written"]
        ]
        return rows + [{"file": p["path"], "error": p["message"]} for p in report["problems"]]


def save_enhance_bundle(
    path: Path,
    model: nn.Module,
    task: str,
    network: str,
    network_kwargs: dict[str, Any],
    manifest: dict[str, Any],
    half: bool = True,
) -> Path:
    if task not in TASKS:
        raise ModelError(f"task {task!r}: choose one of {', '.join(TASKS)}")
    return save_bundle(
        path, model, {"task": task, "network": {"name": network, "kwargs": network_kwargs}, **manifest}, half=half
    )


def load_enhancer(name_or_path: str | Path, task: str | None = None) -> EnhancerBundle:
    """An enhancer bundle by shipped name or folder; with ``task``, one trained for another task is refused,
    naming the right command."""
    path, manifest = read_manifest(name_or_path)
    if manifest["kind"] != EnhancerBundle.kind or (task is not None and manifest.get("task") != task):
        other = COMMANDS.get(str(manifest.get("task")))
        hint = f"use `medlens {other}`" if other else "it is not a reconstruction/enhancement bundle"
        raise ModelError(
            f"{path} is a {manifest.get('task')} bundle, not {task or 'an enhancer'}: {hint} "
            f"(shipped bundles: see `medlens models`)"
        )
    return EnhancerBundle.from_manifest(path, manifest)
