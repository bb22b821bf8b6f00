"""Trust benchmark: the audit of the shipped pneumonia (2D) and adrenal (3D) models.

For each shipped classifier: temperature scaling and the referral operating
point are fitted on validation (``--ship`` stores them in the shipped bundle,
as ``medlens calibrate`` does), then the full audit runs on the test split:
ECE before/after, referral curves (softmax, test-time augmentation, a deep
ensemble of the MedMNIST benchmark's other seeds, and MC dropout from a
PneumoniaMNIST model trained with dropout 0.2), the corruption suite at five
severities with shift detection and batch-norm adaptation, the Grad-CAM
randomisation check and deletion/insertion scores. The model cards and plots
go to ``benchmarks/results/trust/<model>/``; the numbers to
``benchmarks/results/trust.json``.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/trust.py [--ship]

``medlens audit pneumonia --data pneumoniamnist --out DIR`` reproduces the card
(same seed and settings) except the ensemble rows, which need the member bundles
(``--ensemble runs/benchmark/pneumoniamnist-28-seed0/model ...``). Missing
ensemble members are trained first with the MedMNIST benchmark's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from medlens.classify.bundle import load_classifier
from medlens.classify.train import train_classifier
from medlens.datasets import load_medmnist
from medlens.trust.audit import AuditConfig, _Ctx, audit_bundle, audit_calibration, audit_referral
from medlens.trust.calibrate import calibrate_bundle

sys.path.insert(0, str(Path(__file__).parent))
from medmnist import EXPERIMENTS  # noqa: E402  (the same training settings as the MedMNIST benchmark)

RESULTS = Path(__file__).parent / "results"
MODELS = {
    "pneumonia-28px": ("pneumoniamnist-28", "pneumoniamnist", 28),
    "adrenal": ("adrenalmnist3d-64", "adrenalmnist3d", 64),
}
SEEDS = (0, 1, 2)


def member_bundles(experiment: str, shipped_seed: int, runs: Path, data) -> list[Path]:
    """The MedMNIST benchmark's other seeds of the shipped model (trained here if missing)."""
    paths = []
    for seed in SEEDS:
        if seed == shipped_seed:
            continue
        out = runs / f"{experiment}-seed{seed}"
        if not (out / "model" / "bundle.json").is_file():
            print(f"training ensemble member {out} ...", flush=True)
            train_classifier(replace(EXPERIMENTS[experiment], seed=seed), out, show_progress=False, data=data)
        paths.append(out / "model")
    return paths


def dropout_bundle(runs: Path, data) -> Path:
    out = runs / "pneumoniamnist-28-dropout0.2-seed0"
    if not (out / "model" / "bundle.json").is_file():
        print("training the dropout-0.2 PneumoniaMNIST model for MC dropout ...", flush=True)
        train_classifier(
            replace(EXPERIMENTS["pneumoniamnist-28"], seed=0, dropout=0.2), out, show_progress=False, data=data
        )
    return out / "model"


def run_model(name: str, args: argparse.Namespace) -> dict:
    experiment, dataset, size = MODELS[name]
    data = load_medmnist(dataset, size=size, data_dir=args.data_dir)
    bundle = load_classifier(name)
    if args.ship:
        fitted = calibrate_bundle(bundle, data, bundle.path, referral_fraction=0.1, method="softmax")
        print(
            f"{name}: shipped temperature {fitted['calibration']['temperature']:.3f}, referral threshold "
            f"{fitted['referral']['threshold']:.4g}",
            flush=True,
        )
        bundle = load_classifier(name)
    members = [
        load_classifier(p) for p in member_bundles(experiment, bundle.manifest["config"]["seed"], args.runs, data)
    ]
    cfg = AuditConfig(explain_cases=32 if name == "pneumonia" else 16)
    started = time.perf_counter()
    audit = audit_bundle(bundle, data, args.results / "trust" / name, cfg, members)
    result = {
        "audit_seconds": round(time.perf_counter() - started, 1),
        "n_members": len(members) + 1,
        **{k: audit[k] for k in ("performance", "calibration", "referral", "robustness", "explanations")},
    }
    if name == "pneumonia":
        result["mc_dropout_model"] = mc_dropout_rows(args, data)
    return result


def mc_dropout_rows(args: argparse.Namespace, data) -> dict:
    """Referral with MC dropout, on a separately trained model with dropout (the shipped one has none)."""
    bundle = load_classifier(dropout_bundle(args.runs, data))
    ctx = _Ctx(
        bundle,
        data,
        AuditConfig(uncertainty_methods=("softmax", "mc-dropout")),
        args.results / "trust" / "pneumonia-dropout",
        [],
    )
    ctx.out.mkdir(parents=True, exist_ok=True)
    return {"calibration": audit_calibration(ctx), "referral": audit_referral(ctx)}


def summary_rows(results: dict) -> list[list[str]]:
    rows = []
    for name, r in results.items():
        ece = r["calibration"]["ece"]
        methods = dict(r["referral"]["methods"])
        if "mc_dropout_model" in r:
            methods["mc-dropout (dropout model)"] = r["mc_dropout_model"]["referral"]["methods"]["mc-dropout"]
        for method, m in methods.items():
            if "curve" not in m:
                continue
            c = {round(x["referred_fraction"], 2): x for x in m["curve"]}
            rows.append(
                [
                    name,
                    method,
                    f"{ece['val_before']:.3f} -> {ece['val_after']:.3f}",
                    f"{ece['test_before']:.3f} -> {ece['test_after']:.3f}",
                    *(f"{c[f]['auc']:.3f} / {c[f]['accuracy']:.3f}" for f in (0.0, 0.1, 0.2)),
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--ship", action="store_true", help="store temperature and referral point in the shipped bundles"
    )
    parser.add_argument(
        "--runs", type=Path, default=Path("runs/benchmark"), help="where ensemble members live / are trained"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MEDLENS_DATA_DIR"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    path = args.results / "trust.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    results = stored.get("models", {})
    for name in args.models:
        results[name] = run_model(name, args)
        path.write_text(
            json.dumps(
                {"machine": f"{os.cpu_count()}-core CPU, torch {torch.__version__}", "models": results}, indent=1
            )
        )
    print(
        "| model | uncertainty | ECE val before -> after | ECE test before -> after | AUC / acc, 0% referred "
        "| 10% referred | 20% referred |\n|---|---|---|---|---|---|---|"
    )
    for row in summary_rows(results):
        print("| " + " | ".join(row) + " |")
    print(f"written {path}")


if __name__ == "__main__":
    main()
