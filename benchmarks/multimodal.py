"""Does the clinical record help the image? Image-only vs clinical-only vs late vs intermediate fusion (issue 11).

Datasets (``$MEDLENS_DATA_DIR``), every split by patient and re-drawn per seed:

- ``nih14``: NIH ChestX-ray14 subset, 1000 images at 64 px from 264 patients, 14 findings (multi-label;
  "No Finding" = none); clinical: age, sex, view (PA/AP). Split by ``Patient ID`` (7 folds: one test, one
  validation). Metric: macro test AUC over the findings present in the test split.
- ``ham10000``: 860 dermoscopy images (one per lesion) resized to 64 px, 7 diagnoses; clinical: age, sex,
  body site (``dx_type``, how the diagnosis was confirmed, is left out: it is recorded after the diagnosis).
  Split by ``lesion_id``. Metrics: macro one-vs-rest AUC and balanced accuracy. CC BY-NC: benchmark only.
- ``lung1``: NSCLC-Radiomics, one CT slice per patient (128 px), overall survival; clinical: age, sex,
  overall stage, histology. 70/15/15 by patient, stratified by event. Metrics: test C-index and integrated
  Brier score (clinical-only Cox from lifelines, image-only and fused DeepSurv Cox heads, fused discrete-time).

Methods: ``image`` (MONAI ``cnn`` on pixels), ``clinical`` (scikit-learn gradient boosting on the encoded
clinical columns), ``late`` (``w * p_image + (1 - w) * p_clinical``, ``w`` chosen on validation), ``intermediate``
(:class:`medlens.models.fusion.FusionNet`, one network). Networks are selected on validation; the test split
is scored once, with a percentile bootstrap 95 % CI (500 resamples).

    MEDLENS_DATA_DIR=../shared/data python benchmarks/multimodal.py [--datasets nih14 lung1] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "multimodal.json"
EPOCHS = {"nih14": 20, "ham10000": 20, "lung1": 30}
DATASETS = {
    "nih14": {
        "csv": "cxr_nih14_64/nih1000_metadata.csv",
        "label_column": "Finding Labels",
        "multilabel": True,
        "negative_label": "No Finding",
        "group_column": "Patient ID",
        "numeric": ("Patient Age",),
        "categorical": ("Patient Gender", "View Position"),
    },
    "ham10000": {
        "csv": "skin_ham10000_224/ham10000_subset_metadata.csv",
        "label_column": "dx",
        "multilabel": False,
        "negative_label": None,
        "group_column": "lesion_id",
        "image_size": (64, 64),
        "numeric": ("age",),
        "categorical": ("sex", "localization"),
    },
}
LUNG1 = {"numeric": ("age",), "categorical": ("gender", "Overall.Stage", "Histology")}


def classification_runs(name: str, seed: int, data_dir: Path) -> list[dict]:
    from medlens.classify.bundle import load_classifier
    from medlens.classify.train import make_preprocessing, train_classifier
    from medlens.config import TrainConfig
    from medlens.datasets import load_folder_dataset
    from medlens.evaluate.bootstrap import bootstrap_intervals
    from medlens.preprocess.pipeline import normalized_inputs
    from medlens.tabular.baselines import fit_tabular_model, late_fusion_weight, tabular_proba
    from medlens.tabular.encode import fit_tabular

    spec = DATASETS[name]
    options = {k: spec[k] for k in ("label_column", "multilabel", "negative_label", "group_column")}
    data = load_folder_dataset(data_dir / spec["csv"], image_size=spec.get("image_size"), seed=seed, **options)
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    labels = list(data.label_names)

    def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        """Macro AUC (findings with both classes present; one-vs-rest for diagnoses), balanced accuracy."""
        from sklearn.metrics import balanced_accuracy_score, roc_auc_score

        if data.task == "multilabel":
            keep = [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
            return {"auc": float(roc_auc_score(y[:, keep], p[:, keep], average="macro"))}
        if len(set(y.tolist())) < len(labels):
            return {"auc": float("nan"), "balanced_accuracy": float(balanced_accuracy_score(y, p.argmax(1)))}
        return {
            "auc": float(roc_auc_score(y, p, multi_class="ovr")),
            "balanced_accuracy": float(balanced_accuracy_score(y, p.argmax(1))),
        }

    def scored(method: str, p_val: np.ndarray, p_test: np.ndarray, seconds: float, **extra) -> dict:
        ci = bootstrap_intervals(metrics, test.labels, p_test, n_resamples=500, seed=seed)
        return {
            "dataset": name,
            "method": method,
            "seed": seed,
            "n_train": len(train),
            "n_val": len(val),
            "n_test": len(test),
            "val": metrics(val.labels, p_val),
            "test": metrics(test.labels, p_test),
            "test_ci": ci,
            "cpu_s": round(seconds, 1),
            **extra,
        }

    encoder = fit_tabular(train.metadata, spec["numeric"], spec["categorical"])
    x = {s: encoder.transform(split.metadata, s) for s, split in (("train", train), ("val", val), ("test", test))}
    rows, probs = [], {}
    started = time.process_time()
    clinical = fit_tabular_model(x["train"], train.labels, data.task, seed)
    probs["clinical"] = (tabular_proba(clinical, x["val"]), tabular_proba(clinical, x["test"]))
    rows.append(scored("clinical", *probs["clinical"], time.process_time() - started))
    for method, columns in (
        ("image", {}),
        ("intermediate", {"numeric_columns": spec["numeric"], "categorical_columns": spec["categorical"]}),
    ):
        cfg = TrainConfig(
            dataset=str(data_dir / spec["csv"]),
            image_size=spec.get("image_size"),
            model="cnn",
            epochs=EPOCHS[name],
            batch_size=64,
            patience=6,
            seed=seed,
            **options,
            **columns,
        )
        started = time.process_time()
        with tempfile.TemporaryDirectory() as tmp:
            bundle = load_classifier(train_classifier(cfg, Path(tmp), show_progress=False, data=data))
        prep = make_preprocessing(cfg, data)

        def inputs(split, part: str):
            images = normalized_inputs(split, prep)
            return (images, x[part]) if bundle.tabular is not None else images

        probs[method] = (bundle.predict_proba(inputs(val, "val")), bundle.predict_proba(inputs(test, "test")))
        rows.append(
            scored(
                method,
                *probs[method],
                time.process_time() - started,
                best_epoch=bundle.manifest["training"]["best_epoch"],
            )
        )
    primary = "balanced_accuracy" if data.task == "multiclass" else "auc"
    weight, curve = late_fusion_weight(
        probs["image"][0], probs["clinical"][0], val.labels, lambda y, p: metrics(y, p)[primary]
    )
    rows.append(
        scored(
            "late",
            *(weight * probs["image"][i] + (1 - weight) * probs["clinical"][i] for i in (0, 1)),
            0.0,
            image_weight=weight,
            weight_curve_val=curve,
        )
    )
    return rows


def survival_runs(seed: int, data_dir: Path) -> list[dict]:
    from medlens.survival.train import SurvivalConfig, train_survival

    rows = []
    for method, inputs, head in (
        ("clinical", "clinical", "cox"),
        ("image", "image", "cox"),
        ("intermediate", "fused", "cox"),
        ("intermediate-discrete", "fused", "discrete"),
    ):
        cfg = SurvivalConfig(
            head=head,
            inputs=inputs,
            numeric_columns=LUNG1["numeric"] if inputs != "image" else (),
            categorical_columns=LUNG1["categorical"] if inputs != "image" else (),
            epochs=EPOCHS["lung1"],
            seed=seed,
        )
        started = time.process_time()
        with tempfile.TemporaryDirectory() as tmp:
            report = json.loads(
                (
                    train_survival(data_dir / "ct_lung1_survival", cfg, Path(tmp), show_progress=False)
                    / "survival_report.json"
                ).read_text()
            )
        rows.append(
            {
                "dataset": "lung1",
                "method": method,
                "seed": seed,
                "head": head,
                "val": report["validation"],
                "test": report["test"],
                "kaplan_meier_test": report["kaplan_meier_test"],
                "cpu_s": round(time.process_time() - started, 1),
            }
        )
    return rows


def summarise(runs: list[dict]) -> dict:
    table: dict[str, dict] = {}
    for run in runs:
        metrics = ("c_index", "ibs") if run["dataset"] == "lung1" else tuple(run["test"])
        cell = table.setdefault(run["dataset"], {}).setdefault(run["method"], {"seeds": 0})
        cell["seeds"] += 1
        for m in metrics:
            cell.setdefault(f"_{m}", []).append(run["test"][m])
    for methods in table.values():
        for cell in methods.values():
            for key in [k for k in cell if k.startswith("_")]:
                values = np.asarray(cell.pop(key), dtype=float)
                cell[f"test_{key[1:]}_mean"] = round(float(np.nanmean(values)), 4)
                cell[f"test_{key[1:]}_sd"] = round(float(np.nanstd(values, ddof=1)), 4) if len(values) > 1 else None
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--datasets", nargs="+", default=["nih14", "ham10000", "lung1"], choices=["nih14", "ham10000", "lung1"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    data_dir = Path(os.environ.get("MEDLENS_DATA_DIR", "../shared/data"))
    runs = json.loads(RESULTS.read_text())["runs"] if RESULTS.is_file() else []
    for seed in args.seeds:
        for name in args.datasets:
            new = survival_runs(seed, data_dir) if name == "lung1" else classification_runs(name, seed, data_dir)
            keys = {(r["dataset"], r["method"], r["seed"]) for r in new}
            runs = [r for r in runs if (r["dataset"], r["method"], r["seed"]) not in keys] + new
            for row in new:
                print(
                    json.dumps({k: row[k] for k in ("dataset", "method", "seed", "test", "cpu_s")}, default=float),
                    flush=True,
                )
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(
                json.dumps(
                    {
                        "benchmark": "multimodal fusion and survival (issue 11)",
                        "data": {
                            "nih14": "cxr_nih14_64 (NIH Clinical Center, public)",
                            "ham10000": "skin_ham10000_224 (CC BY-NC 4.0)",
                            "lung1": "ct_lung1_survival (NSCLC-Radiomics, CC BY-NC 3.0)",
                        },
                        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
                        "recipe": {"epochs": EPOCHS, "model": "cnn", "note": __doc__.split("\n\n")[1:4]},
                        "summary": summarise(runs),
                        "runs": runs,
                    },
                    indent=1,
                    default=float,
                )
            )
    for dataset, methods in summarise(runs).items():
        print(f"\n{dataset}")
        for method, cell in methods.items():
            print(f"  {method:22s} " + "  ".join(f"{k}={v}" for k, v in cell.items()))


if __name__ == "__main__":
    main()
