"""``medlens convert``, ``medlens info`` and ``medlens deid``: reading, summarising and de-identifying DICOM.

Commands import the library inside their function: it loads PyTorch, MONAI and
friends, and ``medlens --help`` must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import JsonFlag, user_errors
from medlens.cli.display import cell, exit_on_problems, print_table
from medlens.errors import ConfigError, DeidError


@user_errors
def convert(
    source: Annotated[Path, typer.Argument(help="DICOM file, series folder or study tree.")],
    out: Annotated[Path, typer.Argument(help="Folder for one .nii.gz + .json sidecar per volume, and convert.json.")],
    equalize: Annotated[
        bool,
        typer.Option(
            "--equalize/--no-equalize",
            help="Resample unevenly spaced slices (as dcm2niix's _Eq) or list them as problems.",
        ),
    ] = True,
) -> None:
    """DICOM to NIfTI: series grouped and split, slices sorted in space, sidecars without patient identifiers."""
    from medlens.io.convert import convert_dicom

    report = convert_dicom(source, out, equalize=equalize)
    rows = [
        [
            v["file"],
            "x".join(map(str, v["shape"])),
            " x ".join(f"{s:.3g}" for s in v["spacing_mm"]),
            v["orientation"],
            "; ".join(v["warnings"]),
        ]
        for v in report["volumes"]
    ]
    print_table(["file", "shape", "spacing (mm)", "axes", "warnings"], rows)
    for note in report["notes"]:
        typer.echo(f"note: {note}")
    typer.echo(f"{len(report['volumes'])} volume(s) written to {out}; report: {out / 'convert.json'}")
    exit_on_problems(report["problems"], "file(s) could not be converted")


@user_errors
def info(
    path: Annotated[Path, typer.Argument(help="DICOM file/folder, NIfTI, NRRD or MHA.")], as_json: JsonFlag = False
) -> None:
    """Summarise a study from its headers: series, modality, sizes, spacing, orientation, transfer syntax (no patient identifiers)."""
    from medlens.io.info import summarize

    summary = summarize(path)
    columns = {
        "name": "series",
        "modality": "mod",
        "slices": "slices",
        "rows_cols": "matrix",
        "pixel_spacing_mm": "pixel mm",
        "slice_step_mm": "step mm",
        "orientation": "plane",
        "duplicate_positions": "dups",
        "evenly_spaced": "even",
        "transfer_syntax": "syntax",
    }
    rows = [[cell(s.get(c, s.get("shape") if c == "rows_cols" else "")) for c in columns] for s in summary["series"]]
    print_table(list(columns.values()), rows, as_json)
    if summary.get("skipped_not_dicom") and not as_json:
        typer.echo(f"{summary['skipped_not_dicom']} non-DICOM file(s) skipped")
    exit_on_problems(summary["problems"], "file(s) could not be read")


@user_errors
def deid(
    source: Annotated[Path, typer.Argument(help="DICOM file or folder to de-identify, or to check with --verify.")],
    out: Annotated[Path | None, typer.Argument(help="Output folder (not with --verify).")] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Only check SOURCE for identifiers left; writes nothing.")
    ] = False,
    shift_dates: Annotated[
        int | None, typer.Option("--shift-dates", help="Shift every date by DAYS instead of removing dates.")
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option("--key-file", help="Secret key: the same key gives the same pseudonyms and UIDs in later runs."),
    ] = None,
) -> None:
    """De-identify DICOM (PS3.15 Annex E basic profile), or --verify that no identifiers are left."""
    from medlens.io.deid import DeidOptions, deidentify_tree, read_key_file, verify_tree

    if verify:
        result = verify_tree(source)
        if not result["clean"]:
            print_table(
                ["file", "attribute", "problem"],
                [[f["file"], f["attribute"], f["problem"]] for f in result["findings"][:50]],
            )
            raise DeidError(
                f"{len(result['findings'])} identifier finding(s) in {result['files_checked']} file(s) under {source}; de-identify them with `medlens deid`"
            )
        typer.echo(f"clean: {result['files_checked']} file(s) checked, no identifiers of the basic profile found")
        return
    if out is None:
        raise ConfigError("deid needs an output folder: medlens deid IN OUT (or --verify IN to check a folder)")
    key = read_key_file(key_file) if key_file else None
    report = deidentify_tree(source, out, DeidOptions(key=key, shift_days=shift_dates))
    print_table(
        ["attribute", "action", "files"], [[c["attribute"], c["action"], str(c["count"])] for c in report["changes"]]
    )
    for flagged in report["burned_in_check"]:
        typer.echo(f"check pixels: {flagged['file']}: {flagged['reason']}")
    typer.echo(f"{report['files_written']} file(s) written to {out}; report: {out / 'deid_report.json'}")
    exit_on_problems(report["problems"], "file(s) could not be de-identified")


def register(app: typer.Typer) -> None:
    for command in (convert, info, deid):
        app.command()(command)
