"""Data-parallel training: does a 2-process ``torchrun`` run give the same model as 1 process?

Trains the shipped pneumonia recipe (ResNet-18 width 0.5 on PneumoniaMNIST,
read from the shipped bundle) and a shortened hippocampus recipe (MSD Task04,
the shipped plan and split, fewer epochs) once as one process and once as
two torchrun processes (gloo, one thread each) on this machine, then scores
both on the held-out test data with ``medlens evaluate``. Writes
``benchmarks/results/distributed.json``.

On a 2-core machine two processes share the same cores, so the point here is
equal quality, not speed; on a cluster each process gets its own machine or
GPU (see the README, "Training on several machines").

    MEDLENS_DATA_DIR=../shared/data python benchmarks/distributed.py [--parts classify segment]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "distributed.json"
PRETRAINED = Path(__file__).parents[1] / "src" / "medlens" / "pretrained"
SEG_EPOCHS = 8


def medlens(args: list[str], processes: int = 1) -> float:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        if processes > 1
        else [sys.executable]
    )
    started = time.perf_counter()
    subprocess.run([*launcher, "-m", "medlens", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def classify_settings() -> list[str]:
    config = json.loads((PRETRAINED / "pneumonia-28px" / "bundle.json").read_text())["config"]
    keep = (
        "model",
        "width",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_epochs",
        "imbalance",
        "augment",
        "patience",
        "seed",
    )
    return [f"--set={k}={config[k]}" for k in keep]


def run_classify(work: Path, processes: int, seed: int | None = None) -> dict:
    out = work / f"classify-{processes}-{seed}"
    settings = classify_settings() + ([f"--set=seed={seed}"] if seed is not None else [])
    seconds = medlens(["train", "pneumoniamnist", "--out", str(out), *settings], processes)
    medlens(
        ["evaluate", str(out / "model"), "--data", "pneumoniamnist", "--out", str(out / "test"), "--bootstrap", "500"]
    )
    manifest = json.loads((out / "model" / "bundle.json").read_text())
    test = json.loads((out / "test" / "metrics.json").read_text())
    return {
        "processes": processes,
        "seed": manifest["config"]["seed"],
        "wall_seconds": round(seconds, 1),
        "epochs_run": manifest["training"]["epochs_run"],
        "val_auc": manifest["metrics"]["validation"]["auc"],
        "test_auc": test["metrics"]["auc"],
        "test_auc_ci": test["confidence_intervals"]["auc"],
        "test_accuracy": test["metrics"]["accuracy"],
    }


def run_segment(work: Path, processes: int, data: Path) -> dict:
    out = work / f"segment-{processes}"
    shipped = json.loads((PRETRAINED / "hippocampus" / "bundle.json").read_text())
    plan = work / "plan.json"
    plan.write_text(json.dumps(shipped["plan"]))
    cfg = shipped["config"]
    settings = [
        f"--set={k}={cfg[k]}"
        for k in ("samples_per_epoch", "lr", "weight_decay", "val_fraction", "test_fraction", "seed")
    ]
    seconds = medlens(
        [
            "train",
            str(data),
            "--task",
            "segment",
            "--plan",
            str(plan),
            "--out",
            str(out),
            *settings,
            f"--set=epochs={SEG_EPOCHS}",
            f"--set=patience={SEG_EPOCHS}",
        ],
        processes,
    )
    medlens(["evaluate", str(out / "model"), "--data", str(data), "--out", str(out / "test"), "--bootstrap", "500"])
    manifest = json.loads((out / "model" / "bundle.json").read_text())
    test = json.loads((out / "test" / "metrics.json").read_text())
    return {
        "processes": processes,
        "wall_seconds": round(seconds, 1),
        "epochs_run": manifest["training"]["epochs_run"],
        "val_mean_dice": manifest["metrics"]["validation"]["mean_dice"],
        "test_mean_dice": test["metrics"]["mean_dice"],
        "test_mean_dice_ci": test["confidence_intervals"].get("mean_dice"),
        "n_test": test["n"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--parts", nargs="+", default=["classify", "segment", "seeds"], choices=["classify", "segment", "seeds"]
    )
    args = parser.parse_args()
    data_dir = Path(os.environ.get("MEDLENS_DATA_DIR", "../shared/data"))
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update(
        {
            "machine": f"{os.cpu_count()}-core CPU; torchrun --standalone, gloo; 2 processes x 1 thread vs 1 process x {os.cpu_count()} threads"
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "classify" in args.parts:
            results["classify"] = {
                "data": "PneumoniaMNIST 28 px (train 4708, val 524, test 624); shipped recipe",
                "runs": [run_classify(work, n) for n in (1, 2)],
            }
        if "seeds" in args.parts:  # how far two 1-process runs differ by seed alone: the yardstick for "same quality"
            shipped_seed = int(
                json.loads((PRETRAINED / "pneumonia-28px" / "bundle.json").read_text())["config"]["seed"]
            )
            results["classify_seed_spread"] = {
                "data": "the same recipe, 1 process, other seeds",
                "runs": [run_classify(work, 1, shipped_seed + k) for k in (1, 2)],
            }
        if "segment" in args.parts:
            results["segment"] = {
                "data": f"MSD Task04 hippocampus, shipped plan and split, {SEG_EPOCHS} epochs (shipped: 30)",
                "runs": [run_segment(work, n, data_dir / "msd_hippocampus") for n in (1, 2)],
            }
    RESULTS.write_text(json.dumps(results, indent=1))
    for part in ("classify", "classify_seed_spread", "segment"):
        for run in results.get(part, {}).get("runs", []):
            scores = {
                k: round(v, 4) for k, v in run.items() if k.startswith(("val_", "test_")) and isinstance(v, float)
            }
            print(
                f"{part:20s} {run['processes']} process(es): {run['wall_seconds']:7.1f} s, {run['epochs_run']} epochs, {scores}"
            )


if __name__ == "__main__":
    main()
