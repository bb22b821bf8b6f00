"""``medlens reconstruct``, ``medlens denoise`` and ``medlens upscale``: enhancer bundles applied to volumes.

Commands import the library inside their function: it loads PyTorch, MONAI and
friends, and ``medlens --help`` must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import user_errors
from medlens.cli.display import exit_on_problems, print_table


@user_errors
def reconstruct(
    inputs: Annotated[
        list[Path], typer.Argument(help="Complex k-space .npy files, or MR images (DICOM/NIfTI) with --simulate.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder: DICOM in gives a derived DICOM series, else NIfTI.")
    ],
    simulate: Annotated[
        int | None,
        typer.Option("--simulate", help="Undersample the images' k-space at this acceleration (4 or 8) first."),
    ] = None,
    bundle: Annotated[
        str, typer.Option("--bundle", help="MRI reconstruction bundle folder or shipped name.")
    ] = "mri-recon",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the simulated random mask.")] = 0,
) -> None:
    """Reconstruct undersampled single-coil MRI with a learned network and data consistency."""
    from medlens.recon.bundle import load_enhancer
    from medlens.recon.stage import reconstruct_files

    report = reconstruct_files(load_enhancer(bundle, "mri-reconstruction"), list(inputs), out, simulate, seed)
    rows = []
    for r in report["written"]:
        m = r.get("metrics_vs_input", {})
        psnr = f"{m['network']['psnr']:.2f} (zero-filled {m['zero_filled']['psnr']:.2f})" if m else "n/a (no reference)"
        rows.append([Path(r["input"]).name, r["output"], psnr])
    print_table(["input", "output", "PSNR vs input dB"], rows)
    exit_on_problems(report["problems"], "input(s) could not be reconstructed")


@user_errors
def denoise(
    inputs: Annotated[list[Path], typer.Argument(help="Low-dose CT: DICOM series folders/files or NIfTI in HU.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder: DICOM in gives a derived DICOM series, else NIfTI.")
    ],
    bundle: Annotated[str, typer.Option("--bundle", help="CT denoising bundle folder or shipped name.")] = "ct-denoise",
) -> None:
    """Denoise low-dose CT slice by slice (RED-CNN), keeping geometry and Hounsfield units."""
    from medlens.recon.bundle import load_enhancer
    from medlens.recon.stage import denoise_files

    report = denoise_files(load_enhancer(bundle, "ct-denoising"), list(inputs), out)
    print_table(
        ["input", "output", "noise removed (SD, HU)"],
        [[Path(r["input"]).name, r["output"], f"{r['removed_sd_hu']:.1f}"] for r in report["written"]],
    )
    exit_on_problems(report["problems"], "input(s) could not be denoised")


@user_errors
def upscale(
    inputs: Annotated[list[Path], typer.Argument(help="CT or MR: DICOM series folders/files or NIfTI.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder: DICOM in gives a derived DICOM series, else NIfTI.")
    ],
    scale: Annotated[int, typer.Option("--scale", help="In-plane factor: 2 or 4.")] = 2,
    bundle: Annotated[
        str, typer.Option("--bundle", help="Super-resolution bundle folder or shipped name.")
    ] = "upscale",
) -> None:
    """Super-resolve slices in-plane (residual U-Net on bicubic), updating pixel spacing and position."""
    from medlens.recon.bundle import load_enhancer
    from medlens.recon.stage import upscale_files

    report = upscale_files(load_enhancer(bundle, "super-resolution"), list(inputs), out, scale)
    print_table(
        ["input", "output", "scale"],
        [[Path(r["input"]).name, r["output"], f"{r['scale']}x"] for r in report["written"]],
    )
    exit_on_problems(report["problems"], "input(s) could not be upscaled")


def register(app: typer.Typer) -> None:
    for command in (reconstruct, denoise, upscale):
        app.command()(command)
