"""What every ``medlens`` command shares: the user-error wrapper, the verbose flag, common options.

Commands import the library inside their function: the library imports
PyTorch, MONAI and friends, and ``medlens --help`` must stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from medlens.cli.display import make_console
from medlens.errors import MedlensError

F = TypeVar("F", bound=Callable[..., Any])
_state = {"verbose": False}

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Local data folder (default: $MEDLENS_DATA_DIR).")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (one object per row) instead of a table.")]
BundleArg = Annotated[str, typer.Argument(help="Bundle folder or shipped model name (see `medlens models`).")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML file with the settings (see the settings reference).")
]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a setting: --set epochs=5 (repeatable).")]
SeedOpt = Annotated[int | None, typer.Option("--seed")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")]


def overrides(set_: list[str] | None, **flags: Any) -> list[str]:
    """``--set`` values, then each flag that was given (``seed``, ``device``, ``init``...) as ``key=value``."""
    return [*(set_ or []), *(f"{k}={v}" for k, v in flags.items() if v is not None)]


def user_errors(func: F) -> F:
    """A MedlensError becomes one red line and exit code 1; --verbose shows the traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MedlensError as exc:
            if _state["verbose"]:
                raise
            make_console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
