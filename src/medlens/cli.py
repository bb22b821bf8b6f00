"""The ``medlens`` command: one short function per stage, heavy imports inside the commands."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from medlens import __version__

app = typer.Typer(help="medlens: deep learning for medical imaging on an ordinary CPU.", no_args_is_help=True, add_completion=False)
F = TypeVar("F", bound=Callable[..., Any])
_state = {"verbose": False}

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Local data folder (default: $MEDLENS_DATA_DIR).")]


def user_errors(func: F) -> F:
    """A MedlensError becomes one red line and exit code 1; --verbose shows the traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from medlens.errors import MedlensError

        try:
            return func(*args, **kwargs)
        except MedlensError as exc:
            if _state["verbose"]:
                raise
            _console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", help="Show tracebacks and progress logs.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    _state["verbose"] = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


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
) -> None:
    """Train a classifier; select on validation; write a self-describing bundle."""
    from medlens.config import TrainConfig, load_config
    from medlens.tasks.classify import train_classifier

    overrides = [f"dataset={dataset}", *(set_ or [])]
    overrides += [f"seed={seed}"] if seed is not None else []
    overrides += [f"device={device}"] if device is not None else []
    cfg = load_config(TrainConfig, config, overrides, section="train" if config else "")
    bundle = train_classifier(cfg, out, data_dir=data_dir, show_progress=True)
    manifest = json.loads((bundle / "bundle.json").read_text())
    _print_metrics("validation", manifest["metrics"]["validation"])
    typer.echo(f"bundle written to {bundle}")


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
    """Score a bundle on a split: metrics with bootstrap CIs, ROC/PR/confusion/calibration plots."""
    from medlens.evaluate.stage import evaluate_bundle
    from medlens.models.bundle import load_bundle
    from medlens.tasks.data import load_dataset

    loaded = load_bundle(bundle)
    cfg = loaded.manifest.get("config", {})
    dataset = load_dataset(data, size or cfg.get("size", 28), data_dir, cfg.get("image_dir"), _tuple(cfg.get("image_size")), loaded.task == "multilabel", cfg.get("seed", 0))
    result = evaluate_bundle(loaded, dataset, out, split=split, n_bootstrap=bootstrap, seed=seed)
    _print_metrics(f"{split} (n={result['n']})", result["metrics"], result["confidence_intervals"])
    typer.echo(f"report: {result['report']}")


def _tuple(value: Any) -> tuple[int, ...] | None:
    return tuple(value) if value else None


@app.command()
@user_errors
def predict(
    bundle: Annotated[str, typer.Argument(help="Bundle folder or shipped model name (see `medlens models`).")],
    files: Annotated[list[Path], typer.Argument(help="Image files or folders (PNG/JPEG, DICOM, NIfTI).")],
    out: Annotated[Path | None, typer.Option("--out", help="Write rows to .csv, .json or .jsonl.")] = None,
    fit_input: Annotated[bool, typer.Option("--fit-input", help="Resize/rescale inputs that do not match the model (noted per row).")] = False,
) -> None:
    """Probabilities and a label per file, using the bundle's validation-chosen threshold."""
    from medlens.models.bundle import load_bundle
    from medlens.tasks.predict import expand_inputs, predict_files, write_predictions

    loaded = load_bundle(bundle)
    rows = predict_files(loaded, expand_inputs(list(files)), adapt=fit_input)
    if out is not None:
        write_predictions(rows, loaded.label_names, out)
    _print_predictions(rows, loaded.label_names)
    failed = [r for r in rows if r.error]
    if out is not None:
        typer.echo(f"{len(rows)} rows written to {out}")
    if failed:
        _console(stderr=True).print(f"[red]error:[/red] {len(failed)} of {len(rows)} files could not be predicted (see the error column)", highlight=False)
        raise typer.Exit(1)


@app.command()
def models() -> None:
    """List the shipped model bundles."""
    from rich.table import Table

    from medlens.models.bundle import pretrained_names, read_manifest

    table = Table("name", "task", "labels", "input", "test AUC", "test accuracy", "data")
    for name in pretrained_names():
        _, m = read_manifest(name)
        test = m.get("metrics", {}).get("test", {})
        shape = "x".join(map(str, m["expected_input"]["spatial_shape"]))
        table.add_row(name, m["task"], ", ".join(m["label_names"]), f"{m['expected_input']['modality']} {shape}",
                      f"{test.get('auc', float('nan')):.3f}", f"{test.get('accuracy', float('nan')):.3f}",
                      f"{m['data']['dataset']} ({m['data']['license']})")
    _console().print(table)


@app.command()
def datasets() -> None:
    """List the MedMNIST catalog: task, sizes, licence."""
    from rich.table import Table

    from medlens.datasets import dataset_names, get_dataset_info

    table = Table("name", "task", "dims", "sizes", "train/val/test", "licence")
    for name in dataset_names():
        info = get_dataset_info(name)
        n = info.n_samples
        table.add_row(name, info.task, f"{info.dims}D", ", ".join(map(str, sorted(info.files))), f"{n['train']}/{n['val']}/{n['test']}", info.license)
    _console().print(table)


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the report and predictions.")] = Path("medlens-demo"),
    data_dir: DataDir = None,
) -> None:
    """The main job: the shipped pneumonia model evaluated on the real PneumoniaMNIST test set, plus predictions."""
    from medlens.demo import run_demo

    console = _console()
    result = run_demo(out, data_dir)
    m = result.model
    console.print(f"model [bold]{m['name']}[/bold]: {m['network']['name']} on {m['data']['dataset']} ({m['data']['license']}), labels {', '.join(m['label_names'])}")
    if result.missing_data:
        console.print(f"[yellow]no test data here:[/yellow] {result.missing_data}", highlight=False, soft_wrap=True)
        stored = m.get("metrics", {}).get("test")
        if stored:
            _print_metrics("test (stored in the bundle)", stored)
        return
    _print_metrics("test split (PneumoniaMNIST, n=624)", result.metrics, result.intervals)
    _print_predictions(result.predictions, m["label_names"], truths=result.sample_labels)
    console.print(f"report: [bold]{result.report}[/bold]; predictions: {out / 'predictions.csv'}")


def _print_metrics(title: str, metrics: dict[str, float], intervals: dict[str, Any] | None = None) -> None:
    from rich.table import Table

    table = Table("metric", "value", "95% CI", title=title)
    for key, value in metrics.items():
        ci = (intervals or {}).get(key)
        table.add_row(key, f"{value:.4f}", f"{ci['low']:.3f} - {ci['high']:.3f}" if ci and key != "threshold" else "")
    _console().print(table)


def _print_predictions(rows: list[Any], label_names: list[str], truths: list[str] | None = None) -> None:
    from rich.table import Table

    columns = ["file", *label_names, "label"] + (["truth"] if truths else []) + ["notes / error"]
    table = Table(*columns)
    for i, r in enumerate(rows):
        probs = [f"{r.probabilities[n]:.3f}" if r.probabilities else "" for n in label_names]
        extra = [truths[i]] if truths else []
        table.add_row(Path(r.file).name, *probs, r.label, *extra, r.error or "; ".join(r.notes))
    _console().print(table)


if __name__ == "__main__":
    sys.exit(app())
