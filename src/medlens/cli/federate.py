"""``medlens federate``: a thin shell over :func:`medlens.federated.stage.federate`.

Commands import the library inside their function: it loads PyTorch, MONAI and
friends, and ``medlens --help`` must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import DataDir, user_errors


@user_errors
def federate(
    out: Annotated[Path, typer.Option("--out", help="Output folder: split, message log, history, bundle, evaluation.")] = Path("runs/federated"),
    dataset: Annotated[str, typer.Option("--dataset", help="MedMNIST 2D dataset split into hospitals.")] = "pneumoniamnist",
    sites: Annotated[int, typer.Option("--sites", help="Number of simulated hospitals.")] = 5,
    alpha: Annotated[float, typer.Option("--alpha", help="Dirichlet label skew (smaller: each site sees fewer classes).")] = 0.5,
    split: Annotated[Path | None, typer.Option("--split", help="Reuse a saved site split (sites.json) instead of making one.")] = None,
    rounds: Annotated[int, typer.Option("--rounds")] = 10,
    local_epochs: Annotated[int, typer.Option("--local-epochs", help="Epochs each site trains per round.")] = 1,
    strategy: Annotated[str, typer.Option("--strategy", help="fedavg or fedprox.")] = "fedavg",
    mu: Annotated[float, typer.Option("--mu", help="FedProx proximal weight.")] = 0.01,
    model: Annotated[str, typer.Option("--model", help="Registered network (with --dp-epsilon: one without in-place residuals, e.g. cnn, densenet121).")] = "cnn",
    dp_epsilon: Annotated[float | None, typer.Option("--dp-epsilon", help="Train with DP-SGD (Opacus) within this epsilon per site for the whole run.")] = None,
    dp_delta: Annotated[float, typer.Option("--dp-delta")] = 1e-5,
    min_sites: Annotated[int, typer.Option("--min-sites", help="A round completes when at least this many sites answered.")] = 2,
    adapt: Annotated[bool, typer.Option("--adapt", help="Also fine-tune and test-time-adapt the global model at each site and score both.")] = False,
    deployment: Annotated[bool, typer.Option("--deployment", help="Run as separate processes on 127.0.0.1 (Flower SuperLink + one SuperNode per site + flwr run) instead of the in-process simulation.")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Train one model across simulated hospitals with Flower (only weights and counts travel) and score it at each site."""
    from medlens.cli.display import cell, print_table
    from medlens.federated.flower import FederateConfig
    from medlens.federated.sites import SiteSplitConfig
    from medlens.federated.stage import federate as run

    cfg = FederateConfig(dataset=dataset, model=model, rounds=rounds, local_epochs=local_epochs, strategy=strategy,
                         proximal_mu=mu, dp_epsilon=dp_epsilon, dp_delta=dp_delta, min_sites=min_sites, seed=seed)
    split_cfg = SiteSplitConfig(n_sites=sites, alpha=alpha, seed=seed,
                                shifts=SiteSplitConfig().shifts if sites == 5 else ("none",) * sites)
    result = run(cfg, out, split_cfg, split, str(data_dir) if data_dir else None, adapt=adapt, deployment=deployment)
    history = result["config"]["history"]
    print_table(["round", "train loss", "val AUC (pooled)", "sites", "epsilon"],
                [[str(h["round"]), f"{h['train_loss']:.3f}", f"{h['val_auc']:.4f}", str(h["sites_trained"]),
                  cell(None if "epsilon" not in h else round(h["epsilon"], 2))] for h in history])
    columns = ["site", "shift", "train images", "test AUC (its scanner)"] + (["fine-tuned", "test-time adapted"] if adapt else [])
    print_table(columns, [[str(s["site"]), cell(s["shift"]), str(s["n_train"]), _auc(s["test_auc"])]
                          + ([_auc(s.get("finetuned_test_auc")), _auc(s.get("tta_test_auc"))] if adapt else []) for s in result["sites"]])
    ci = result["test_auc_ci"] or {}
    privacy = result["config"]["privacy"]
    typer.echo(f"global model (round {result['config']['selected_round']}, chosen on validation): test AUC {result['test']['auc']:.4f}"
               f" (95% CI {ci.get('low', float('nan')):.4f}-{ci.get('high', float('nan')):.4f}), accuracy {result['test']['accuracy']:.4f}")
    if privacy:
        typer.echo(f"privacy: epsilon {privacy['epsilon_spent']:.2f} spent of {privacy['epsilon_budget']} at delta {privacy['delta']}"
                   " per site (DP-SGD, RDP accountant)")
    typer.echo(f"bundle: {result['bundle']}   report: {out / 'federation.json'}   messages sent: {out / 'messages.jsonl'}")


def _auc(value: float | None) -> str:
    return "n/a (one class)" if value is None else f"{value:.4f}"


def register(app: typer.Typer) -> None:
    app.command()(federate)
