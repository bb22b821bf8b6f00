"""``medlens serve`` and ``medlens token``: a thin shell over :mod:`medlens.serve`.

Commands import the library inside their function: it loads PyTorch, MONAI and
friends, and ``medlens --help`` must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import user_errors

token_app = typer.Typer(
    help="API tokens for `medlens serve` (only their hashes are stored).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@user_errors
def serve(
    models: Annotated[
        Path,
        typer.Option(
            "--models",
            help="Folder of model bundles (one sub-folder each), or shipped names and bundle folders separated by commas: cxr-pneumonia,hippocampus.",
        ),
    ],
    tokens: Annotated[Path, typer.Option("--tokens", help="Tokens file from `medlens token add`.")],
    storage: Annotated[
        Path, typer.Option("--storage", help="Where received studies, results and the SQLite database live.")
    ] = Path("medlens-data"),
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Database URL (default: SQLite in --storage), e.g. postgresql+pg8000://medlens@localhost/medlens.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Interface to listen on (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest accepted upload.")] = 512.0,
    orthanc: Annotated[
        str | None,
        typer.Option(
            "--orthanc",
            help="Orthanc URL to poll for stable studies and store results back into (needs its DICOMweb plugin).",
        ),
    ] = None,
    max_inflated_mb: Annotated[
        float, typer.Option("--max-inflated-mb", help="Largest size a deflated instance may inflate to.")
    ] = 64.0,
    max_pixel_mb: Annotated[
        float,
        typer.Option(
            "--max-pixel-mb",
            help="Largest pixel data one instance may describe (frames x rows x columns x samples x bits).",
        ),
    ] = 1024.0,
    job_timeout: Annotated[
        float,
        typer.Option(
            "--job-timeout", help="Seconds a job may run before its process is stopped (counts as a failed attempt)."
        ),
    ] = 300.0,
    api_docs: Annotated[
        bool,
        typer.Option(
            "--api-docs", help="Serve the OpenAPI description at /openapi.json (no docs page, nothing from a CDN)."
        ),
    ] = False,
) -> None:
    """Run the triage and second-reader service: STOW-RS in; worklist, DICOM SR, heatmap and FHIR out."""
    import uvicorn

    from medlens.serve.app import ServeConfig, create_app
    from medlens.serve.worker import WorkerOptions

    app = create_app(
        ServeConfig(
            models=models,
            storage=storage,
            tokens=tokens,
            db=db,
            max_upload_mb=max_upload_mb,
            orthanc_url=orthanc,
            max_inflated_mb=max_inflated_mb,
            max_pixel_mb=max_pixel_mb,
            worker=WorkerOptions(job_timeout_seconds=job_timeout),
            api_docs=api_docs,
        )
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


@token_app.command("add")
@user_errors
def token_add(
    name: Annotated[str, typer.Argument(help="User or system name (shown in the audit log).")],
    role: Annotated[str, typer.Option("--role", help="viewer, radiologist, admin or sender (upload only).")],
    tokens: Annotated[Path, typer.Option("--tokens", help="Tokens file (created if missing).")],
) -> None:
    """Add a user and print its new token (shown once; keep it secret)."""
    from medlens.serve.auth import add_token

    typer.echo(add_token(tokens, name, role))


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.add_typer(token_app, name="token")
