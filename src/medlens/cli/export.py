"""``medlens export``: a bundle's network as ONNX (and int8), checked on real images.

Commands import the library inside their function: it loads PyTorch, MONAI and
friends, and ``medlens --help`` must stay fast.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import DataDir, user_errors
from medlens.errors import ConfigError


@user_errors
def export(
    bundle: Annotated[str, typer.Argument(help="Bundle folder or shipped model name.")],
    fmt: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    data: Annotated[
        str | None,
        typer.Option(
            "--data", help="Real images to check the export on (default: the bundle's own dataset, validation split)."
        ),
    ] = None,
    check_images: Annotated[
        int, typer.Option("--check-images", help="How many validation images to compare on (classifiers).")
    ] = 64,
    quantize: Annotated[
        str | None,
        typer.Option(
            "--quantize",
            help="Also write an int8 graph: dynamic or static (kept only if validation AUC drops <= 0.005).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Copy the bundle to this new folder and export there (default: into the bundle itself)."
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Write model.onnx into the bundle (classifiers: preprocessing in the graph), checked against PyTorch on real images."""
    from medlens.kinds import open_bundle

    if fmt != "onnx":
        raise ConfigError(f"--format {fmt!r} is not supported; medlens exports onnx")
    loaded = open_bundle(bundle, needs="export")
    if out is not None:
        loaded = open_bundle(_copy_bundle(loaded.path, out))
    record = loaded.export(data=data, check_images=check_images, data_dir=data_dir)
    typer.echo(
        f"{loaded.path / record['file']}: ONNX opset {record['opset']}, matches PyTorch within "
        f"{record['max_abs_difference']:.1e} {record['checked']}"
    )
    if quantize:
        loaded.require("quantize")
        q = loaded.quantize(quantize, data, data_dir)
        verdict = "kept (used by --backend onnxruntime)" if q["kept"] else "NOT kept (AUC bound or no speed-up)"
        typer.echo(
            f"{quantize} int8: validation AUC {q['val_fp32']:.4f} -> {q['val_int8']:.4f}, test {q['test_fp32']:.4f} -> "
            f"{q['test_int8']:.4f}; {q['fp32_images_per_s']:.0f} -> {q['int8_images_per_s']:.0f} images/s; {verdict}"
        )


def _copy_bundle(source: Path, out: Path) -> Path:
    """A copy of the bundle to export into, so a shipped (installed) bundle is left as it is."""
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: the folder exists and is not empty; give a new folder for the exported bundle")
    shutil.copytree(source, out, dirs_exist_ok=True)
    return out


def register(app: typer.Typer) -> None:
    app.command()(export)
