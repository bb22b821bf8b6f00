"""``medlens pretrain`` and ``medlens select``: learning from few labels.

Commands import the library inside their function: it loads PyTorch, MONAI and
friends, and ``medlens --help`` must stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import DataDir, overrides, user_errors
from medlens.cli.display import print_table
from medlens.errors import ConfigError


@user_errors
def pretrain(
    dataset: Annotated[
        str,
        typer.Argument(
            help="MedMNIST name or label CSV (classify); MSD folder or image,label CSV (segment). Its training images are used, never its labels."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Encoder folder (encoder.pt, encoder.json) for `medlens train --init`.")
    ],
    method: Annotated[
        str, typer.Option("--method", help="simclr (contrastive) or masked (masked-image reconstruction).")
    ] = "simclr",
    unlabelled: Annotated[
        Path | None,
        typer.Option("--unlabelled", help="Folder of extra unlabelled images (volumes for --task segment)."),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting: --set model=resnet18 --set epochs=30.")
    ] = None,
    task: Annotated[
        str,
        typer.Option("--task", help="classify (a classifier's encoder) or segment (the U-Net of a segmentation plan)."),
    ] = "classify",
    plan: Annotated[
        Path | None,
        typer.Option("--plan", help="Segmentation: plan.json from `medlens plan` (default: plan now, in OUT)."),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Pretrain an encoder on images without labels (self-supervised); train from it with --init."""
    if task not in ("classify", "segment"):
        raise ConfigError(f"--task {task!r}: choose classify or segment")
    given = overrides(set_, unlabelled=unlabelled)
    folder = (_pretrain_segment if task == "segment" else _pretrain_classify)(
        dataset, out, [f"method={method}", *given], plan, data_dir
    )
    meta = json.loads((folder / "encoder.json").read_text())
    data = meta["data"]
    count = (
        f"{data['n_images']} unlabelled images"
        if "n_images" in data
        else f"patches of {data['n_volumes']} unlabelled volumes"
    )
    typer.echo(f"{meta['method']} on {count}, {meta['seconds']} s")
    print_table(
        ["epoch", "loss", meta["score_name"]],
        [[str(h["epoch"] + 1), f"{h['loss']:.4f}", f"{h['score']:.4f}"] for h in meta["history"]],
    )
    typer.echo(f"encoder written to {folder}; use it with: {meta['use']}")


def _pretrain_segment(dataset: str, out: Path, given: list[str], plan: Path | None, data_dir: Path | None) -> Path:
    from medlens.config import load_config
    from medlens.segment.plan import load_plan
    from medlens.segment.pretrain import SegPretrainConfig, pretrain_segmenter
    from medlens.segment.stage import plan_stage

    cfg = load_config(SegPretrainConfig, None, given, section="pretrain")
    return pretrain_segmenter(dataset, load_plan(plan) if plan else plan_stage(dataset, out)[0], cfg, out)


def _pretrain_classify(dataset: str, out: Path, given: list[str], plan: Path | None, data_dir: Path | None) -> Path:
    from medlens.config import load_config
    from medlens.pretrain.stage import PretrainConfig, pretrain

    cfg = load_config(PretrainConfig, None, [f"dataset={dataset}", *given], section="pretrain")
    return pretrain(cfg, out, data_dir=data_dir)


@user_errors
def select(
    bundle: Annotated[str, typer.Argument(help="Bundle folder or shipped model name.")],
    pool: Annotated[str, typer.Argument(help="Folder of unlabelled images, or a MedMNIST name (its train split).")],
    budget: Annotated[int, typer.Option("--budget", help="How many cases the expert can label now.")],
    out: Annotated[
        Path, typer.Option("--out", help="CSV of cases to label, in order (a .json summary beside it).")
    ] = Path("selection.csv"),
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            help="uncertainty, diversity, hybrid or random (segmentation: uncertainty or random; hybrid means uncertainty).",
        ),
    ] = "hybrid",
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="Uncertainty method (tta, softmax, mc-dropout); default: the bundle's referral method, else tta.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Rank unlabelled cases for an expert to label next (active learning)."""
    from medlens.classify.select import read_pool, select_cases, write_selection
    from medlens.cli.display import print_table
    from medlens.kinds import open_bundle
    from medlens.segment.uncertainty import select_volumes

    loaded = open_bundle(bundle, needs="select")
    if loaded.kind == "segmenter":  # a folder of volumes, ranked by voxel uncertainty
        names, selection, skipped = select_volumes(
            loaded, Path(pool), budget, "uncertainty" if strategy == "hybrid" else strategy, seed
        )
        strategy = "uncertainty" if strategy == "hybrid" else strategy
    else:
        inputs, names, skipped = read_pool(loaded, pool, str(data_dir) if data_dir else None)
        selection = select_cases(loaded, inputs, budget, strategy, method, seed)
    settings = {"bundle": str(loaded.path), "pool": pool, "strategy": strategy, "budget": budget, "seed": seed}
    write_selection(out, names, selection, settings, skipped)
    rows = [[str(r), names[i], f"{selection.uncertainty[i]:.3f}"] for r, i in enumerate(selection.index[:10], start=1)]
    typer.echo(f"label these first ({strategy}; {len(names)} in the pool):")
    print_table(["rank", "case", "uncertainty"], rows)
    for item in skipped[:5]:
        typer.echo(f"skipped {item['file']}: {item['error']}", err=True)
    typer.echo(
        f"{len(selection.index)} cases written to {out}" + (f"; {len(skipped)} files skipped" if skipped else "")
    )


def register(app: typer.Typer) -> None:
    app.command()(pretrain)
    app.command()(select)
