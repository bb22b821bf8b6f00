"""``medlens export``: a thin shell over :mod:`medlens.runtime`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from medlens.cli_common import DataDir, user_errors
from medlens.errors import ConfigError


@user_errors
def export(
    bundle: Annotated[str, typer.Argument(help="Bundle folder or shipped model name.")],
    fmt: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    data: Annotated[str | None, typer.Option("--data", help="Real images to check the export on (default: the bundle's own dataset, validation split).")] = None,
    check_images: Annotated[int, typer.Option("--check-images", help="How many validation images to compare on (classifiers).")] = 64,
    quantize: Annotated[str | None, typer.Option("--quantize", help="Also write an int8 graph: dynamic or static (kept only if validation AUC drops <= 0.005).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Copy the bundle to this new folder and export there (default: into the bundle itself).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Write model.onnx into the bundle (classifiers: preprocessing in the graph), checked against PyTorch on real images."""
    from medlens.models.bundle import load_bundle, read_manifest

    if fmt != "onnx":
        raise ConfigError(f"--format {fmt!r} is not supported; medlens exports onnx")
    path, manifest = read_manifest(bundle)
    if out is not None:
        bundle, path = str(out), _copy_bundle(path, out)
    if manifest.get("task") == "segmentation":
        record = _export_segmentation(bundle, manifest, data, data_dir)
        where = f"on the validation case {record['checked_on']}"
    elif manifest.get("task") in ("binary", "multiclass", "multilabel"):
        from medlens.runtime.onnx_export import export_onnx
        from medlens.tasks.data import dataset_for_bundle, training_data

        loaded = load_bundle(bundle)
        dataset = dataset_for_bundle(loaded, data or training_data(manifest), None, data_dir)
        val = dataset.split("val")
        clinical = None
        if loaded.tabular is not None:
            clinical = loaded.tabular.transform(val.metadata[:check_images], f"{dataset.name}: validation split")
        record = export_onnx(loaded, val.images[:check_images].astype("float32"), check_clinical=clinical)
        where = f"on {record['checked_images']} real validation images"
        if quantize:
            typer.echo(f"{path / record['file']}: ONNX opset {record['opset']}, matches PyTorch within "
                       f"{record['max_abs_difference']:.1e} {where}")
            _quantize(loaded, dataset, quantize)
            return
    else:
        raise ConfigError(f"{path.name} is a {manifest.get('task')} bundle; ONNX export covers classification and "
                          "segmentation bundles")
    typer.echo(f"{path / record['file']}: ONNX opset {record['opset']}, matches PyTorch within "
               f"{record['max_abs_difference']:.1e} {where}")


def _copy_bundle(source: Path, out: Path) -> Path:
    """A copy of the bundle to export into, so a shipped (installed) bundle is left as it is."""
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: the folder exists and is not empty; give a new folder for the exported bundle")
    shutil.copytree(source, out, dirs_exist_ok=True)
    return out


def _quantize(loaded: Any, dataset: Any, kind: str) -> None:
    from medlens.runtime.quantize import quantize_bundle

    val, test = dataset.split("val"), dataset.split("test")
    clinical = None
    if loaded.tabular is not None:  # a fused graph is calibrated and scored with each image's own clinical values
        clinical = (loaded.tabular.transform(val.metadata, f"{dataset.name}: validation split"),
                    loaded.tabular.transform(test.metadata, f"{dataset.name}: test split"))
    q = quantize_bundle(loaded, kind, (val.images, val.labels), (test.images, test.labels), clinical=clinical)
    verdict = "kept (used by --backend onnxruntime)" if q["kept"] else "NOT kept (AUC bound or no speed-up)"
    typer.echo(f"{kind} int8: validation AUC {q['val_fp32']:.4f} -> {q['val_int8']:.4f}, test {q['test_fp32']:.4f} -> "
               f"{q['test_int8']:.4f}; {q['fp32_images_per_s']:.0f} -> {q['int8_images_per_s']:.0f} images/s; {verdict}")


def _export_segmentation(bundle: str, manifest: dict, data: str | None, data_dir: Path | None) -> dict:
    import os

    from medlens.errors import DataError
    from medlens.runtime.onnx_export import export_segmentation_onnx
    from medlens.segment.evaluate import load_seg_bundle

    root = Path(data) if data else Path(data_dir or os.environ.get("MEDLENS_DATA_DIR", "../shared/data")) / "msd_hippocampus"
    cases = manifest.get("split", {}).get("val", [])
    candidates = [root / "imagesTr" / f"{c}.nii.gz" for c in cases[:1]]
    if not candidates or not candidates[0].is_file():
        raise DataError(f"no validation case to check the export on under {root}; pass --data with the bundle's "
                        "dataset folder (imagesTr/ labelsTr/)")
    return export_segmentation_onnx(load_seg_bundle(bundle), candidates[0])


def register_runtime_commands(app: typer.Typer) -> None:
    app.command()(export)
