"""What every ``medlens`` command shares: the user-error wrapper, the verbose flag, common options."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from medlens.display import make_console

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
            make_console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
