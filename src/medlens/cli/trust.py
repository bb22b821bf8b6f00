"""``medlens explain``, ``medlens calibrate`` and ``medlens audit``: thin shells over :mod:`medlens.explain` and :mod:`medlens.trust`.

Commands import the library inside their function: it loads PyTorch, MONAI and
friends, and ``medlens --help`` must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import DataDir, user_errors
from medlens.cli.display import exit_on_failed_rows, print_table

Bundle = Annotated[str, typer.Argument(help="Bundle folder or shipped model name (see `medlens models`).")]
Size = Annotated[int | None, typer.Option("--size", help="MedMNIST image size (default: the bundle's training size).")]


@user_errors
def explain(
    bundle: Bundle,
    files: Annotated[list[Path], typer.Argument(help="Image files or folders (PNG/JPEG, DICOM, NIfTI).")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for overlays (PNG; DICOM Secondary Capture for DICOM input).")
    ],
    method: Annotated[
        str, typer.Option("--method", help="gradcam, gradcam++, occlusion or integrated-gradients.")
    ] = "gradcam",
    layer: Annotated[
        str | None, typer.Option("--layer", help="Grad-CAM layer (default: the last spatial feature map).")
    ] = None,
    fit_input: Annotated[
        bool, typer.Option("--fit-input", help="Resize/rescale inputs that do not match the model.")
    ] = False,
    clinical: Annotated[
        Path | None,
        typer.Option(
            "--clinical",
            help="Fused models: CSV with a 'file' column and the model's clinical columns, or 'dicom' (each DICOM header).",
        ),
    ] = None,
) -> None:
    """Heatmaps of where the model looked, over each image: PNG, and a Secondary Capture beside DICOM input.

    For a fused model, also what each clinical value did to the probability (explain.json, overlay title)."""
    from medlens.classify.predict import expand_inputs
    from medlens.explain.clinical import describe_effects
    from medlens.explain.maps import EXPLAINERS
    from medlens.explain.stage import explain_files
    from medlens.kinds import open_bundle
    from medlens.tabular.dicom import clinical_source

    EXPLAINERS.get(method)  # an unknown method fails before any work
    loaded = open_bundle(bundle, needs="explain")
    table = clinical_source(clinical, loaded)
    report = explain_files(loaded, expand_inputs(list(files)), out, method, layer, fit_input, table)
    effects = ["clinical effect (vs unknown)"] if table is not None else []
    rows = [
        [
            Path(r["file"]).name,
            r.get("label", ""),
            *([describe_effects(r.get("clinical_effects", []), top=2)] if effects else []),
            ", ".join(Path(o).name for o in r["outputs"]),
            r["error"],
        ]
        for r in report["files"]
    ]
    print_table(["file", "label", *effects, "written", "error"], rows)
    typer.echo(f"report: {out / 'explain.json'}")
    exit_on_failed_rows(report["n_failed"], len(rows), verb="explained")


@user_errors
def calibrate(
    bundle: Bundle,
    data: Annotated[str, typer.Option("--data", help="MedMNIST name or label CSV; its validation split is used.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the calibrated bundle.")],
    refer: Annotated[
        float, typer.Option("--refer", help="Fraction of validation cases to refer (uncertainty operating point).")
    ] = 0.1,
    method: Annotated[
        str, typer.Option("--method", help="Uncertainty for referral: softmax, tta or mc-dropout.")
    ] = "softmax",
    size: Size = None,
    data_dir: DataDir = None,
) -> None:
    """Fit temperature scaling, a referral operating point and the out-of-distribution gate; write a bundle that uses them."""
    from medlens.classify.data import dataset_for_bundle
    from medlens.kinds import open_bundle
    from medlens.trust.calibrate import calibrate_bundle

    loaded = open_bundle(bundle, needs="calibrate")
    result = calibrate_bundle(loaded, dataset_for_bundle(loaded, data, size, data_dir), out, refer, method)
    c, r = result["calibration"], result["referral"]
    typer.echo(
        f"temperature {c['temperature']:.3f}: validation ECE {c['val_ece_before']:.4f} -> {c['val_ece_after']:.4f}"
    )
    typer.echo(
        f"referral: {r['method']} uncertainty >= {r['threshold']:.4g} refers {r['fraction']:.0%} of validation cases"
    )
    g = result["ood_gate"]
    typer.echo(f"out-of-distribution gate: {g['fitted_on']}; flags {g['val_flag_rate']:.1%} of validation images")
    typer.echo(f"calibrated bundle: {out}")


@user_errors
def audit(
    bundle: Bundle,
    data: Annotated[str, typer.Option("--data", help="MedMNIST name or label CSV (metadata columns give subgroups).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for audit.json, plots and model_card.md/.html.")],
    split: Annotated[str, typer.Option("--split")] = "test",
    ensemble: Annotated[
        list[str] | None,
        typer.Option("--ensemble", help="Other bundles of the same model (seeds) for deep-ensemble rows."),
    ] = None,
    groups: Annotated[
        str | None,
        typer.Option("--groups", help="Metadata columns to compare, comma-separated (default: all with 2-20 groups)."),
    ] = None,
    max_cases: Annotated[
        int | None, typer.Option("--max-cases", help="Audit a stratified subset of the split (quick look).")
    ] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for 95% CIs.")] = 1000,
    size: Size = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Everything a reviewer asks: performance, calibration, referral, robustness, explanations, subgroups, model card."""
    from medlens.classify.data import dataset_for_bundle
    from medlens.kinds import open_bundle
    from medlens.trust.audit import AuditConfig, audit_bundle

    loaded = open_bundle(bundle, needs="audit")
    members = [open_bundle(b, needs="audit") for b in ensemble or []]
    cfg = AuditConfig(
        split=split,
        max_cases=max_cases,
        seed=seed,
        n_bootstrap=bootstrap,
        group_columns=tuple(c.strip() for c in groups.split(",")) if groups else None,
    )
    result = audit_bundle(loaded, dataset_for_bundle(loaded, data, size, data_dir), out, cfg, members)
    perf, cal = result["performance"]["metrics"], result["calibration"]["ece"]
    typer.echo(
        f"{split}: AUC {perf.get('auc', float('nan')):.3f}, accuracy {perf.get('accuracy', float('nan')):.3f}; "
        f"ECE {cal[f'{split}_before']:.3f} -> {cal[f'{split}_after']:.3f} after temperature scaling"
    )
    typer.echo(f"model card: {out / 'model_card.md'} (and .html); numbers: {out / 'audit.json'}")


def register(app: typer.Typer) -> None:
    for command in (explain, calibrate, audit):
        app.command()(command)
