"""``medlens models``, ``medlens datasets`` and ``medlens demo``: what ships with medlens, and the main job.

Commands import the library inside their function: it loads PyTorch, MONAI and
friends, and ``medlens --help`` must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import DataDir, JsonFlag, user_errors
from medlens.cli.display import make_console, print_metrics, print_predictions, print_table


def models(as_json: JsonFlag = False) -> None:
    """List the shipped model bundles: what each does, on what input, how well, and under which licence."""
    from medlens.bundle.manifest import pretrained_names
    from medlens.kinds import describe

    columns = {
        "name": "name",
        "task": "task",
        "labels": "labels",
        "input": "input",
        "score": "test score",
        "accuracy": "test accuracy",
        "data": "data (licence)",
    }
    rows = [[d[k] for k in columns] for d in map(describe, pretrained_names())]
    print_table(list(columns.values()), rows, as_json)


def datasets(as_json: JsonFlag = False) -> None:
    """List the MedMNIST catalog: task, sizes, licence."""
    from medlens.datasets import dataset_names, get_dataset_info

    rows = []
    for name in dataset_names():
        info = get_dataset_info(name)
        n = info.n_samples
        rows.append(
            [
                name,
                info.task,
                f"{info.dims}D",
                ", ".join(map(str, sorted(info.files))),
                f"{n['train']}/{n['val']}/{n['test']}",
                info.license,
            ]
        )
    print_table(["name", "task", "dims", "sizes", "train/val/test", "licence"], rows, as_json)


@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the report and predictions.")] = Path("medlens-demo"),
    data_dir: DataDir = None,
) -> None:
    """The main job: the shipped 28-px pneumonia model evaluated on the real PneumoniaMNIST test set, plus predictions."""
    from medlens.demo import run_demo

    console = make_console()
    result = run_demo(out, data_dir)
    m = result.model
    console.print(
        f"model [bold]{m['name']}[/bold]: {m['network']['name']} on {m['data']['dataset']} ({m['data']['license']}), labels {', '.join(m['label_names'])}"
    )
    if result.missing_data:
        console.print(f"[yellow]no test data here:[/yellow] {result.missing_data}", highlight=False, soft_wrap=True)
        stored = m.get("metrics", {}).get("test")
        if stored:
            print_metrics("test (stored in the bundle)", stored)
        return
    print_metrics("test split (PneumoniaMNIST, n=624)", result.metrics, result.intervals)
    print_predictions(result.predictions, m["label_names"], truths=result.sample_labels)
    console.print(f"report: [bold]{result.report}[/bold]; predictions: {out / 'predictions.csv'}")


def register(app: typer.Typer) -> None:
    for command in (models, datasets, demo):
        app.command()(command)
