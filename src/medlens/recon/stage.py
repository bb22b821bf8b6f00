"""The ``reconstruct``, ``denoise`` and ``upscale`` stages: files in, the same format out, a JSON report.

Inputs are DICOM series (a folder or a file) or NIfTI/NRRD/MHA volumes; each is
processed slice by slice in its own (rows, columns) plane. A DICOM input comes back
as a derived DICOM series beside which a viewer shows the source (same study and
frame of reference); anything else comes back as NIfTI. A bad input is reported
and the batch goes on; the report (``<stage>.json`` in the output folder) lists
what was written and what failed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.errors import DataError, MedlensError
from medlens.io.dicom_write import write_derived_series
from medlens.io.volume import load_volume, save_nifti
from medlens.recon.enhance import denoise_ct, upscale
from medlens.recon.learn import CENTRE_FRACTIONS, mri_reconstruct
from medlens.recon.metrics import volume_metrics
from medlens.recon.mri import to_kspace, undersample, zero_filled
from medlens.types import Volume

if TYPE_CHECKING:
    from medlens.recon.bundle import EnhancerBundle

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


def is_dicom_input(path: Path) -> bool:
    return path.is_dir() or not path.name.lower().endswith((*IMAGE_SUFFIXES, ".npy"))


def _slices(volume: Volume) -> list[np.ndarray]:
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise DataError(
            f"expected a grey-level volume (X, Y, Z), got shape {array.shape}; colour or 4D input is not supported"
        )
    return [np.ascontiguousarray(array[:, :, k].T, dtype=np.float32) for k in range(array.shape[2])]


def _stack(slices: list[np.ndarray]) -> np.ndarray:
    return np.stack([s.T for s in slices], axis=2).astype(np.float32)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*IMAGE_SUFFIXES, ".npy", ".dcm", ".dicom"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _write(source: Path, volume: Volume, out: Path, what: str, zoom: int = 1) -> str:
    tag = what.split()[0]
    if is_dicom_input(source):
        target = out / f"{_stem(source)}_{tag}"
        write_derived_series(source, volume, target, what, zoom)
        return str(target)
    return str(save_nifti(volume, out / f"{_stem(source)}_{tag}.nii.gz"))


def run_stage(
    stage: str, inputs: list[Path], out_dir: Path, process: Callable[[Path], tuple[Volume, str, int, dict]]
) -> dict[str, Any]:
    """Apply ``process`` (path -> processed volume, description, zoom, extra) to each input; collect the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, problems = [], []
    for path in inputs:
        try:
            volume, what, zoom, extra = process(path)
            written.append({"input": str(path), "output": _write(path, volume, out_dir, what, zoom), **extra})
        except (MedlensError, OSError) as exc:
            problems.append({"path": str(path), "error": type(exc).__name__, "message": str(exc)})
    report = {"stage": stage, "written": written, "problems": problems}
    (out_dir / f"{stage}.json").write_text(json.dumps(report, indent=1))
    return report


def check_ct_hu(volume: Volume, path: Path) -> None:
    """Denoising works in Hounsfield units: refuse a CT whose stored values were never rescaled to HU."""
    meta = volume.meta
    if is_dicom_input(path):
        if meta.get("Modality") != "CT":
            raise DataError(
                f"{path}: modality {meta.get('Modality')!r}, but the CT denoiser needs CT (Hounsfield units)"
            )
        if "RescaleIntercept" not in meta or "RescaleSlope" not in meta:
            raise DataError(
                f"{path}: CT without RescaleSlope/RescaleIntercept (0028,1053)/(0028,1052), so its stored values "
                "are not known to be Hounsfield units; add the scanner's values (often slope 1, intercept -1024), "
                'e.g. `dcmodify -i "(0028,1052)=-1024" -i "(0028,1053)=1" FILE`, then run again'
            )
    array = np.asarray(volume.array)
    if array.size and array.min() >= 0 and array.max() > 500:
        raise DataError(
            f"{path}: values {array.min():.0f}..{array.max():.0f} with nothing below 0: not Hounsfield units "
            "(air is -1000 HU); give the image in HU"
        )


def denoise_files(bundle: EnhancerBundle, inputs: list[Path], out_dir: Path) -> dict[str, Any]:
    def process(path: Path) -> tuple[Volume, str, int, dict]:
        volume = load_volume(path)
        check_ct_hu(volume, path)
        slices = _slices(volume)
        denoised = [denoise_ct(bundle.model, s) for s in slices]
        noise = float(np.mean([np.std(a - b) for a, b in zip(slices, denoised)]))
        return replace(volume, array=_stack(denoised)), "denoised (RED-CNN)", 1, {"removed_sd_hu": round(noise, 2)}

    return run_stage("denoise", inputs, out_dir, process)


def upscale_files(bundle: EnhancerBundle, inputs: list[Path], out_dir: Path, scale: int) -> dict[str, Any]:
    scales = bundle.manifest.get("input", {}).get("scales", [2, 4])
    if scale not in scales:
        raise DataError(f"scale {scale}: the bundle was trained for {', '.join(map(str, scales))}x")

    def process(path: Path) -> tuple[Volume, str, int, dict]:
        volume = load_volume(path)
        up = [upscale(bundle.model, s, scale) for s in _slices(volume)]
        affine = np.array(volume.affine, dtype=float)
        affine[:3, 3] += affine[:3, :2] @ np.full(2, -(scale - 1) / (2 * scale))
        affine[:3, :2] /= scale
        return replace(volume, array=_stack(up), affine=affine), f"upscaled {scale}x in-plane", scale, {"scale": scale}

    return run_stage("upscale", inputs, out_dir, process)


def read_kspace(path: Path) -> tuple[list[np.ndarray], str]:
    """A ``.npy`` of complex k-space, ``(rows, cols)`` or ``(slices, rows, cols)``, centred (DC in the middle)."""
    try:
        k = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from exc
    if not np.iscomplexobj(k):
        raise DataError(
            f"{path}: k-space must be complex (real and imaginary parts), got {k.dtype} values: "
            "is this a magnitude image? Give the image itself with --simulate ACCEL to simulate k-space from it"
        )
    if k.ndim == 2:
        k = k[None]
    if k.ndim != 3 or min(k.shape[1:]) < 16:
        raise DataError(
            f"{path}: k-space of shape {k.shape}; expected (rows, cols) or (slices, rows, cols), single coil, "
            "at least 16x16 (multi-coil data: combine coils first)"
        )
    return list(k), "k-space"


def reconstruct_files(
    bundle: EnhancerBundle, inputs: list[Path], out_dir: Path, simulate: int | None, seed: int = 0
) -> dict[str, Any]:
    """Reconstruct measured k-space (``.npy``), or retrospectively undersample images (``simulate`` = acceleration)."""
    import torch

    mask = bundle.manifest.get("input", {}).get("mask", "random")

    def from_kspace(k: np.ndarray, path: Path) -> tuple[torch.Tensor, np.ndarray]:
        columns = np.abs(k).sum(axis=0) > 0
        if not columns.any():
            raise DataError(f"{path}: k-space is all zero: the mask samples nothing")
        tensor = torch.from_numpy(np.stack([k.real, k.imag], axis=-1).astype(np.float32))[None]
        return tensor, columns

    def process(path: Path) -> tuple[Volume, str, int, dict]:
        if path.suffix == ".npy":
            if simulate:
                raise DataError(
                    f"{path}: --simulate undersamples images; this is k-space already (leave --simulate out)"
                )
            kspaces, _ = read_kspace(path)
            recon = [mri_reconstruct(bundle.model, *from_kspace(k, path)) for k in kspaces]
            volume = Volume(
                array=_stack(recon),
                affine=np.eye(4),
                meta={"units": "arbitrary"},
                slice_positions_mm=None,
                warnings=("geometry unknown for raw k-space: 1 mm voxels, identity orientation",),
            )
            return volume, "reconstructed", 1, {"slices": len(recon), "geometry": "unknown (identity affine)"}
        if not simulate:
            raise DataError(
                f"{path}: an image, not k-space; pass --simulate 4 (or 8) to reconstruct it from "
                "retrospectively undersampled k-space, or give complex k-space as .npy"
            )
        volume = load_volume(path)
        truth = _slices(volume)
        recon, zf = [], []
        for i, image in enumerate(truth):
            masked, _, columns = undersample(
                to_kspace(np.abs(image)), mask, simulate, CENTRE_FRACTIONS.get(simulate, 0.08), seed=seed + i
            )
            recon.append(mri_reconstruct(bundle.model, masked, columns))
            zf.append(zero_filled(masked))
        scores = {
            "network": volume_metrics(np.stack(truth), np.stack(recon)),
            "zero_filled": volume_metrics(np.stack(truth), np.stack(zf)),
        }
        what = f"reconstructed from {simulate}x undersampled k-space (simulated)"
        return replace(volume, array=_stack(recon)), what, 1, {"acceleration": simulate, "metrics_vs_input": scores}

    return run_stage("reconstruct", inputs, out_dir, process)
