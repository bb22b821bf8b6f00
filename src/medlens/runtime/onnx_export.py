"""Export a classification bundle to ONNX with its preprocessing in the graph.

The exported graph takes *raw* intensities, exactly what a reader returns after
the bundle's input checks (and resize, where the bundle does one), and returns
calibrated probabilities: intensity mapping (or CT window), standardisation,
the network, the bundle's temperature and softmax/sigmoid are all inside it,
so a deployment needs no medlens code to get the same numbers. The export is
checked on real images against PyTorch, and the largest difference is stored
in ``bundle.json`` beside the file name. A fused bundle's graph has a second
input, ``clinical``: the encoded clinical values (``(N, n_features)``, from the
bundle's ``tabular.skops`` encoder, which stays in Python like the image reader).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medlens.bundle.manifest import MANIFEST
from medlens.errors import ModelError
from medlens.models.probs import logits_to_probabilities
from medlens.preprocess.pipeline import Preprocessing, normalize_intensity

if TYPE_CHECKING:
    from medlens.classify.bundle import ClassifierBundle

ONNX_FILE = "model.onnx"
OPSET = 18
TOLERANCE = 1e-4  # largest allowed |probability difference| between ONNX Runtime and PyTorch


def export_module(
    module: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    target: Path,
    output: str,
    input_names: tuple[str, ...] = ("image",),
) -> None:
    """torch.export-based ONNX export with a dynamic batch axis, without the exporter's internal chatter."""
    examples = example if isinstance(example, tuple) else (example,)
    batch = torch.export.Dim("batch")
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx")]
    levels = [logger.level for logger in quiet]
    with warnings.catch_warnings():  # the exporter warns about its own internals; nothing a user can act on
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="# The axis name")  # two inputs share the batch axis: intended
        for logger in quiet:
            logger.setLevel(logging.ERROR)
        try:
            torch.onnx.export(
                module,
                examples,
                str(target),
                input_names=list(input_names),
                output_names=[output],
                dynamic_shapes=tuple({0: batch} for _ in examples),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        finally:
            for logger, level in zip(quiet, levels):
                logger.setLevel(level)


def cpu_session(path: Path) -> Any:
    """An ONNX Runtime session on the CPU with every graph optimisation on: the one way medlens opens a graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def store_onnx_record(bundle: Any, record: dict[str, Any]) -> None:
    """Write ``record`` as the ``onnx`` entry of the bundle's ``bundle.json`` (and of the loaded manifest)."""
    manifest = json.loads((bundle.path / MANIFEST).read_text())
    manifest["onnx"] = record
    (bundle.path / MANIFEST).write_text(json.dumps(manifest, indent=1))
    bundle.manifest["onnx"] = record


class RawToProbabilities(nn.Module):
    """raw image (+ encoded clinical values, fused bundles) -> the bundle's normalisation -> network -> logits / T
    -> probabilities."""

    def __init__(self, model: nn.Module, prep: Preprocessing, task: str, temperature: float) -> None:
        super().__init__()
        self.model, self.prep, self.task, self.temperature = model, prep, task, temperature

    def forward(self, raw: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        image = normalize_intensity(raw, self.prep)
        logits = self.model(image) if clinical is None else self.model(image, clinical)
        return logits_to_probabilities(logits, self.task, self.temperature)


def export_onnx(
    bundle: ClassifierBundle,
    check_images: np.ndarray,
    out: Path | None = None,
    check_clinical: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write ``model.onnx`` into the bundle (or ``out``), check it on ``check_images`` (raw, ``(N, C, ...)``) and,
    for a fused bundle, their encoded clinical values ``check_clinical`` ``(N, n_features)``.

    Returns the record stored under ``onnx`` in ``bundle.json``. Raises ModelError
    when ONNX Runtime disagrees with PyTorch by more than :data:`TOLERANCE`.
    """
    import onnxruntime as ort

    if (bundle.tabular is not None) != (check_clinical is not None):
        raise ModelError(
            f"{bundle.path.name}: the export check needs encoded clinical values exactly when the bundle fuses them"
        )
    target = out or bundle.path / ONNX_FILE
    wrapper = RawToProbabilities(bundle.model.eval(), bundle.preprocessing, bundle.task, bundle.temperature).eval()
    feeds = {"image": np.ascontiguousarray(check_images, dtype=np.float32)}
    if check_clinical is not None:
        feeds["clinical"] = np.ascontiguousarray(check_clinical, dtype=np.float32)
    export_module(wrapper, tuple(torch.as_tensor(v[:2]) for v in feeds.values()), target, "probabilities", tuple(feeds))
    session = cpu_session(target)
    x = feeds["image"]
    with torch.no_grad():
        expected = wrapper(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    got = session.run(None, feeds)[0]
    diff = float(np.abs(got - expected).max())
    if diff > TOLERANCE:
        raise ModelError(
            f"ONNX export of {bundle.path.name} differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}) on "
            f"{len(x)} real images; keep using --backend torch and report this"
        )
    record = {
        "file": target.name,
        "opset": OPSET,
        "input": "raw intensities (N, C, ...) after the bundle's input "
        "checks; preprocessing, temperature and softmax are in the graph",
        "checked_images": int(len(x)),
        **(
            {
                "clinical_input": "clinical: (N, n_features) float32, the bundle's tabular.skops encoding of the "
                "clinical columns (medlens.tabular.encode)"
            }
            if check_clinical is not None
            else {}
        ),
        "max_abs_difference": diff,
        "tolerance": TOLERANCE,
        "onnxruntime": ort.__version__,
    }
    if out is None:
        store_onnx_record(bundle, record)
    return record


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call, so MONAI's sliding window can drive it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.session = cpu_session(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"image": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(out)
