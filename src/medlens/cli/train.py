"""``medlens train`` (classifiers, segmenters, survival models) and ``medlens plan`` (segmentation plans).

Commands import the library inside their function: it loads PyTorch, MONAI and
friends, and ``medlens --help`` must stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import ConfigOpt, DataDir, DeviceOpt, SeedOpt, SetOpt, overrides, user_errors
from medlens.cli.display import exit_on_problems, print_metrics
from medlens.errors import ConfigError

TASKS = ("classify", "segment", "detect", "survival")


@user_errors
def train(
    dataset: Annotated[
        str, typer.Argument(help="MedMNIST name (pneumoniamnist) or a label CSV for a folder of images.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder; the bundle goes to OUT/model.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    data_dir: DataDir = None,
    task: Annotated[
        str,
        typer.Option(
            "--task",
            help="classify; segment (DATASET: an MSD folder or image,label CSV); detect (DATASET: a VOC folder, a COCO .json or a file,label,xmin,ymin,xmax,ymax CSV); survival (DATASET: a folder with an .npz of images, times, events and a clinical CSV).",
        ),
    ] = "classify",
    plan: Annotated[
        Path | None, typer.Option("--plan", help="Segmentation: plan.json from `medlens plan` (default: plan now).")
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init", help="Start from an encoder folder (`medlens pretrain`) or 'imagenet' (efficientnet-lite0)."
        ),
    ] = None,
) -> None:
    """Train a classifier, a segmentation or a survival model; select on validation; write a self-describing bundle."""
    if task not in TASKS:
        raise ConfigError(f"--task {task!r}: choose {', '.join(TASKS)}")
    if task == "survival":
        _train_survival(dataset, out, config, overrides(set_, seed=seed, device=device))
    elif task == "segment":
        _train_segment(dataset, out, config, overrides(set_, seed=seed, device=device, init=init), plan)
    elif task == "detect":
        _train_detect(dataset, out, config, overrides(set_, seed=seed, device=device, init=init))
    else:
        _train_classifier(dataset, out, config, overrides(set_, seed=seed, device=device, init=init), init, data_dir)


def _train_classifier(
    dataset: str, out: Path, config: Path | None, given: list[str], init: str | None, data_dir: Path | None
) -> None:
    from medlens.classify.train import train_classifier
    from medlens.config import TrainConfig, load_config
    from medlens.models.init import encoder_settings

    settings = [f"dataset={dataset}", *encoder_settings(init), *given]  # --init ENC: ENC's network unless --set says
    cfg = load_config(TrainConfig, config, settings, section="train" if config else "")
    _report_bundle(train_classifier(cfg, out, data_dir=data_dir, show_progress=True), "validation")


def _train_segment(data: str, out: Path, config: Path | None, given: list[str], plan: Path | None) -> None:
    from medlens.config import load_config
    from medlens.segment.stage import train_stage
    from medlens.segment.train import SegTrainConfig

    cfg = load_config(SegTrainConfig, config, given, section="segment" if config else "")
    _report_bundle(train_stage(data, out, cfg, plan), "validation")


def _train_detect(data: str, out: Path, config: Path | None, given: list[str]) -> None:
    from medlens.config import load_config
    from medlens.detect.train import DetectConfig, train_detector

    cfg = load_config(DetectConfig, config, [f"dataset={data}", *given], section="detect" if config else "")
    folder = train_detector(cfg, out, show_progress=True)
    manifest = json.loads((folder / "bundle.json").read_text())
    validation = manifest["metrics"]["validation"]
    print_metrics(
        "validation",
        {"map_50": validation["map_50"], **{f"ap_50/{k}": v for k, v in validation["map_50_per_class"].items()}},
    )
    for problem in manifest["data"]["problems"][:10]:
        typer.echo(f"left out: {problem}")
    typer.echo(f"bundle written to {folder}")


def _train_survival(data: str, out: Path, config: Path | None, given: list[str]) -> None:
    from medlens.config import load_config
    from medlens.survival.train import SurvivalConfig, survival_summary, train_survival

    cfg = load_config(SurvivalConfig, config, given, section="survival" if config else "")
    folder = train_survival(data, cfg, out)
    summary = survival_summary(folder)
    for title, metrics in summary["tables"]:
        print_metrics(title, metrics)
    typer.echo(summary["kaplan_meier"])
    typer.echo(f"bundle written to {folder / 'model'}")


def _report_bundle(bundle: Path, split: str) -> None:
    from medlens.train.distributed import dist_info

    if not dist_info().is_main:
        return  # under torchrun, rank 0 reports
    metrics = dict(json.loads((bundle / "bundle.json").read_text())["metrics"][split])
    n = metrics.pop("n", None)
    print_metrics(split if n is None else f"{split} (n={n})", metrics)
    typer.echo(f"bundle written to {bundle}")


@user_errors
def plan(
    data: Annotated[Path, typer.Argument(help="MSD folder (imagesTr/, labelsTr/) or a CSV of image,label paths.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for fingerprint.json and plan.json.")],
    dims: Annotated[int, typer.Option("--dims", help="3 (volumes) or 2 (slice by slice).")] = 3,
    memory_mb: Annotated[
        int, typer.Option("--memory-mb", help="Training memory budget for patch and batch size.")
    ] = 2000,
    width: Annotated[
        int, typer.Option("--width", help="Filters at full resolution (8 suits a 2-core CPU; nnU-Net uses 32).")
    ] = 8,
) -> None:
    """Check a segmentation dataset and write its fingerprint and an editable training plan."""
    from medlens.segment.stage import plan_stage

    made, fp = plan_stage(data, out, dims=dims, memory_mb=memory_mb, width=width)
    typer.echo(
        f"{fp['usable']}/{fp['cases']} cases usable; labels {fp['label_names']}; median shape {fp['median_shape']} "
        f"at {fp['median_spacing_mm']} mm"
    )
    typer.echo(
        f"plan: {made.dims}D, patch {made.patch_size}, batch {made.batch_size}, {len(made.strides) - 1} downsamplings, "
        f"filters {made.filters}, normalisation {made.normalization}; written to {out / 'plan.json'}"
    )
    exit_on_problems([{"message": p} for p in fp["problems"]], "problem(s) in the dataset; fix them before training")


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(plan)
