"""int8 quantization of an exported classifier with ONNX Runtime's quantizer, kept only if it costs no accuracy.

``dynamic`` quantizes weights ahead of time and activations on the fly;
``static`` (QDQ, per-channel weights) calibrates activation ranges on real
validation images. The quantized graph is kept, and used by the
``onnxruntime`` backend, only when its AUC on the *validation* split is within
``max_auc_drop`` of the fp32 graph's (decided before any test image is seen)
*and* it runs faster than fp32 on this CPU; the test-split figures are measured
and stored beside the decision. Measured
here on PneumoniaMNIST: dynamic int8 was 5x *slower* than fp32 (integer
convolutions), static int8 1.7x faster.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import ConfigError, ModelError
from medlens.models.bundle import Bundle
from medlens.runtime.onnx_export import cpu_session, store_onnx_record

MAX_AUC_DROP = 0.005
CALIBRATION_IMAGES = 256
KINDS = ("dynamic", "static")


def images_per_second(path: Path, images: np.ndarray, repeats: int = 3) -> float:
    """Throughput at batch 64 on real images, best of ``repeats`` (after one warm-up pass)."""
    session, batch = cpu_session(path), images[:64]
    session.run(None, {"image": batch})
    best = min(_timed(lambda: session.run(None, {"image": batch})) for _ in range(repeats))
    return float(len(batch) / best)


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _auc(path: Path, images: np.ndarray, labels: np.ndarray, task: str) -> float:
    from sklearn.metrics import roc_auc_score

    session = cpu_session(path)
    probs = np.concatenate([session.run(None, {"image": images[i : i + 256]})[0] for i in range(0, len(images), 256)])
    if task == "binary":
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro")) if task == "multiclass" \
        else float(roc_auc_score(labels, probs, average="macro"))


def quantize_bundle(bundle: Bundle, kind: str, val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                    max_auc_drop: float = MAX_AUC_DROP) -> dict[str, Any]:
    """Write ``model.int8.onnx`` from the bundle's ``model.onnx``; keep it if the validation AUC holds."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if kind not in KINDS:
        raise ConfigError(f"--quantize must be one of {', '.join(KINDS)}, got {kind!r}")
    record = bundle.manifest.get("onnx")
    if not record or not (bundle.path / record["file"]).is_file():
        raise ModelError(f"{bundle.path.name} has no model.onnx to quantize; export it first (medlens export)")
    fp32, target = bundle.path / record["file"], bundle.path / "model.int8.onnx"
    val_x, test_x = (np.ascontiguousarray(a, dtype=np.float32) for a in (val[0], test[0]))
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        if kind == "dynamic":
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
        else:
            batches = iter([{"image": val_x[i : i + 32]} for i in range(0, min(len(val_x), CALIBRATION_IMAGES), 32)])

            class Reader(CalibrationDataReader):
                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(batches, None)

            quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    auc = {f"{split}_{which}": _auc(path, x, y, bundle.task)
           for split, (x, y) in (("val", (val_x, val[1])), ("test", (test_x, test[1])))
           for which, path in (("fp32", fp32), ("int8", target))}
    speed = {"fp32_images_per_s": images_per_second(fp32, val_x), "int8_images_per_s": images_per_second(target, val_x)}
    kept = auc["val_fp32"] - auc["val_int8"] <= max_auc_drop and speed["int8_images_per_s"] > speed["fp32_images_per_s"]
    result = {"kind": kind, "file": target.name, "kept": kept, "max_auc_drop": max_auc_drop,
              "decided_on": "validation AUC within the bound and faster than fp32 (batch 64, this CPU)", **auc, **speed,
              "calibration_images": min(len(val_x), CALIBRATION_IMAGES) if kind == "static" else 0}
    if not kept:
        target.unlink()
    store_onnx_record(bundle, {**record, "int8": result})
    return result
