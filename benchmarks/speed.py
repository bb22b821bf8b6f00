"""Speed on this CPU: the shipped models through PyTorch eager, medlens' tuned PyTorch path and ONNX Runtime.

For the shipped classifiers (pneumonia 28 px 2D, adrenal 64^3 3D): images/s at
batch 64 over the whole real test set, latency p50/p95 at batch 1, and the test
AUC of each path, for PyTorch eager as MONAI's networks run by default, medlens'
tuned PyTorch (inference mode, channels-last), ONNX Runtime fp32 and static
int8; the hippocampus segmenter's seconds per case (PyTorch vs ONNX Runtime);
and the roofline: this CPU's measured fp32 matmul GFLOP/s against each model's
FLOPs per image. Exports go to a temporary copy, never into the shipped bundles.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/speed.py
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medlens.bundle.manifest import resolve_bundle_path
from medlens.classify.bundle import load_classifier
from medlens.datasets import load_medmnist
from medlens.preprocess.pipeline import normalize_intensity
from medlens.runtime.onnx_export import export_onnx
from medlens.runtime.quantize import quantize_bundle

RESULTS = Path(__file__).parent / "results" / "speed.json"
CLASSIFIERS = {"pneumonia-28px": ("pneumoniamnist", 28), "adrenal": ("adrenalmnist3d", 64)}


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)  # timing only: the numbers are never used
    torch.mm(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


def flops_per_image(model: torch.nn.Module, example: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(example[:1])
    return float(counter.get_total_flops())


def measure(run, raw: np.ndarray, labels: np.ndarray) -> dict:
    """Throughput at batch 64 over the test set, latency at batch 1 (100 calls), and the AUC."""
    run(raw[:64])
    started = time.perf_counter()
    probs = np.concatenate([run(raw[i : i + 64]) for i in range(0, len(raw), 64)])
    throughput = len(raw) / (time.perf_counter() - started)
    latencies = []
    for i in range(100):
        t = time.perf_counter()
        run(raw[i % len(raw) : i % len(raw) + 1])
        latencies.append((time.perf_counter() - t) * 1000)
    return {
        "images_per_s": throughput,
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p95": float(np.percentile(latencies, 95)),
        "auc": float(roc_auc_score(labels, probs[:, 1])),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def classifier_rows(name: str, data_dir: str | None, peak: float) -> dict:
    dataset, size = CLASSIFIERS[name]
    data = load_medmnist(dataset, size=size, data_dir=data_dir)
    test, val = data.split("test"), data.split("val")
    raw = test.images.astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / name
        shutil.copytree(resolve_bundle_path(name), copy)
        bundle = load_classifier(copy)
        model, prep, t = bundle.model.eval(), bundle.preprocessing, bundle.temperature
        dims = len(prep.spatial_shape)

        def eager(x: np.ndarray) -> np.ndarray:  # what a MONAI user writes: no_grad, default memory format
            with torch.no_grad():
                return torch.softmax(model(torch.from_numpy(normalize_intensity(x, prep))) / t, 1).numpy()

        fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
        tuned_model = bundle.model.to(memory_format=fmt)

        def tuned(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                xt = torch.from_numpy(normalize_intensity(x, prep)).contiguous(memory_format=fmt)
                return torch.softmax(tuned_model(xt) / t, 1).numpy()

        rows = {
            "pytorch eager (MONAI defaults)": measure(eager, raw, test.labels),
            "medlens tuned pytorch (inference mode, channels-last)": measure(tuned, raw, test.labels),
        }
        bundle = load_classifier(copy)
        export_onnx(bundle, val.images[:64].astype(np.float32))
        q = quantize_bundle(bundle, "static", (val.images, val.labels), (test.images, test.labels))
        import onnxruntime as ort

        for label, file in (("onnxruntime fp32", "model.onnx"), ("onnxruntime int8 static", "model.int8.onnx")):
            if not (copy / file).is_file():
                rows[label] = {"skipped": "int8 not kept (validation AUC bound or no speed-up)", **q}
                continue
            session = ort.InferenceSession(str(copy / file), providers=["CPUExecutionProvider"])
            rows[label] = measure(
                lambda x, s=session: s.run(None, {"image": np.ascontiguousarray(x)})[0], raw, test.labels
            )
        flops = flops_per_image(model, torch.from_numpy(normalize_intensity(raw[:1], prep)))
    for row in rows.values():
        if "images_per_s" in row:
            row["percent_of_matmul_peak"] = 100 * row["images_per_s"] * flops / (peak * 1e9)
    return {"test_images": len(raw), "flops_per_image": flops, "int8": q, "paths": rows}


def segmenter_rows(data_dir: str | None) -> dict:
    from medlens.io.volume import load_volume
    from medlens.runtime.onnx_export import OnnxModule
    from medlens.segment.bundle import load_segmenter
    from medlens.segment.export import export_segmentation_onnx
    from medlens.segment.infer import segment_volume

    root = Path(data_dir or "../shared/data") / "msd_hippocampus" / "imagesTr"
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "hippocampus"
        shutil.copytree(resolve_bundle_path("hippocampus"), copy)
        bundle = load_segmenter(copy)
        cases = [root / f"{c}.nii.gz" for c in bundle.manifest["split"]["test"][:10]]
        export_segmentation_onnx(bundle, root / f"{bundle.manifest['split']['val'][0]}.nii.gz")
        volumes = [load_volume(c) for c in cases]
        out = {}
        for label, model in (("pytorch", bundle.model), ("onnxruntime fp32", OnnxModule(copy / "model.onnx"))):
            segment_volume(model, volumes[0], bundle.plan, bundle.postprocess)
            started = time.perf_counter()
            for v in volumes:
                segment_volume(model, v, bundle.plan, bundle.postprocess)
            out[label] = {"seconds_per_case": (time.perf_counter() - started) / len(volumes), "cases": len(volumes)}
    return out


def main() -> None:
    data_dir = os.environ.get("MEDLENS_DATA_DIR")
    torch.set_num_threads(os.cpu_count() or 1)
    peak = matmul_gflops()
    result = {
        "machine": f"{os.cpu_count()}-core CPU, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "matmul_gflops_fp32": peak,
        "classifiers": {n: classifier_rows(n, data_dir, peak) for n in CLASSIFIERS},
        "hippocampus": segmenter_rows(data_dir),
    }
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s ({result['machine']})")
    print(
        "| model | path | images/s (batch 64) | latency p50 / p95 ms | test AUC | % of matmul peak |\n|---|---|---|---|---|---|"
    )
    for name, r in result["classifiers"].items():
        for path, row in r["paths"].items():
            if "images_per_s" in row:
                print(
                    f"| {name} | {path} | {row['images_per_s']:.0f} | {row['latency_ms_p50']:.2f} / "
                    f"{row['latency_ms_p95']:.2f} | {row['auc']:.4f} | {row['percent_of_matmul_peak']:.1f} |"
                )
            else:
                print(f"| {name} | {path} | {row['skipped']} | | | |")
    for path, row in result["hippocampus"].items():
        print(f"| hippocampus | {path} | {row['seconds_per_case']:.3f} s/case ({row['cases']} test cases) | | | |")
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
