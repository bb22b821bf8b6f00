"""The ``medlens`` command: one short function per stage, heavy imports inside the commands."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from medlens import __version__
from medlens.cli_common import DataDir, _state, user_errors
from medlens.cli_runtime import register_runtime_commands
from medlens.cli_federate import register_federate_commands
from medlens.cli_label import register_label_commands
from medlens.cli_serve import register_serve_commands
from medlens.cli_trust import register_trust_commands
from medlens.phi import install_phi_filter
from medlens.display import cell, exit_on_problems, make_console, print_metrics, print_predictions, print_table

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (one object per row) instead of a table.")]
app = typer.Typer(help="medlens: deep learning for medical imaging on an ordinary CPU.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False)  # a traceback must never print values (keys, patient data)
def _print_version(value: bool) -> None:
    if value:  # eager: `medlens --version` needs no command
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", help="Show tracebacks and progress logs.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    _state["verbose"] = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install_phi_filter()  # dependencies' warnings quote header values (names included): they go through the PHI filter


@app.command()
@user_errors
def train(
    dataset: Annotated[str, typer.Argument(help="MedMNIST name (pneumoniamnist) or a label CSV for a folder of images.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder; the bundle goes to OUT/model.")],
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with [train] settings.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: --set epochs=5.")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")] = None,
    data_dir: DataDir = None,
    task: Annotated[str, typer.Option("--task", help="classify; segment (DATASET: an MSD folder or image,label CSV); survival (DATASET: a folder with an .npz of images, times, events and a clinical CSV).")] = "classify",
    plan: Annotated[Path | None, typer.Option("--plan", help="Segmentation: plan.json from `medlens plan` (default: plan now).")] = None,
    init: Annotated[str | None, typer.Option("--init", help="Start from an encoder folder (`medlens pretrain`) or 'imagenet' (efficientnet-lite0).")] = None,
) -> None:
    """Train a classifier or a segmentation model; select on validation; write a self-describing bundle."""
    from medlens.config import TrainConfig, load_config

    if task == "segment":
        _train_segment(dataset, out, config, set_, seed, device, plan, init)
        return
    if task == "survival":
        _train_survival(dataset, out, config, set_, seed, device)
        return
    if task != "classify":
        from medlens.errors import ConfigError

        raise ConfigError(f"--task {task!r}: choose classify, segment or survival")
    from medlens.models.init import encoder_settings
    from medlens.tasks.classify import train_classifier

    overrides = [f"dataset={dataset}", *encoder_settings(init), *(set_ or [])]  # --init ENC: ENC's network by default
    overrides += [f"seed={seed}"] if seed is not None else []
    overrides += [f"device={device}"] if device is not None else []
    overrides += [f"init={init}"] if init is not None else []
    cfg = load_config(TrainConfig, config, overrides, section="train" if config else "")
    bundle = train_classifier(cfg, out, data_dir=data_dir, show_progress=True)
    if not _is_main_process():
        return  # under torchrun, rank 0 reports
    manifest = json.loads((bundle / "bundle.json").read_text())
    print_metrics("validation", manifest["metrics"]["validation"])
    typer.echo(f"bundle written to {bundle}")


def _is_main_process() -> bool:
    from medlens.train.distributed import dist_info

    return dist_info().is_main


def _train_survival(data: str, out: Path, config: Path | None, set_: list[str] | None, seed: int | None, device: str | None) -> None:
    from medlens.config import load_config
    from medlens.survival.train import SurvivalConfig, train_survival

    overrides = [*(set_ or [])] + ([f"seed={seed}"] if seed is not None else []) + ([f"device={device}"] if device else [])
    cfg = load_config(SurvivalConfig, config, overrides, section="survival" if config else "")
    folder = train_survival(data, cfg, out)
    report = json.loads((folder / "survival_report.json").read_text())
    for split in ("validation", "test"):
        if split in report:
            metrics = {k: v for k, v in report[split].items() if isinstance(v, (int, float))}
            ci = report[split].get("c_index_ci", {})
            print_metrics(f"{split} (C-index 95% CI {ci.get('low', float('nan')):.3f}-{ci.get('high', float('nan')):.3f})", metrics)
    km = report["kaplan_meier_test"]
    typer.echo(f"Kaplan-Meier by predicted risk group (test split): {folder / km['plot']}, log-rank p = {km['logrank_p']:.3g}")
    typer.echo(f"bundle written to {folder / 'model'}")


def _train_segment(data: str, out: Path, config: Path | None, set_: list[str] | None, seed: int | None, device: str | None,
                   plan: Path | None, init: str | None) -> None:
    from medlens.config import load_config
    from medlens.segment.stage import train_stage
    from medlens.segment.train import SegTrainConfig

    overrides = [*(set_ or [])] + ([f"seed={seed}"] if seed is not None else []) + ([f"device={device}"] if device else [])
    overrides += [f"init={init}"] if init is not None else []
    cfg = load_config(SegTrainConfig, config, overrides, section="segment" if config else "")
    bundle = train_stage(data, out, cfg, plan)
    if not _is_main_process():
        return
    validation = json.loads((bundle / "bundle.json").read_text())["metrics"]["validation"]
    print_metrics(f"validation (n={validation.pop('n')})", validation)
    typer.echo(f"bundle written to {bundle}")


@app.command()
@user_errors
def plan(
    data: Annotated[Path, typer.Argument(help="MSD folder (imagesTr/, labelsTr/) or a CSV of image,label paths.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for fingerprint.json and plan.json.")],
    dims: Annotated[int, typer.Option("--dims", help="3 (volumes) or 2 (slice by slice).")] = 3,
    memory_mb: Annotated[int, typer.Option("--memory-mb", help="Training memory budget for patch and batch size.")] = 2000,
    width: Annotated[int, typer.Option("--width", help="Filters at full resolution (8 suits a 2-core CPU; nnU-Net uses 32).")] = 8,
) -> None:
    """Check a segmentation dataset and write its fingerprint and an editable training plan."""
    from medlens.segment.stage import plan_stage

    made, fp = plan_stage(data, out, dims=dims, memory_mb=memory_mb, width=width)
    typer.echo(f"{fp['usable']}/{fp['cases']} cases usable; labels {fp['label_names']}; median shape {fp['median_shape']} "
               f"at {fp['median_spacing_mm']} mm")
    typer.echo(f"plan: {made.dims}D, patch {made.patch_size}, batch {made.batch_size}, {len(made.strides) - 1} downsamplings, "
               f"filters {made.filters}, normalisation {made.normalization}; written to {out / 'plan.json'}")
    exit_on_problems([{"message": p} for p in fp["problems"]], "problem(s) in the dataset; fix them before training")


@app.command()
@user_errors
def segment(
    bundle: Annotated[str, typer.Argument(help="Segmentation bundle folder or shipped name (hippocampus).")],
    inputs: Annotated[list[Path], typer.Argument(help="NIfTI/NRRD files or DICOM series folders.")],
    out: Annotated[Path, typer.Option("--out", help="Label maps (same names), DICOM SEG for DICOM inputs, volumes.json.")],
    tta: Annotated[bool, typer.Option("--tta", help="Mirror test-time augmentation (4x slower).")] = False,
    backend: Annotated[str, typer.Option("--backend", help="auto (ONNX Runtime when exported), torch or onnxruntime.")] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto (a CUDA GPU when visible), cpu or cuda (runs PyTorch).")] = "auto",
) -> None:
    """Segment images: one label map per input on its own grid, volumes in mL; DICOM in gives DICOM SEG too."""
    from medlens.runtime.backends import place_on_device, with_backend
    from medlens.segment.evaluate import load_seg_bundle
    from medlens.segment.stage import segment_files

    loaded, backend = place_on_device(load_seg_bundle(bundle), backend, device)
    loaded = with_backend(loaded, backend)
    from rich.progress import Progress

    with Progress(transient=True, disable=len(inputs) < 4) as progress:
        task = progress.add_task("segmenting", total=len(inputs))
        report = segment_files(loaded, list(inputs), out, tta=tta, on_item=lambda: progress.advance(task))
    if report["skipped_done"]:
        typer.echo(f"{report['skipped_done']} input(s) already in {out / 'volumes.jsonl'} were skipped (delete it to redo them)")
    names = [n for v, n in sorted(loaded.plan.label_names.items()) if v]
    print_table(["input", "label map", *[f"{n} mL" for n in names], "DICOM SEG"],
                 [[Path(r["input"]).name, r["labels"], *[f"{r['volumes_ml'][n]:.3f}" for n in names], r.get("dicom_seg", "")] for r in report["results"]])
    exit_on_problems([{"message": p["message"]} for p in report["problems"]], "input(s) could not be segmented")


@app.command()
@user_errors
def reconstruct(
    inputs: Annotated[list[Path], typer.Argument(help="Complex k-space .npy files, or MR images (DICOM/NIfTI) with --simulate.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: DICOM in gives a derived DICOM series, else NIfTI.")],
    simulate: Annotated[int | None, typer.Option("--simulate", help="Undersample the images' k-space at this acceleration (4 or 8) first.")] = None,
    bundle: Annotated[str, typer.Option("--bundle", help="MRI reconstruction bundle folder or shipped name.")] = "mri-recon",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the simulated random mask.")] = 0,
) -> None:
    """Reconstruct undersampled single-coil MRI with a learned network and data consistency."""
    from medlens.recon.bundle import load_enhance_bundle
    from medlens.recon.stage import reconstruct_files

    report = reconstruct_files(load_enhance_bundle(bundle, "mri-reconstruction"), list(inputs), out, simulate, seed)
    rows = []
    for r in report["written"]:
        m = r.get("metrics_vs_input", {})
        psnr = f"{m['network']['psnr']:.2f} (zero-filled {m['zero_filled']['psnr']:.2f})" if m else "n/a (no reference)"
        rows.append([Path(r["input"]).name, r["output"], psnr])
    print_table(["input", "output", "PSNR vs input dB"], rows)
    exit_on_problems(report["problems"], "input(s) could not be reconstructed")


@app.command()
@user_errors
def denoise(
    inputs: Annotated[list[Path], typer.Argument(help="Low-dose CT: DICOM series folders/files or NIfTI in HU.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: DICOM in gives a derived DICOM series, else NIfTI.")],
    bundle: Annotated[str, typer.Option("--bundle", help="CT denoising bundle folder or shipped name.")] = "ct-denoise",
) -> None:
    """Denoise low-dose CT slice by slice (RED-CNN), keeping geometry and Hounsfield units."""
    from medlens.recon.bundle import load_enhance_bundle
    from medlens.recon.stage import denoise_files

    report = denoise_files(load_enhance_bundle(bundle, "ct-denoising"), list(inputs), out)
    print_table(["input", "output", "noise removed (SD, HU)"], [[Path(r["input"]).name, r["output"], f"{r['removed_sd_hu']:.1f}"] for r in report["written"]])
    exit_on_problems(report["problems"], "input(s) could not be denoised")


@app.command()
@user_errors
def upscale(
    inputs: Annotated[list[Path], typer.Argument(help="CT or MR: DICOM series folders/files or NIfTI.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: DICOM in gives a derived DICOM series, else NIfTI.")],
    scale: Annotated[int, typer.Option("--scale", help="In-plane factor: 2 or 4.")] = 2,
    bundle: Annotated[str, typer.Option("--bundle", help="Super-resolution bundle folder or shipped name.")] = "upscale",
) -> None:
    """Super-resolve slices in-plane (residual U-Net on bicubic), updating pixel spacing and position."""
    from medlens.recon.bundle import load_enhance_bundle
    from medlens.recon.stage import upscale_files

    report = upscale_files(load_enhance_bundle(bundle, "super-resolution"), list(inputs), out, scale)
    print_table(["input", "output", "scale"], [[Path(r["input"]).name, r["output"], f"{r['scale']}x"] for r in report["written"]])
    exit_on_problems(report["problems"], "input(s) could not be upscaled")


@app.command()
@user_errors
def evaluate(
    bundle: Annotated[str, typer.Argument(help="Bundle folder or shipped model name.")],
    data: Annotated[str, typer.Option("--data", help="MedMNIST name or label CSV.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, report.md and plots.")],
    split: Annotated[str, typer.Option("--split")] = "test",
    size: Annotated[int | None, typer.Option("--size", help="MedMNIST image size (default: the bundle's training size).")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for 95% CIs.")] = 1000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Score a bundle on a split: metrics with bootstrap CIs (classification: ROC/PR/calibration plots)."""
    from medlens.evaluate.stage import evaluate_bundle
    from medlens.models.bundle import load_bundle, read_manifest
    from medlens.tasks.data import dataset_for_bundle

    if read_manifest(bundle)[1].get("task") == "segmentation":
        _evaluate_segment(bundle, data, out, split, bootstrap, seed)
        return

    loaded = load_bundle(bundle)
    dataset = dataset_for_bundle(loaded, data, size, data_dir)
    result = evaluate_bundle(loaded, dataset, out, split=split, n_bootstrap=bootstrap, seed=seed)
    print_metrics(f"{split} (n={result['n']})", result["metrics"], result["confidence_intervals"])
    typer.echo(f"report: {result['report']}")


def _evaluate_segment(bundle: str, data: str, out: Path, split: str, bootstrap: int, seed: int) -> None:
    from medlens.segment.evaluate import evaluate_segmentation, load_seg_bundle

    result = evaluate_segmentation(load_seg_bundle(bundle), data, out, split=split, n_bootstrap=bootstrap, seed=seed)
    print_metrics(f"{split} (n={result['n']}, {result['seconds_per_case']:.2f} s/case)", result["metrics"], result["confidence_intervals"])
    typer.echo(f"per-case results: {out / 'per_case.csv'}; summary: {out / 'metrics.json'}")


@app.command()
@user_errors
def predict(
    bundle: Annotated[str, typer.Argument(help="Bundle folder or shipped model name (see `medlens models`).")],
    files: Annotated[list[Path] | None, typer.Argument(help="Image files or folders (PNG/JPEG, DICOM, NIfTI); none for a clinical-only survival model.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write rows to .csv, .json or .jsonl.")] = None,
    fit_input: Annotated[bool, typer.Option("--fit-input", help="Resize/rescale inputs that do not match the model (noted per row).")] = False,
    backend: Annotated[str, typer.Option("--backend", help="auto (ONNX Runtime when exported), torch or onnxruntime.")] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto (a CUDA GPU when visible), cpu or cuda (runs PyTorch).")] = "auto",
    clinical: Annotated[Path | None, typer.Option("--clinical", help="Fused models: CSV with a 'file' column and the model's clinical columns, or 'dicom' to read them from each DICOM header.")] = None,
) -> None:
    """Probabilities and a label per file, using the bundle's validation-chosen threshold."""
    from medlens.errors import DataError
    from medlens.models.bundle import load_bundle, read_manifest
    from medlens.runtime.backends import place_on_device
    from medlens.tabular.dicom import clinical_source
    from medlens.tabular.encode import ClinicalTable
    from medlens.tasks.predict import expand_inputs, predict_files, write_predictions

    path, manifest = read_manifest(bundle)
    if manifest.get("task") == "survival" and manifest.get("inputs") == "clinical" and not files:
        _predict_survival_clinical(path, manifest, clinical, out)
        return
    if not files:
        raise DataError("give the image files or folders to predict (after the bundle)")
    if manifest.get("task") == "survival":
        _predict_survival(path, manifest, files, out, ClinicalTable(clinical) if clinical is not None else None)
        return
    loaded, backend = place_on_device(load_bundle(bundle), backend, device)
    table = clinical_source(clinical, loaded)
    inputs = expand_inputs(list(files))
    if out is not None and out.suffix.lower() in (".csv", ".jsonl"):
        _predict_streamed(loaded, inputs, out, fit_input, backend, table)
        return
    rows = predict_files(loaded, inputs, adapt=fit_input, backend=backend, clinical=table)
    if out is not None:
        write_predictions(rows, loaded.label_names, out)
    print_predictions(rows, loaded.label_names)
    failed = [r for r in rows if r.error]
    if out is not None:
        typer.echo(f"{len(rows)} rows written to {out}")
    if failed:
        make_console(stderr=True).print(f"[red]error:[/red] {len(failed)} of {len(rows)} files could not be predicted (see the error column)", highlight=False)
        raise typer.Exit(1)


def _predict_survival(path: Path, manifest: dict[str, Any], files: list[Path], out: Path | None, clinical: Any) -> None:
    """Risk, risk group and survival at 1 and 2 years per file (CSV or JSON with --out)."""
    from medlens.survival.predict import predict_survival_files
    from medlens.tasks.predict import expand_inputs

    rows = predict_survival_files(path, manifest, expand_inputs(list(files)), clinical)
    _show_survival(rows, ["file", "risk", "risk_group", "survival_365d", "survival_730d", "error"], out, "files")


def _predict_survival_clinical(path: Path, manifest: dict[str, Any], clinical: Path | None, out: Path | None) -> None:
    """A clinical-only Cox model: one row per patient of the --clinical CSV, no images."""
    from medlens.errors import DataError
    from medlens.survival.predict import predict_survival_clinical

    if clinical is None:
        raise DataError(f"{path} is a clinical-only survival model: give --clinical CSV (one row per patient with "
                        f"{', '.join(manifest['tabular']['numeric'] + manifest['tabular']['categorical'])})")
    rows = predict_survival_clinical(path, manifest, clinical)
    # the console names rows by CSV line (the ID column may be a patient identifier); --out keeps the 'case' column
    _show_survival(rows, ["line", "case", "risk", "risk_group", "survival_365d", "survival_730d", "error"], out, "rows")


def _show_survival(rows: list[dict[str, Any]], fields: list[str], out: Path | None, what: str) -> None:
    import csv

    from medlens.display import print_table

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".json":
            out.write_text(json.dumps(rows, indent=1))
        else:
            with out.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
    shown = [f for f in fields if f != "case"]
    print_table(shown, [[Path(str(r[shown[0]])).name, *(f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in shown[1:])]
                        for r in rows])
    failed = [r for r in rows if r["error"]]
    if failed:
        make_console(stderr=True).print(f"[red]error:[/red] {len(failed)} of {len(rows)} {what} could not be predicted (see the error column)", highlight=False)
        raise typer.Exit(1)


def _predict_streamed(loaded: Any, inputs: list[Path], out: Path, fit_input: bool, backend: str, clinical: Any = None) -> None:
    """Append rows batch by batch (resumable); show the table only for a handful of files."""
    from rich.progress import Progress

    from medlens.runtime.stream import stream_predictions

    with Progress(transient=True, disable=len(inputs) <= 64) as progress:
        task = progress.add_task("predicting", total=len(inputs))
        report = stream_predictions(loaded, inputs, out, fit_input, backend=backend,
                                    on_batch=lambda n: progress.advance(task, n), clinical=clinical)
        progress.update(task, completed=len(inputs))
    if len(inputs) <= 64 and report.written:
        from medlens.tasks.predict import read_prediction_rows

        print_predictions(read_prediction_rows(out, loaded.label_names)[-report.written:], loaded.label_names)
    skipped = f"; {report.skipped_done} already in {out.name} were skipped (delete it to redo them)" if report.skipped_done else ""
    typer.echo(f"{report.written} rows written to {out}{skipped}")
    if report.failed:
        make_console(stderr=True).print(f"[red]error:[/red] {report.failed} of {report.written} files could not be predicted (see the error column)", highlight=False)
        raise typer.Exit(1)


@app.command()
@user_errors
def convert(
    source: Annotated[Path, typer.Argument(help="DICOM file, series folder or study tree.")],
    out: Annotated[Path, typer.Argument(help="Folder for one .nii.gz + .json sidecar per volume, and convert.json.")],
    equalize: Annotated[bool, typer.Option("--equalize/--no-equalize", help="Resample unevenly spaced slices (as dcm2niix's _Eq) or list them as problems.")] = True,
) -> None:
    """DICOM to NIfTI: series grouped and split, slices sorted in space, sidecars without patient identifiers."""
    from medlens.io.convert import convert_dicom

    report = convert_dicom(source, out, equalize=equalize)
    rows = [[v["file"], "x".join(map(str, v["shape"])), " x ".join(f"{s:.3g}" for s in v["spacing_mm"]), v["orientation"], "; ".join(v["warnings"])] for v in report["volumes"]]
    print_table(["file", "shape", "spacing (mm)", "axes", "warnings"], rows)
    for note in report["notes"]:
        typer.echo(f"note: {note}")
    typer.echo(f"{len(report['volumes'])} volume(s) written to {out}; report: {out / 'convert.json'}")
    exit_on_problems(report["problems"], "file(s) could not be converted")


@app.command()
@user_errors
def info(path: Annotated[Path, typer.Argument(help="DICOM file/folder, NIfTI, NRRD or MHA.")], as_json: JsonFlag = False) -> None:
    """Summarise a study from its headers: series, modality, sizes, spacing, orientation, transfer syntax (no patient identifiers)."""
    from medlens.io.info import summarize

    summary = summarize(path)
    columns = {"name": "series", "modality": "mod", "slices": "slices", "rows_cols": "matrix", "pixel_spacing_mm": "pixel mm",
               "slice_step_mm": "step mm", "orientation": "plane", "duplicate_positions": "dups", "evenly_spaced": "even", "transfer_syntax": "syntax"}
    rows = [[cell(s.get(c, s.get("shape") if c == "rows_cols" else "")) for c in columns] for s in summary["series"]]
    print_table(list(columns.values()), rows, as_json)
    if summary.get("skipped_not_dicom") and not as_json:
        typer.echo(f"{summary['skipped_not_dicom']} non-DICOM file(s) skipped")
    exit_on_problems(summary["problems"], "file(s) could not be read")


@app.command()
@user_errors
def deid(
    source: Annotated[Path, typer.Argument(help="DICOM file or folder to de-identify, or to check with --verify.")],
    out: Annotated[Path | None, typer.Argument(help="Output folder (not with --verify).")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Only check SOURCE for identifiers left; writes nothing.")] = False,
    shift_dates: Annotated[int | None, typer.Option("--shift-dates", help="Shift every date by DAYS instead of removing dates.")] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help="Secret key: the same key gives the same pseudonyms and UIDs in later runs.")] = None,
) -> None:
    """De-identify DICOM (PS3.15 Annex E basic profile), or --verify that no identifiers are left."""
    from medlens.errors import ConfigError, DeidError
    from medlens.io.deid import DeidOptions, deidentify_tree, read_key_file, verify_tree

    if verify:
        result = verify_tree(source)
        if not result["clean"]:
            print_table(["file", "attribute", "problem"], [[f["file"], f["attribute"], f["problem"]] for f in result["findings"][:50]])
            raise DeidError(f"{len(result['findings'])} identifier finding(s) in {result['files_checked']} file(s) under {source}; de-identify them with `medlens deid`")
        typer.echo(f"clean: {result['files_checked']} file(s) checked, no identifiers of the basic profile found")
        return
    if out is None:
        raise ConfigError("deid needs an output folder: medlens deid IN OUT (or --verify IN to check a folder)")
    key = read_key_file(key_file) if key_file else None
    report = deidentify_tree(source, out, DeidOptions(key=key, shift_days=shift_dates))
    print_table(["attribute", "action", "files"], [[c["attribute"], c["action"], str(c["count"])] for c in report["changes"]])
    for flagged in report["burned_in_check"]:
        typer.echo(f"check pixels: {flagged['file']}: {flagged['reason']}")
    typer.echo(f"{report['files_written']} file(s) written to {out}; report: {out / 'deid_report.json'}")
    exit_on_problems(report["problems"], "file(s) could not be de-identified")


@app.command()
def models(as_json: JsonFlag = False) -> None:
    """List the shipped model bundles: what each does, on what input, how well, and under which licence."""
    from medlens.models.bundle import pretrained_names, read_manifest

    rows = [_model_row(name, read_manifest(name)[1]) for name in pretrained_names()]
    print_table(["name", "task", "labels", "input", "test AUC / Dice", "test accuracy", "data (licence)"], rows, as_json)


def _model_row(name: str, m: dict[str, Any]) -> list[str]:
    test, data = m.get("metrics", {}).get("test", {}), m.get("data", {})
    source = f"{data.get('dataset', '')} ({data.get('licence') or data.get('license', '')})"
    if m["task"] in ("mri-reconstruction", "ct-denoising", "super-resolution"):
        return [name, m["task"], "", m["input"].get("modality", "/".join(m["input"].get("modalities", []))), m["summary"], "", source]
    if m["task"] == "segmentation":
        labels = [v for k, v in m["label_names"].items() if k != "0"]
        return [name, "segmentation", ", ".join(labels), f"{m['plan']['modality']} {m['plan']['dims']}D",
                f"Dice {test.get('mean_dice', float('nan')):.3f}", "", source]
    shape = "x".join(map(str, m["expected_input"]["spatial_shape"]))
    return [name, m["task"], ", ".join(m["label_names"]), f"{m['expected_input']['modality']} {shape}",
            f"{test.get('auc', float('nan')):.3f}", f"{test.get('accuracy', float('nan')):.3f}", source]


@app.command()
def datasets(as_json: JsonFlag = False) -> None:
    """List the MedMNIST catalog: task, sizes, licence."""
    from medlens.datasets import dataset_names, get_dataset_info

    rows = []
    for name in dataset_names():
        info = get_dataset_info(name)
        n = info.n_samples
        rows.append([name, info.task, f"{info.dims}D", ", ".join(map(str, sorted(info.files))), f"{n['train']}/{n['val']}/{n['test']}", info.license])
    print_table(["name", "task", "dims", "sizes", "train/val/test", "licence"], rows, as_json)


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the report and predictions.")] = Path("medlens-demo"),
    data_dir: DataDir = None,
) -> None:
    """The main job: the shipped pneumonia model evaluated on the real PneumoniaMNIST test set, plus predictions."""
    from medlens.demo import run_demo

    console = make_console()
    result = run_demo(out, data_dir)
    m = result.model
    console.print(f"model [bold]{m['name']}[/bold]: {m['network']['name']} on {m['data']['dataset']} ({m['data']['license']}), labels {', '.join(m['label_names'])}")
    if result.missing_data:
        console.print(f"[yellow]no test data here:[/yellow] {result.missing_data}", highlight=False, soft_wrap=True)
        stored = m.get("metrics", {}).get("test")
        if stored:
            print_metrics("test (stored in the bundle)", stored)
        return
    print_metrics("test split (PneumoniaMNIST, n=624)", result.metrics, result.intervals)
    print_predictions(result.predictions, m["label_names"], truths=result.sample_labels)
    console.print(f"report: [bold]{result.report}[/bold]; predictions: {out / 'predictions.csv'}")


register_trust_commands(app)
register_runtime_commands(app)
register_serve_commands(app)
register_federate_commands(app)
register_label_commands(app)

if __name__ == "__main__":
    sys.exit(app())
