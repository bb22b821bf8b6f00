"""``medlens federate``: a thin shell over :func:`medlens.federated.stage.federate`.

Commands import the library inside their function: it loads PyTorch, MONAI and
friends, and ``medlens --help`` must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import DataDir, user_errors
from medlens.cli.display import print_table


@user_errors
def federate(
    out: Annotated[
        Path, typer.Option("--out", help="Output folder: split, message log, history, bundle, evaluation.")
    ] = Path("runs/federated"),
    dataset: Annotated[
        str, typer.Option("--dataset", help="MedMNIST 2D dataset split into hospitals.")
    ] = "pneumoniamnist",
    sites: Annotated[int, typer.Option("--sites", help="Number of simulated hospitals.")] = 5,
    alpha: Annotated[
        float, typer.Option("--alpha", help="Dirichlet label skew (smaller: each site sees fewer classes).")
    ] = 0.5,
    split: Annotated[
        Path | None, typer.Option("--split", help="Reuse a saved site split (sites.json) instead of making one.")
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds")] = 10,
    local_epochs: Annotated[int, typer.Option("--local-epochs", help="Epochs each site trains per round.")] = 1,
    strategy: Annotated[str, typer.Option("--strategy", help="fedavg or fedprox.")] = "fedavg",
    mu: Annotated[float, typer.Option("--mu", help="FedProx proximal weight.")] = 0.01,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="Registered network (with --dp-epsilon: one without in-place residuals, e.g. cnn, densenet121).",
        ),
    ] = "cnn",
    dp_epsilon: Annotated[
        float | None,
        typer.Option("--dp-epsilon", help="Train with DP-SGD (Opacus) within this epsilon per site for the whole run."),
    ] = None,
    dp_delta: Annotated[float, typer.Option("--dp-delta")] = 1e-5,
    min_sites: Annotated[
        int, typer.Option("--min-sites", help="A round completes when at least this many sites answered.")
    ] = 2,
    adapt: Annotated[
        bool,
        typer.Option(
            "--adapt", help="Also fine-tune and test-time-adapt the global model at each site and score both."
        ),
    ] = False,
    deployment: Annotated[
        bool,
        typer.Option(
            "--deployment",
            help="Run as separate processes on 127.0.0.1 (Flower SuperLink + one SuperNode per site + flwr run) instead of the in-process simulation.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Train one model across simulated hospitals with Flower (only weights and counts travel) and score it at each site."""
    from medlens.federated.flower import FederateConfig
    from medlens.federated.sites import SiteSplitConfig
    from medlens.federated.stage import federate as run
    from medlens.federated.stage import federation_summary

    cfg = FederateConfig(
        dataset=dataset,
        model=model,
        rounds=rounds,
        local_epochs=local_epochs,
        strategy=strategy,
        proximal_mu=mu,
        dp_epsilon=dp_epsilon,
        dp_delta=dp_delta,
        min_sites=min_sites,
        seed=seed,
    )
    shifts = SiteSplitConfig().shifts if sites == 5 else ("none",) * sites
    split_cfg = SiteSplitConfig(n_sites=sites, alpha=alpha, seed=seed, shifts=shifts)
    result = run(cfg, out, split_cfg, split, str(data_dir) if data_dir else None, adapt=adapt, deployment=deployment)
    summary = federation_summary(result, out, adapt)
    for columns, rows in summary["tables"]:
        print_table(columns, rows)
    for line in summary["lines"]:
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command()(federate)
