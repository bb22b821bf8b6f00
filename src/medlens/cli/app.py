"""The ``medlens`` Typer app: the global options and the command groups."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from medlens import __version__
from medlens.cli import catalog, enhance, export, federate, images, label, predict, serve, train, trust
from medlens.cli.common import _state
from medlens.phi import install_phi_filter

app = typer.Typer(
    help="medlens: deep learning for medical imaging on an ordinary CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)  # a traceback must never print values (keys, patient data)


def _print_version(value: bool) -> None:
    if value:  # eager: `medlens --version` needs no command
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", help="Show tracebacks and progress logs.")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    _state["verbose"] = verbose
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    install_phi_filter()  # dependencies' warnings quote header values (names included): they go through the PHI filter


for group in (train, predict, enhance, images, catalog, trust, export, serve, federate, label):
    group.register(app)
