"""Which engine runs a classification bundle: PyTorch, or ONNX Runtime on the exported graph.

``auto`` picks ONNX Runtime when the bundle has a checked ``model.onnx`` and
onnxruntime is installed (measured faster on CPU, see ``benchmarks/``), and
PyTorch otherwise. Both take the same raw, checked images and give the same
calibrated probabilities (within the tolerance stored at export).
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.errors import ConfigError, ModelError
from medlens.preprocess.pipeline import normalize_intensity
from medlens.runtime.onnx_export import OnnxModule, cpu_session

if TYPE_CHECKING:
    from medlens.classify.bundle import ClassifierBundle

BACKENDS = ("auto", "torch", "onnxruntime")
DEVICES = ("auto", "cpu", "cuda")


def onnx_path(bundle: Any) -> Path | None:
    """The graph the onnxruntime backend runs: the int8 one when it was kept (``medlens export --quantize``)."""
    record = bundle.manifest.get("onnx")
    if not record:
        return None
    int8 = record.get("int8", {})
    for name in ([int8["file"]] if int8.get("kept") else []) + [record["file"]]:
        if (bundle.path / name).is_file():
            return bundle.path / name
    return None


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return bool(onnxruntime.get_available_providers())


def choose_backend(bundle: Any, requested: str = "auto") -> str:
    if requested not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "torch":
        return "torch"
    available = onnx_path(bundle) is not None and _has_onnxruntime()
    if requested == "onnxruntime" and not available:
        why = "onnxruntime is not installed" if onnx_path(bundle) else "the bundle has no model.onnx"
        raise ModelError(
            f"--backend onnxruntime: {why}; run `medlens export {bundle.path} --format onnx` first "
            "(pip install onnxruntime if needed), or use --backend torch"
        )
    return "onnxruntime" if available else "torch"


@lru_cache(maxsize=8)
def _session(path: str, mtime: float) -> Any:
    """One cached session per graph file (and version of it) for repeated batches."""

    return cpu_session(Path(path))


def predict_raw(
    bundle: ClassifierBundle, raw: np.ndarray, backend: str = "auto", clinical: np.ndarray | None = None
) -> np.ndarray:
    """Calibrated probabilities for raw, checked images ``(N, C, ...)`` with the chosen backend; a fused bundle
    also takes their encoded clinical values ``(N, n_features)``."""
    if (bundle.tabular is not None) != (clinical is not None):
        raise ModelError(f"{bundle.path.name}: encoded clinical values are needed exactly when the bundle fuses them")
    if choose_backend(bundle, backend) == "onnxruntime":
        path = onnx_path(bundle) or bundle.path  # choose_backend has checked that the file exists
        session = _session(str(path), path.stat().st_mtime)
        feeds = {"image": np.ascontiguousarray(raw, dtype=np.float32)}
        if clinical is not None:
            feeds["clinical"] = np.ascontiguousarray(clinical, dtype=np.float32)
        return session.run(None, feeds)[0]
    inputs = normalize_intensity(np.asarray(raw, dtype=np.float32), bundle.preprocessing)
    return bundle.predict_proba(inputs if clinical is None else (inputs, clinical))


def with_backend(seg_bundle: Any, requested: str = "auto") -> Any:
    """A segmentation bundle whose network runs on the chosen backend (sliding window and pre-steps unchanged)."""
    if choose_backend(seg_bundle, requested) == "torch":
        return seg_bundle

    return replace(seg_bundle, model=OnnxModule(onnx_path(seg_bundle) or seg_bundle.path))


def place_on_device(bundle: Any, backend: str = "auto", device: str = "auto") -> tuple[Any, str]:
    """Move the bundle's network to a CUDA GPU when asked (or when ``auto`` finds one) and say which backend runs it.

    A GPU runs PyTorch (with mixed precision): the onnxruntime installed with
    medlens is the CPU build. Without a GPU nothing changes, so ``auto``
    works on every machine; ``--device cuda`` without one is refused.
    """
    import torch

    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if device == "cpu" or (device == "auto" and (backend == "onnxruntime" or not torch.cuda.is_available())):
        return bundle, backend
    if backend == "onnxruntime":
        raise ConfigError("--backend onnxruntime runs on the CPU; use --backend torch (or auto) with --device cuda")
    bundle.model.to(torch.device("cuda"))
    return bundle, "torch"
