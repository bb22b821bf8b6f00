"""MedMNIST benchmark: train + evaluate on PneumoniaMNIST (28 px) and AdrenalMNIST3D (64^3 and 28^3).

Model selection and thresholds on the validation split only; the test split
is scored once per trained model. Prints a table and writes
benchmarks/results/medmnist.json with mean +- sd over seeds, wall time and
peak memory, beside the published MedMNIST v2 numbers.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/medmnist.py --seeds 0 1 2 [--ship]

``--ship`` copies, per dataset, the run with the best *validation* AUC into
src/medlens/pretrained/ (float16 weights) as the shipped bundle.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from medlens.bundle.manifest import save_bundle
from medlens.classify.bundle import load_classifier
from medlens.classify.train import train_classifier
from medlens.config import TrainConfig
from medlens.datasets import ClassificationData, Split, load_medmnist
from medlens.evaluate.stage import evaluate_bundle
from medlens.preprocess import resize_image

PUBLISHED = {
    "pneumoniamnist": {
        "ResNet-18 (28), MedMNIST v2": {"auc": 0.944, "accuracy": 0.854},
        "ResNet-50 (224), MedMNIST v2": {"auc": 0.962, "accuracy": 0.884},
        "Google AutoML Vision, MedMNIST v2": {"auc": 0.991, "accuracy": 0.946},
    },
    "adrenalmnist3d": {
        "ResNet-50+3D (28^3), MedMNIST v2": {"auc": 0.828, "accuracy": 0.745},
        "auto-sklearn (28^3), MedMNIST v2": {"auc": 0.828, "accuracy": 0.802},
    },
}

EXPERIMENTS = {
    "pneumoniamnist-28": TrainConfig(
        dataset="pneumoniamnist", size=28, model="resnet18", width=0.5, epochs=8, patience=4
    ),
    "adrenalmnist3d-64": TrainConfig(
        dataset="adrenalmnist3d", size=64, model="cnn", width=0.5, epochs=12, batch_size=32, lr=1e-3, patience=6
    ),
    "adrenalmnist3d-28": TrainConfig(
        dataset="adrenalmnist3d", size=64, model="cnn", width=1.0, epochs=30, batch_size=32, lr=1e-3, patience=10
    ),
}
SHIP_AS = {"pneumoniamnist-28": "pneumonia-28px", "adrenalmnist3d-64": "adrenal"}


def resize_dataset(data: ClassificationData, edge: int) -> ClassificationData:
    """The 28^3 version of a 64^3 set, by area (anti-aliased) resizing, rounded back to uint8 like MedMNIST."""
    splits = {}
    for name, split in data.splits.items():
        small = np.stack([resize_image(img.astype(np.float32), (edge,) * (img.ndim - 1)) for img in split.images])
        splits[name] = Split(np.clip(np.rint(small), 0, 255).astype(np.uint8), split.labels, split.ids)
    return replace(data, splits=splits, source={**data.source, "derived": f"resized to {edge}^3 (area)"})


def run_one(name: str, cfg: TrainConfig, seed: int, out_root: Path, data: ClassificationData) -> dict:
    cfg = replace(cfg, seed=seed)
    out = out_root / f"{name}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    bundle_dir = train_classifier(cfg, out, show_progress=False, data=data)
    train_s = time.perf_counter() - started
    bundle = load_classifier(bundle_dir)
    result = evaluate_bundle(bundle, data, out / "evaluation", split="test", n_bootstrap=1000, seed=seed)
    manifest = bundle.manifest
    return {
        "seed": seed,
        "bundle": str(bundle_dir),
        "train_seconds": round(train_s, 1),
        "epochs_run": manifest["training"]["epochs_run"],
        "best_epoch": manifest["training"]["best_epoch"],
        "val_auc": manifest["metrics"]["validation"]["auc"],
        "test": {k: result["metrics"][k] for k in ("auc", "accuracy", "sensitivity", "specificity", "brier", "ece")},
        "test_auc_ci": result["confidence_intervals"]["auc"],
        "peak_rss_mb": round(  # the process's peak so far (ru_maxrss): cumulative over the runs before it
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
    }


def summarize(runs: list[dict]) -> dict:
    out = {}
    for key in ("auc", "accuracy"):
        values = [r["test"][key] for r in runs]
        out[key] = {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    out["train_seconds_mean"] = statistics.mean(r["train_seconds"] for r in runs)
    return out


def ship(name: str, runs: list[dict]) -> None:
    best = max(runs, key=lambda r: r["val_auc"])  # chosen on validation, never on test
    bundle = load_classifier(best["bundle"])
    target = Path(__file__).resolve().parents[1] / "src" / "medlens" / "pretrained" / SHIP_AS[name]
    shutil.rmtree(target, ignore_errors=True)
    manifest = {k: v for k, v in bundle.manifest.items() if k != "format"}
    manifest["name"] = SHIP_AS[name]
    manifest["metrics"]["test"] = best["test"]
    manifest["metrics"]["test_auc_ci"] = best["test_auc_ci"]
    manifest["selected"] = f"seed {best['seed']} of {len(runs)}, highest validation AUC"
    save_bundle(target, bundle.model, manifest, half=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", default=list(EXPERIMENTS))
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark"))
    parser.add_argument("--ship", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(torch.get_num_threads())
    results_path = Path(__file__).parent / "results" / "medmnist.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"experiments": {}}
    for name in args.only:
        cfg = EXPERIMENTS[name]
        data = load_medmnist(cfg.dataset, size=cfg.size)
        if name.endswith("-28") and cfg.size != 28:
            data = resize_dataset(data, 28)
        runs = [run_one(name, cfg, seed, args.out, data) for seed in args.seeds]
        results["experiments"][name] = {
            "dataset": cfg.dataset,
            "data_file": data.source.get("file"),
            "data_sha256": data.source.get("sha256"),
            "derived": data.source.get("derived", ""),
            "config": {k: v for k, v in vars(cfg).items() if k != "seed"},
            "summary": summarize(runs),
            "runs": runs,
            "published": PUBLISHED[cfg.dataset],
        }
        if args.ship and name in SHIP_AS:
            ship(name, runs)
        results["machine"] = {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        results_path.write_text(json.dumps(results, indent=1))
        print_table(results)


def print_table(results: dict) -> None:
    print(f"\n{'experiment':22s} {'test AUC':>16s} {'test ACC':>16s} {'train s/seed':>12s}  published (AUC/ACC)")
    for name, exp in results["experiments"].items():
        s = exp["summary"]
        published = "; ".join(f"{k}: {v['auc']:.3f}/{v['accuracy']:.3f}" for k, v in exp["published"].items())
        print(
            f"{name:22s} {s['auc']['mean']:.3f} +- {s['auc']['sd']:.3f}  {s['accuracy']['mean']:.3f} +- {s['accuracy']['sd']:.3f}"
            f"  {s['train_seconds_mean']:12.0f}  {published}"
        )


if __name__ == "__main__":
    main()
