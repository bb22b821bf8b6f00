"""Terminal output for the CLI: tables, metric tables, and the one-line problem list of batch commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def make_console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


def cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " x ".join(str(v) for v in value)
    return "" if value is None else str(value)


def print_table(columns: list[str], rows: list[list[str]], as_json: bool = False) -> None:
    """A table whose first column (the name a user types next) never wraps; ``as_json``: a JSON list of objects."""
    from rich.table import Table

    if as_json:
        typer.echo(json.dumps([dict(zip(columns, row)) for row in rows], indent=1))
        return
    table = Table()
    for i, column in enumerate(columns):
        table.add_column(column, no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    make_console().print(table)


def exit_on_problems(problems: list[dict[str, str]], what: str) -> None:
    """Batch commands finish the good files, then list the bad ones and exit 1."""
    if not problems:
        return
    err = make_console(stderr=True)
    for p in problems:
        err.print(f"[red]problem:[/red] {p['message']}", highlight=False, soft_wrap=True)
    err.print(f"[red]error:[/red] {len(problems)} {what}; the rest was written", highlight=False)
    raise typer.Exit(1)


def print_metrics(title: str, metrics: dict[str, float], intervals: dict[str, Any] | None = None) -> None:
    from rich.table import Table

    table = Table("metric", "value", "95% CI", title=title)
    for key, value in metrics.items():
        ci = (intervals or {}).get(key)
        table.add_row(key, f"{value:.4f}", f"{ci['low']:.3f} - {ci['high']:.3f}" if ci and key != "threshold" else "")
    make_console().print(table)


def print_predictions(rows: list[Any], label_names: list[str], truths: list[str] | None = None) -> None:
    from rich.table import Table

    columns = ["file", *label_names, "label"] + (["truth"] if truths else []) + ["notes / error"]
    table = Table(*columns)
    for i, r in enumerate(rows):
        probs = [f"{r.probabilities[n]:.3f}" if r.probabilities else "" for n in label_names]
        extra = [truths[i]] if truths else []
        table.add_row(Path(r.file).name, *probs, r.label, *extra, r.error or "; ".join(r.notes))
    make_console().print(table)


def exit_on_failed_rows(failed: int, total: int, what: str = "files", verb: str = "predicted") -> None:
    """Rows with an error were reported in their row; say how many and exit 1 (the others were done)."""
    if failed:
        make_console(stderr=True).print(
            f"[red]error:[/red] {failed} of {total} {what} could not be {verb} (see the error column)", highlight=False
        )
        raise typer.Exit(1)
