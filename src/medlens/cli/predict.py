"""``medlens predict``, ``medlens segment``, ``medlens detect`` and ``medlens evaluate``: a bundle applied to files, or scored on data.

Commands import the library inside their function: it loads PyTorch, MONAI and
friends, and ``medlens --help`` must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medlens.cli.common import BundleArg, DataDir, user_errors
from medlens.cli.display import exit_on_failed_rows, exit_on_problems, print_metrics, print_predictions, print_table
from medlens.errors import ConfigError, DataError

OTHER_COMMAND = {
    "segmenter": "medlens segment BUNDLE INPUTS --out DIR",
    "detector": "medlens detect BUNDLE INPUTS --out DIR",
    "enhancer": "medlens reconstruct / denoise / upscale INPUTS --bundle BUNDLE --out DIR",
}
Backend = Annotated[str, typer.Option("--backend", help="auto (ONNX Runtime when exported), torch or onnxruntime.")]
Device = Annotated[str, typer.Option("--device", help="auto (a CUDA GPU when visible), cpu or cuda (runs PyTorch).")]


@user_errors
def predict(
    bundle: BundleArg,
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Image files or folders (PNG/JPEG, DICOM, NIfTI); none for a clinical-only survival model."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write rows to .csv, .json or .jsonl.")] = None,
    fit_input: Annotated[
        bool, typer.Option("--fit-input", help="Resize/rescale inputs that do not match the model (noted per row).")
    ] = False,
    backend: Backend = "auto",
    device: Device = "auto",
    clinical: Annotated[
        Path | None,
        typer.Option(
            "--clinical",
            help="Fused models: CSV with a 'file' column and the model's clinical columns, or 'dicom' to read them from each DICOM header.",
        ),
    ] = None,
) -> None:
    """Probabilities and a label per file (classifiers), or risk and survival per patient (survival models)."""
    from medlens.kinds import open_bundle

    loaded = open_bundle(bundle, needs="predict")
    if loaded.kind in OTHER_COMMAND:
        raise ConfigError(f"{loaded.name} is a {loaded.kind} bundle: use `{OTHER_COMMAND[loaded.kind]}`")
    if loaded.kind == "survival":
        _predict_survival(loaded, files, clinical, out)
    elif not files:
        raise DataError("give the image files or folders to predict (after the bundle)")
    else:
        _predict_classifier(loaded, files, out, fit_input, backend, device, clinical)


def _predict_classifier(
    loaded: Any, files: list[Path], out: Path | None, fit_input: bool, backend: str, device: str, clinical: Path | None
) -> None:
    from medlens.classify.predict import expand_inputs, predict_files, write_predictions
    from medlens.runtime.backends import place_on_device
    from medlens.tabular.dicom import clinical_source

    loaded, backend = place_on_device(loaded, backend, device)
    table, inputs = clinical_source(clinical, loaded), expand_inputs(list(files))
    if out is not None and out.suffix.lower() in (".csv", ".jsonl"):
        _predict_streamed(loaded, inputs, out, fit_input, backend, table)
        return
    rows = predict_files(loaded, inputs, adapt=fit_input, backend=backend, clinical=table)
    print_predictions(rows, loaded.label_names)
    if out is not None:
        write_predictions(rows, loaded.label_names, out)
        typer.echo(f"{len(rows)} rows written to {out}")
    exit_on_failed_rows(sum(bool(r.error) for r in rows), len(rows))


def _predict_streamed(loaded: Any, inputs: list[Path], out: Path, fit_input: bool, backend: str, clinical: Any) -> None:
    """Append rows batch by batch (resumable); show the table only for a handful of files."""
    from rich.progress import Progress

    from medlens.classify.predict import read_prediction_rows
    from medlens.classify.stream import stream_predictions

    with Progress(transient=True, disable=len(inputs) <= 64) as progress:
        task = progress.add_task("predicting", total=len(inputs))
        report = stream_predictions(
            loaded,
            inputs,
            out,
            fit_input,
            backend=backend,
            on_batch=lambda n: progress.advance(task, n),
            clinical=clinical,
        )
        progress.update(task, completed=len(inputs))
    if len(inputs) <= 64 and report.written:
        print_predictions(read_prediction_rows(out, loaded.label_names)[-report.written :], loaded.label_names)
    skipped = (
        f"; {report.skipped_done} already in {out.name} were skipped (delete it to redo them)"
        if report.skipped_done
        else ""
    )
    typer.echo(f"{report.written} rows written to {out}{skipped}")
    exit_on_failed_rows(report.failed, report.written)


def _predict_survival(loaded: Any, files: list[Path] | None, clinical: Path | None, out: Path | None) -> None:
    """Risk, risk group and survival at 1 and 2 years per file, or per CSV row for a clinical-only model."""
    from medlens.survival.predict import survival_fields, write_survival_rows

    rows = loaded.predict(files or None, clinical)
    fields = survival_fields(loaded.inputs == "clinical")
    if out is not None:
        write_survival_rows(rows, fields, out)
    # the console names rows by CSV line (the ID column may be a patient identifier); --out keeps the 'case' column
    shown = [f for f in fields if f != "case"]
    print_table(
        shown,
        [
            [
                Path(str(r[shown[0]])).name,
                *(f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in shown[1:]),
            ]
            for r in rows
        ],
    )
    exit_on_failed_rows(
        sum(bool(r["error"]) for r in rows), len(rows), "rows" if loaded.inputs == "clinical" else "files"
    )


@user_errors
def segment(
    bundle: Annotated[str, typer.Argument(help="Segmentation bundle folder or shipped name (hippocampus).")],
    inputs: Annotated[list[Path], typer.Argument(help="NIfTI/NRRD files or DICOM series folders.")],
    out: Annotated[
        Path, typer.Option("--out", help="Label maps (same names), DICOM SEG for DICOM inputs, volumes.json.")
    ],
    tta: Annotated[bool, typer.Option("--tta", help="Mirror test-time augmentation (4x slower).")] = False,
    backend: Backend = "auto",
    device: Device = "auto",
) -> None:
    """Segment images: one label map per input on its own grid, volumes in mL; DICOM in gives DICOM SEG too."""
    from rich.progress import Progress

    from medlens.runtime.backends import place_on_device, with_backend
    from medlens.segment.bundle import load_segmenter
    from medlens.segment.stage import segment_files

    loaded, backend = place_on_device(load_segmenter(bundle), backend, device)
    loaded = with_backend(loaded, backend)
    with Progress(transient=True, disable=len(inputs) < 4) as progress:
        task = progress.add_task("segmenting", total=len(inputs))
        report = segment_files(loaded, list(inputs), out, tta=tta, on_item=lambda: progress.advance(task))
    if report["skipped_done"]:
        typer.echo(
            f"{report['skipped_done']} input(s) already in {out / 'volumes.jsonl'} were skipped (delete it to redo them)"
        )
    names = [n for v, n in sorted(loaded.plan.label_names.items()) if v]
    print_table(
        ["input", "label map", *[f"{n} mL" for n in names], "DICOM SEG"],
        [
            [Path(r["input"]).name, r["labels"], *[f"{r['volumes_ml'][n]:.3f}" for n in names], r.get("dicom_seg", "")]
            for r in report["results"]
        ],
    )
    exit_on_problems([{"message": p["message"]} for p in report["problems"]], "input(s) could not be segmented")


@user_errors
def detect(
    bundle: Annotated[str, typer.Argument(help="Detector bundle folder or shipped name (blood-cells).")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (PNG/JPEG, DICOM); volumes for 3D.")],
    out: Annotated[
        Path, typer.Option("--out", help="detections.csv, counts.csv, overlays/*.png, and sr/*.dcm for DICOM inputs.")
    ],
    device: Device = "auto",
) -> None:
    """Find and count: boxes in each file's own pixels, counts per class, overlays; DICOM in gives a DICOM SR too."""
    from medlens.classify.predict import expand_inputs
    from medlens.detect.bundle import load_detector
    from medlens.detect.infer import detect_files
    from medlens.train.device import resolve_device

    loaded = load_detector(bundle, device=str(resolve_device(device)))
    report = detect_files(loaded, expand_inputs(list(inputs)), out)
    names = loaded.label_names
    print_table(
        ["file", *names, "overlay / SR"],
        [
            [
                f.file.name,
                *(str(int((f.labels == k).sum())) for k in range(len(names))),
                f.outputs.get("sr") or f.outputs.get("overlay", ""),
            ]
            for f in report["results"]
        ],
    )
    typer.echo(f"boxes: {out / 'detections.csv'}; counts: {out / 'counts.csv'}")
    exit_on_problems(
        [{"message": f"{p['file']}: {p['message']}"} for p in report["problems"]], "file(s) could not be read"
    )


@user_errors
def evaluate(
    bundle: BundleArg,
    data: Annotated[str, typer.Option("--data", help="MedMNIST name, label CSV, or a segmentation dataset folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, report.md and plots.")],
    split: Annotated[str, typer.Option("--split")] = "test",
    size: Annotated[
        int | None, typer.Option("--size", help="MedMNIST image size (default: the bundle's training size).")
    ] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for 95% CIs.")] = 1000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Score a bundle on a split: metrics with bootstrap CIs (classification: ROC/PR/calibration plots)."""
    from medlens.kinds import open_bundle

    loaded = open_bundle(bundle, needs="evaluate")
    result = loaded.evaluate(data, out, split=split, size=size, n_bootstrap=bootstrap, seed=seed, data_dir=data_dir)
    print_metrics(result["title"], result["metrics"], result["confidence_intervals"])
    typer.echo(result["where"])


def register(app: typer.Typer) -> None:
    for command in (predict, segment, detect, evaluate):
        app.command()(command)
