"""Federated learning on five simulated hospitals of PneumoniaMNIST: does FedAvg match training on pooled data?

Five sites cut from PneumoniaMNIST's train and validation splits (Dirichlet label
skew alpha 0.5, quantity skew 2.0, one acquisition shift per site: none,
gaussian noise, contrast, gamma, blur, severity 2; saved as
``results/federated_sites.json``). Every model is the same MONAI ``Classifier``
("cnn"), trained for the same number of passes over each site's data (ROUNDS
rounds x 1 local epoch) with AdamW 1e-3, batch 32, and chosen on validation:

- centralised: all five sites' (shifted) images pooled in one place, best epoch on the pooled validation AUC;
- FedAvg, FedProx (mu 0.01): ``medlens federate`` (Flower simulation), best round on the pooled validation histograms;
- FedAvg with DP-SGD at epsilon 1, 3, 8 (delta 1e-5, clipping 1.0; GroupNorm net; Opacus RDP accountant);
- each site alone: the site's own images, best epoch on its own validation AUC.

All are scored on PneumoniaMNIST's whole test split (624 images) as acquired
without shift ("test AUC") and through each site's shift ("site test AUC"). The
FedAvg model is also fine-tuned and test-time adapted (Tent) at each site.
Writes ``benchmarks/results/federated.json``.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/federated.py [--rounds 10] [--runs central fedavg ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medlens.datasets import load_medmnist
from medlens.federated.adapt import site_auc
from medlens.federated.flower import FederateConfig, build_model
from medlens.federated.local import SiteData, load_site, site_images, train_locally
from medlens.federated.sites import SiteSplitConfig, load_site_split, split_sites
from medlens.federated.stage import federate, site_report

RESULTS = Path(__file__).parent / "results"
RUNS = ("central", "fedavg", "fedprox", "dp1", "dp3", "dp8", "local")


def clean_test_metrics(model: torch.nn.Module, data, threshold: float = 0.5) -> dict[str, float]:
    from medlens.models.probs import predict_proba

    probs = predict_proba(model, clean_test_images(data), "binary")[:, 1]
    y = data.splits["test"].labels
    from sklearn.metrics import roc_auc_score

    return {"auc": float(roc_auc_score(y, probs)), "accuracy": float(((probs >= threshold) == y).mean())}


def clean_test_images(data) -> np.ndarray:
    from medlens.classify.train import make_preprocessing
    from medlens.config import TrainConfig
    from medlens.preprocess import normalize_intensity

    return normalize_intensity(
        data.splits["test"].images.astype(np.float32), make_preprocessing(TrainConfig(), data)
    ).astype(np.float32)


def youden(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_curve

    from medlens.models.probs import predict_proba

    fpr, tpr, thresholds = roc_curve(y, predict_proba(model, x, "binary")[:, 1])
    return float(np.clip(thresholds[int(np.argmax(tpr - fpr))], 0, 1))


def train_selected(cfg: FederateConfig, data, site: SiteData, epochs: int) -> tuple[torch.nn.Module, int]:
    """Plain training on one site (or the pooled sites), the epoch with the best validation AUC kept."""
    model = build_model(cfg, data)
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    for epoch in range(1, epochs + 1):
        train_locally(model, site, 1, cfg.lr, cfg.batch_size, seed=cfg.seed + epoch)
        auc = site_auc(model, site.x_val, site.y_val)
        if auc is None:  # one-class validation: nothing to choose on, keep the latest
            best = (best[0], epoch, copy.deepcopy(model.state_dict()))
        elif auc > best[0]:
            best = (auc, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    return model, best[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    args = parser.parse_args()
    data_dir = os.environ.get("MEDLENS_DATA_DIR")
    torch.set_num_threads(2)
    data = load_medmnist("pneumoniamnist", 28, data_dir)
    split_path = RESULTS / "federated_sites.json"
    if not split_path.exists():
        split_sites(data.splits["train"].labels, data.splits["val"].labels, SiteSplitConfig()).save(split_path)
    split = load_site_split(split_path)
    sites = [load_site(data, split, k) for k in range(split.config.n_sites)]
    out_path = RESULTS / "federated.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.update(
        {
            "data": "PneumoniaMNIST 28 px (train 4708 / val 524 / test 624), 5 sites: " + json.dumps(split.summary),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only",
            "rounds": args.rounds,
            "model": "MONAI Classifier (cnn), AdamW 1e-3, batch 32, 1 local epoch per round",
        }
    )
    runs = results.setdefault("runs", {})
    base = FederateConfig(rounds=args.rounds)
    for name in args.runs:
        started = time.perf_counter()
        if name == "central":
            pooled = SiteData(
                -1, *(np.concatenate([getattr(s, f) for s in sites]) for f in ("x_train", "y_train", "x_val", "y_val"))
            )
            model, epoch = train_selected(base, data, pooled, args.rounds)
            row = {
                "selected_epoch": epoch,
                "test": clean_test_metrics(model, data, youden(model, pooled.x_val, pooled.y_val)),
                "sites": site_report(model, data, split),
            }
        elif name == "local":
            row = {"sites": []}
            for site in sites:
                model, epoch = train_selected(base, data, site, args.rounds)
                x_test, y_test = site_images(data, split, site.site, "test")
                row["sites"].append(
                    {
                        "site": site.site,
                        "selected_epoch": epoch,
                        "n_train": len(site.y_train),
                        "test_auc": site_auc(model, x_test, y_test),
                        "clean_test": clean_test_metrics(model, data),
                    }
                )
        else:
            cfg = {
                "fedavg": base,
                "fedprox": FederateConfig(rounds=args.rounds, strategy="fedprox"),
                "dp1": FederateConfig(rounds=args.rounds, dp_epsilon=1.0),
                "dp3": FederateConfig(rounds=args.rounds, dp_epsilon=3.0),
                "dp8": FederateConfig(rounds=args.rounds, dp_epsilon=8.0),
            }[name]
            with tempfile.TemporaryDirectory() as tmp:
                result = federate(
                    cfg, Path(tmp), split_path=split_path, data_dir=data_dir, adapt=name == "fedavg", n_bootstrap=500
                )
            fed = result["config"]
            row = {
                "selected_round": fed["selected_round"],
                "test": result["test"],
                "test_auc_ci": result["test_auc_ci"],
                "sites": result["sites"],
                "history": fed["history"],
                "privacy": fed["privacy"],
            }
        row["seconds"] = round(time.perf_counter() - started, 1)
        runs[name] = row
        print(
            f"{name}: {json.dumps({k: v for k, v in row.items() if k in ('test', 'seconds', 'selected_round', 'selected_epoch')})}",
            flush=True,
        )
        out_path.write_text(json.dumps(results, indent=1, default=float))
    summarise(results)
    out_path.write_text(json.dumps(results, indent=1, default=float))


def summarise(results: dict) -> None:
    runs = results["runs"]
    table = []
    for name in RUNS:
        if name not in runs or name == "local":
            continue
        r = runs[name]
        eps = (r.get("privacy") or {}).get("epsilon_spent")
        table.append(
            {
                "run": name,
                "test_auc": r["test"]["auc"],
                "test_accuracy": r["test"]["accuracy"],
                "epsilon": eps,
                "seconds": r["seconds"],
                "site_test_auc": [s["test_auc"] for s in r["sites"]],
            }
        )
    if "local" in runs:
        table.append(
            {
                "run": "each site alone",
                "test_auc": None,
                "test_accuracy": None,
                "epsilon": None,
                "seconds": runs["local"]["seconds"],
                "site_test_auc": [s["test_auc"] for s in runs["local"]["sites"]],
            }
        )
    results["table"] = table
    print(
        f"{'run':<16}{'test AUC':>10}{'accuracy':>10}{'epsilon':>9}{'seconds':>9}   site test AUC (each site's scanner)"
    )
    for t in table:
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        print(
            f"{t['run']:<16}{fmt(t['test_auc'], '.4f'):>10}{fmt(t['test_accuracy'], '.4f'):>10}{fmt(t['epsilon'], '.2f'):>9}"
            f"{t['seconds']:>9.0f}   " + " ".join(fmt(a, ".3f") or "n/a" for a in t["site_test_auc"])
        )
    if "central" in runs and "fedavg" in runs:
        gap = runs["central"]["test"]["auc"] - runs["fedavg"]["test"]["auc"]
        results["fedavg_gap_to_central"] = gap
        print(
            f"FedAvg vs centralised: {gap:+.4f} AUC below (target: within 0.01) -> {'met' if gap <= 0.01 else 'NOT met'}"
        )
    if "fedavg" in runs and "local" in runs:
        better = [
            fed["test_auc"] > own["test_auc"] for fed, own in zip(runs["fedavg"]["sites"], runs["local"]["sites"])
        ]
        results["fedavg_beats_local_at_every_site"] = all(better)
        print(f"FedAvg better than the site alone at {sum(better)}/{len(better)} sites (on each site's test set)")
        adapted = runs["fedavg"]["sites"]
        print("site  fedavg  fine-tuned  Tent")
        for s in adapted:
            print(
                f"{s['site']:<6}{s['test_auc']:.4f}  {s.get('finetuned_test_auc') or float('nan'):.4f}      {s.get('tta_test_auc') or float('nan'):.4f}"
            )


if __name__ == "__main__":
    main()
