"""int8 quantization of an exported classifier with ONNX Runtime's quantizer, kept only if it costs no accuracy.

``dynamic`` quantizes weights ahead of time and activations on the fly;
``static`` (QDQ, per-channel weights) calibrates activation ranges on real
validation images. The quantized graph is kept, and used by the
``onnxruntime`` backend, only when its AUC on the *validation* split is within
``max_auc_drop`` of the fp32 graph's (decided before any test image is seen)
*and* it runs faster than fp32 on this CPU; the test-split figures are measured
and stored beside the decision. Measured
here on PneumoniaMNIST: dynamic int8 was 5x *slower* than fp32 (integer
convolutions), static int8 1.7x faster. A fused bundle's graph is calibrated
and scored with each validation image's own clinical values.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.errors import ConfigError, ModelError
from medlens.runtime.onnx_export import cpu_session, store_onnx_record

if TYPE_CHECKING:
    from medlens.classify.bundle import ClassifierBundle

MAX_AUC_DROP = 0.005
CALIBRATION_IMAGES = 256
KINDS = ("dynamic", "static")


def images_per_second(path: Path, feeds: dict[str, np.ndarray], repeats: int = 3) -> float:
    """Throughput at batch 64 on real images, best of ``repeats`` (after one warm-up pass)."""
    session, batch = cpu_session(path), {k: v[:64] for k, v in feeds.items()}
    session.run(None, batch)
    best = min(_timed(lambda: session.run(None, batch)) for _ in range(repeats))
    return float(len(batch["image"]) / best)


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _auc(path: Path, feeds: dict[str, np.ndarray], labels: np.ndarray, task: str) -> float:
    from sklearn.metrics import roc_auc_score

    session, n = cpu_session(path), len(feeds["image"])
    probs = np.concatenate(
        [session.run(None, {k: v[i : i + 256] for k, v in feeds.items()})[0] for i in range(0, n, 256)]
    )
    if task == "binary":
        return float(roc_auc_score(labels, probs[:, 1]))
    if task == "multiclass":
        return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    present = [
        j for j in range(labels.shape[1]) if 0 < labels[:, j].sum() < len(labels)
    ]  # a finding absent from a split has no AUC
    return float(np.mean([roc_auc_score(labels[:, j], probs[:, j]) for j in present]))


def _feeds(images: np.ndarray, clinical: np.ndarray | None) -> dict[str, np.ndarray]:
    """The graph's inputs: the raw images, and for a fused bundle each image's encoded clinical values."""
    feeds = {"image": np.ascontiguousarray(images, dtype=np.float32)}
    if clinical is not None:
        feeds["clinical"] = np.ascontiguousarray(clinical, dtype=np.float32)
    return feeds


def quantize_bundle(
    bundle: ClassifierBundle,
    kind: str,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    max_auc_drop: float = MAX_AUC_DROP,
    clinical: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write ``model.int8.onnx`` from the bundle's ``model.onnx``; keep it if the validation AUC holds.

    ``val`` and ``test`` are (images, labels); a fused bundle also needs ``clinical``, the two splits' encoded
    clinical values, which calibrate and score the graph's second input."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if kind not in KINDS:
        raise ConfigError(f"--quantize must be one of {', '.join(KINDS)}, got {kind!r}")
    record = bundle.manifest.get("onnx")
    if not record or not (bundle.path / record["file"]).is_file():
        raise ModelError(f"{bundle.path.name} has no model.onnx to quantize; export it first (medlens export)")
    fp32, target = bundle.path / record["file"], bundle.path / "model.int8.onnx"
    if (bundle.tabular is not None) != (clinical is not None):
        raise ConfigError(
            f"{bundle.path.name}: quantizing a fused bundle needs each image's clinical values, and only a fused one takes them"
        )
    val_x, test_x = (
        _feeds(val[0], clinical[0] if clinical else None),
        _feeds(test[0], clinical[1] if clinical else None),
    )
    n_val = len(val_x["image"])
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        if kind == "dynamic":
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
        else:
            batches = iter(
                [{k: v[i : i + 32] for k, v in val_x.items()} for i in range(0, min(n_val, CALIBRATION_IMAGES), 32)]
            )

            class Reader(CalibrationDataReader):
                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(batches, None)

            quantize_static(
                str(prepared),
                str(target),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    auc = {
        f"{split}_{which}": _auc(path, x, y, bundle.task)
        for split, (x, y) in (("val", (val_x, val[1])), ("test", (test_x, test[1])))
        for which, path in (("fp32", fp32), ("int8", target))
    }
    speed = {"fp32_images_per_s": images_per_second(fp32, val_x), "int8_images_per_s": images_per_second(target, val_x)}
    kept = auc["val_fp32"] - auc["val_int8"] <= max_auc_drop and speed["int8_images_per_s"] > speed["fp32_images_per_s"]
    result = {
        "kind": kind,
        "file": target.name,
        "kept": kept,
        "max_auc_drop": max_auc_drop,
        "decided_on": "validation AUC within the bound and faster than fp32 (batch 64, this CPU)",
        **auc,
        **speed,
        "calibration_images": min(n_val, CALIBRATION_IMAGES) if kind == "static" else 0,
        "inputs": sorted(val_x),
    }
    if not kept:
        target.unlink()
    store_onnx_record(bundle, {**record, "int8": result})
    return result
