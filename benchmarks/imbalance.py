"""Class imbalance: which loss or sampler keeps the minority class found? (issue 10, part 5)

PneumoniaMNIST (28 px) trained with each ``imbalance`` option (none, weighted-loss,
balanced-sampler, focal, logit-adjusted) on the same recipe (MONAI ``Classifier``
"cnn", EPOCHS epochs, AdamW 1e-3, batch 64, selection on validation AUC), in two
settings:

- natural: the train split as published (normal 1214 = 26%, pneumonia 3494): the minority is *normal*;
- rare finding: the train split keeps every normal image and 5% as many pneumonia images as normals (61),
  so pneumonia is 5% of training; validation and test are untouched. The minority is *pneumonia*.

Each model is scored on the whole test split (624 images): AUC, and the minority
class's sensitivity (recall) both at the validation-chosen threshold (Youden's
J, what medlens bundles use) and at argmax (probability 0.5, what a
threshold-free use would give). Writes ``benchmarks/results/imbalance.json``.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/imbalance.py [--seeds 0 1 2] [--epochs 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from medlens.classify.bundle import load_classifier
from medlens.classify.train import train_classifier
from medlens.config import IMBALANCE_OPTIONS, TrainConfig
from medlens.datasets import load_medmnist

RESULTS = Path(__file__).parent / "results" / "imbalance.json"


def rare_finding(data, fraction: float = 0.05, seed: int = 0):
    """The train split with pneumonia cut to ``fraction`` of the normal count (validation and test untouched)."""
    train = data.splits["train"]
    rng = np.random.default_rng(seed)
    normal, pneumonia = np.flatnonzero(train.labels == 0), np.flatnonzero(train.labels == 1)
    keep = np.sort(np.r_[normal, rng.choice(pneumonia, int(round(fraction * len(normal))), replace=False)])
    cut = dataclasses.replace(
        train,
        images=train.images[keep],
        labels=train.labels[keep],
        ids=[train.ids[i] for i in keep],
        metadata=[train.metadata[i] for i in keep] if train.metadata else [],
    )
    return dataclasses.replace(data, splits={**data.splits, "train": cut})


def score(bundle_dir: Path, data, minority: int) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    from medlens.preprocess.pipeline import normalized_inputs

    bundle = load_classifier(bundle_dir)
    test = data.splits["test"]
    probs = bundle.predict_proba(normalized_inputs(test, bundle.preprocessing))[:, 1]
    positive_call = {"youden": probs >= bundle.thresholds[0], "argmax": probs >= 0.5}
    is_minority = test.labels == minority
    return {
        "auc": float(roc_auc_score(test.labels, probs)),
        **{
            f"minority_sensitivity_{k}": float(((calls == bool(minority)) & is_minority).sum() / is_minority.sum())
            for k, calls in positive_call.items()
        },
        **{
            f"majority_sensitivity_{k}": float(((calls != bool(minority)) & ~is_minority).sum() / (~is_minority).sum())
            for k, calls in positive_call.items()
        },
        "threshold": float(bundle.thresholds[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    data_dir = os.environ.get("MEDLENS_DATA_DIR")
    natural = load_medmnist("pneumoniamnist", 28, data_dir)
    settings = {"natural": (natural, 0), "rare finding (pneumonia 5%)": (rare_finding(natural), 1)}
    rows = []
    for setting, (data, minority) in settings.items():
        for option in IMBALANCE_OPTIONS:
            for seed in args.seeds:
                cfg = TrainConfig(model="cnn", epochs=args.epochs, patience=args.epochs, imbalance=option, seed=seed)
                started = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    bundle = train_classifier(cfg, Path(tmp), data=data, show_progress=False)
                    row = {
                        "setting": setting,
                        "imbalance": option,
                        "seed": seed,
                        "train_images": len(data.splits["train"].labels),
                        **score(bundle, data, minority),
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                rows.append(row)
                print(
                    f"{setting:<28}{option:<18}seed {seed}  AUC {row['auc']:.4f}  minority sens. "
                    f"{row['minority_sensitivity_youden']:.3f} (Youden) {row['minority_sensitivity_argmax']:.3f} (argmax)  "
                    f"majority {row['majority_sensitivity_youden']:.3f} / {row['majority_sensitivity_argmax']:.3f}  "
                    f"{row['seconds']:.0f} s",
                    flush=True,
                )
    RESULTS.write_text(
        json.dumps(
            {
                "data": "PneumoniaMNIST 28 px; test split 624 images (234 normal, 390 pneumonia) untouched",
                "recipe": f"MONAI Classifier (cnn), {args.epochs} epochs, AdamW 1e-3, batch 64, selection on validation AUC",
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only",
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
