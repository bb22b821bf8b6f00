"""Speed of a fused (image + clinical) classifier on this CPU: PyTorch vs ONNX Runtime, and what the clinical part costs.

NIH ChestX-ray14 subset (64 px PNGs, 14 findings; age, sex and view as clinical columns; split by patient): an
intermediate-fusion MONAI ``cnn`` trained for EPOCHS epochs (seed 0), exported with ``medlens export`` (a graph
with ``image`` and ``clinical`` inputs, checked against PyTorch), then on the test split:

- the whole ``medlens predict`` path (read and check each PNG, look up and encode its clinical row, predict)
  in images/s, PyTorch vs ONNX Runtime;
- the network alone: images/s at batch 64 and latency p50/p95 at batch 1, with the macro AUC of each path;
- the clinical encoder (scikit-learn, in Python on both paths): per row, as prediction calls it, and per batch;
- static int8 (``medlens export --quantize static``), calibrated with the validation images' clinical values: its
  speed and AUC against fp32, and whether medlens keeps it.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/fused_speed.py [--epochs N] [--out FILE]
"""

from __future__ import annotations

import csv
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "fused_speed.json"
EPOCHS = 10
NIH = {
    "label_column": "Finding Labels",
    "multilabel": True,
    "negative_label": "No Finding",
    "group_column": "Patient ID",
}
NUMERIC, CATEGORICAL = ("Patient Age",), ("Patient Gender", "View Position")


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def macro_auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    keep = [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
    return float(roc_auc_score(y[:, keep], p[:, keep], average="macro"))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (a quick check can write elsewhere)")
    args = parser.parse_args()
    from medlens.classify.bundle import load_classifier
    from medlens.classify.predict import predict_files
    from medlens.classify.train import train_classifier
    from medlens.config import TrainConfig
    from medlens.datasets import load_folder_dataset
    from medlens.runtime.backends import predict_raw
    from medlens.runtime.onnx_export import export_onnx
    from medlens.runtime.quantize import quantize_bundle
    from medlens.tabular.encode import ClinicalTable

    csv_path = (
        Path(os.environ.get("MEDLENS_DATA_DIR", "../shared/data")).resolve() / "cxr_nih14_64" / "nih1000_metadata.csv"
    )
    data = load_folder_dataset(csv_path, seed=0, **NIH)
    val, test = data.splits["val"], data.splits["test"]
    cfg = TrainConfig(
        dataset=str(csv_path),
        model="cnn",
        epochs=args.epochs,
        batch_size=64,
        seed=0,
        numeric_columns=NUMERIC,
        categorical_columns=CATEGORICAL,
        **NIH,
    )
    result: dict = {
        "benchmark": "fused (image + clinical) inference speed",
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "data": f"NIH ChestX-ray14 subset, 64 px, test split {len(test)} images ({len(test.metadata)} clinical rows)",
        "model": f"MONAI cnn + clinical MLP (intermediate fusion), {args.epochs} epochs, seed 0",
    }
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        bundle = load_classifier(train_classifier(cfg, Path(tmp), show_progress=False, data=data))
        result["train_s"] = round(time.perf_counter() - started, 1)
        encoder = bundle.tabular
        record = export_onnx(
            bundle, val.images[:64].astype("float32"), check_clinical=encoder.transform(val.metadata[:64])
        )
        result["onnx_check_max_abs_difference"] = record["max_abs_difference"]

        raw = test.images.astype("float32")
        features = encoder.transform(test.metadata)
        paths = {}
        for backend in ("torch", "onnxruntime"):
            probs = predict_raw(bundle, raw, backend, features)
            batch64 = timed(
                lambda: [
                    predict_raw(bundle, raw[i : i + 64], backend, features[i : i + 64]) for i in range(0, len(raw), 64)
                ],
                5,
            )
            single = timed(lambda: predict_raw(bundle, raw[:1], backend, features[:1]), 200)
            paths[backend] = {
                "network_images_per_s_batch64": round(len(raw) / float(np.median(batch64)), 1),
                "network_latency_ms_p50": round(1000 * float(np.percentile(single, 50)), 3),
                "network_latency_ms_p95": round(1000 * float(np.percentile(single, 95)), 3),
                "test_macro_auc": round(macro_auc(test.labels, probs), 4),
            }
        per_row = timed(lambda: [encoder.transform([row]) for row in test.metadata], 3)
        whole = timed(lambda: encoder.transform(test.metadata), 20)
        result["clinical_encoder"] = {
            "ms_per_row_one_at_a_time": round(1000 * float(np.median(per_row)) / len(test), 3),
            "ms_per_row_in_one_batch": round(1000 * float(np.median(whole)) / len(test), 4),
        }

        image_dir = csv_path.parent / "images"
        table = Path(tmp) / "clinical.csv"
        with table.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", *NUMERIC, *CATEGORICAL])
            writer.writerows([m["Image Index"], *(m[c] for c in NUMERIC + CATEGORICAL)] for m in test.metadata)
        files = [image_dir / m["Image Index"] for m in test.metadata]
        clinical = ClinicalTable(table)
        for backend in ("torch", "onnxruntime"):
            rows = predict_files(bundle, files, backend=backend, clinical=clinical)
            assert not any(r.error for r in rows)
            seconds = timed(lambda: predict_files(bundle, files, backend=backend, clinical=clinical), 3)
            paths[backend]["predict_files_images_per_s"] = round(len(files) / float(np.median(seconds)), 1)
        result["paths"] = paths
        # int8 (static QDQ), calibrated on validation images with their clinical values; kept or not by medlens' rule
        q = quantize_bundle(
            bundle,
            "static",
            (val.images, val.labels),
            (test.images, test.labels),
            clinical=(encoder.transform(val.metadata), features),
        )
        result["int8_static"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in q.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{result['data']}; {result['model']}; {torch.get_num_threads()} threads")
    print(
        f"{'path':<12} {'predict img/s':>14} {'net img/s (b64)':>16} {'p50 ms (b1)':>12} {'p95 ms':>8} {'macro AUC':>10}"
    )
    for name, p in paths.items():
        print(
            f"{name:<12} {p['predict_files_images_per_s']:>14} {p['network_images_per_s_batch64']:>16} "
            f"{p['network_latency_ms_p50']:>12} {p['network_latency_ms_p95']:>8} {p['test_macro_auc']:>10}"
        )
    print(
        f"clinical encoder: {result['clinical_encoder']['ms_per_row_one_at_a_time']} ms per row one at a time, "
        f"{result['clinical_encoder']['ms_per_row_in_one_batch']} ms per row in one batch"
    )
    q = result["int8_static"]
    print(
        f"int8 static: {q['fp32_images_per_s']:.0f} -> {q['int8_images_per_s']:.0f} img/s (batch 64), validation AUC "
        f"{q['val_fp32']:.4f} -> {q['val_int8']:.4f}, test {q['test_fp32']:.4f} -> {q['test_int8']:.4f}; "
        f"{'kept' if q['kept'] else 'not kept'}"
    )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
