"""Export a classification bundle to ONNX with its preprocessing in the graph.

The exported graph takes *raw* intensities, exactly what a reader returns after
the bundle's input checks (and resize, where the bundle does one), and returns
calibrated probabilities: intensity mapping (or CT window), standardisation,
the network, the bundle's temperature and softmax/sigmoid are all inside it,
so a deployment needs no medlens code to get the same numbers. The export is
checked on real images against PyTorch, and the largest difference is stored
in ``bundle.json`` beside the file name.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.errors import ModelError
from medlens.models.bundle import MANIFEST, Bundle
from medlens.preprocess.pipeline import Preprocessing, normalize_intensity

ONNX_FILE = "model.onnx"
OPSET = 18
TOLERANCE = 1e-4  # largest allowed |probability difference| between ONNX Runtime and PyTorch


class RawToProbabilities(nn.Module):
    """raw image -> the bundle's normalisation -> network -> logits / T -> probabilities."""

    def __init__(self, model: nn.Module, prep: Preprocessing, task: str, temperature: float) -> None:
        super().__init__()
        self.model, self.prep, self.task, self.temperature = model, prep, task, temperature

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        logits = self.model(normalize_intensity(raw, self.prep)) / self.temperature
        return torch.sigmoid(logits) if self.task == "multilabel" else torch.softmax(logits, dim=1)


def export_onnx(bundle: Bundle, check_images: np.ndarray, out: Path | None = None) -> dict[str, Any]:
    """Write ``model.onnx`` into the bundle (or ``out``), check it on ``check_images`` (raw, ``(N, C, ...)``).

    Returns the record stored under ``onnx`` in ``bundle.json``. Raises ModelError
    when ONNX Runtime disagrees with PyTorch by more than :data:`TOLERANCE`.
    """
    import onnxruntime as ort

    target = out or bundle.path / ONNX_FILE
    wrapper = RawToProbabilities(bundle.model.eval(), bundle.preprocessing, bundle.task, bundle.temperature).eval()
    example = torch.as_tensor(check_images[:2], dtype=torch.float32)
    with warnings.catch_warnings():  # torch's exporter warns about its own internals; nothing a user can act on
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapper, (example,), str(target), input_names=["image"], output_names=["probabilities"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=OPSET,
                          dynamo=True, external_data=False, verbose=False)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(check_images, dtype=np.float32)
    with torch.no_grad():
        expected = wrapper(torch.from_numpy(x)).numpy()
    got = session.run(None, {"image": x})[0]
    diff = float(np.abs(got - expected).max())
    if diff > TOLERANCE:
        raise ModelError(f"ONNX export of {bundle.path.name} differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}) on "
                         f"{len(x)} real images; keep using --backend torch and report this")
    record = {"file": target.name, "opset": OPSET, "input": "raw intensities (N, C, ...) after the bundle's input "
              "checks; preprocessing, temperature and softmax are in the graph", "checked_images": int(len(x)),
              "max_abs_difference": diff, "tolerance": TOLERANCE, "onnxruntime": ort.__version__}
    if out is None:
        manifest = json.loads((bundle.path / MANIFEST).read_text())
        manifest["onnx"] = record
        (bundle.path / MANIFEST).write_text(json.dumps(manifest, indent=1))
        bundle.manifest["onnx"] = record
    return record


def check_exportable(bundle: Bundle) -> None:
    if bundle.task not in ("binary", "multiclass", "multilabel"):
        raise ModelError(f"{bundle.path.name}: ONNX export covers classification bundles here, not {bundle.task!r}")
