"""``medlens export``: a thin shell over :mod:`medlens.runtime`."""

from __future__ import annotations

from typing import Annotated

import typer

from medlens.cli_common import DataDir, user_errors


@user_errors
def export(
    bundle: Annotated[str, typer.Argument(help="Bundle folder or shipped model name.")],
    fmt: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    data: Annotated[str | None, typer.Option("--data", help="Real images to check the export on (default: the bundle's training dataset, validation split).")] = None,
    check_images: Annotated[int, typer.Option("--check-images", help="How many validation images to compare on.")] = 64,
    data_dir: DataDir = None,
) -> None:
    """Write model.onnx into the bundle with its preprocessing in the graph, checked against PyTorch on real images."""
    from medlens.errors import ConfigError
    from medlens.models.bundle import load_bundle
    from medlens.runtime.onnx_export import check_exportable, export_onnx
    from medlens.tasks.data import dataset_for_bundle

    if fmt != "onnx":
        raise ConfigError(f"--format {fmt!r} is not supported; medlens exports onnx")
    loaded = load_bundle(bundle)
    check_exportable(loaded)
    name = data or loaded.manifest.get("data", {}).get("dataset") or loaded.manifest.get("config", {}).get("dataset")
    if not name:
        raise ConfigError("the bundle does not name its training data: pass --data with real images to check the export on")
    images = dataset_for_bundle(loaded, name, None, data_dir).split("val").images[:check_images]
    record = export_onnx(loaded, images.astype("float32"))
    typer.echo(f"{loaded.path / record['file']}: ONNX opset {record['opset']}, matches PyTorch within "
               f"{record['max_abs_difference']:.1e} on {record['checked_images']} real validation images")


def register_runtime_commands(app: typer.Typer) -> None:
    app.command()(export)
