"""ONNX export of a segmenter's network: one patch in, logits out, checked with the whole sliding window."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import torch

from medlens.errors import ModelError
from medlens.io.volume import load_volume
from medlens.runtime.onnx_export import ONNX_FILE, OPSET, TOLERANCE, OnnxModule, export_module, store_onnx_record
from medlens.segment.infer import predict_probabilities
from medlens.segment.preprocess import preprocess_image

if TYPE_CHECKING:
    from medlens.segment.bundle import SegmenterBundle


def export_segmentation_onnx(bundle: SegmenterBundle, check_image: Path) -> dict[str, Any]:
    """Export a segmentation bundle's network (one patch in, logits out; batch dynamic) and check it on a real case.

    Resampling, intensity normalisation and the sliding window stay in Python (the
    documented pre-step, :func:`medlens.segment.preprocess.preprocess_image`), because
    they depend on each case's geometry; the check runs the whole sliding window
    both ways on ``check_image`` and compares the class probabilities.
    """

    plan, target = bundle.plan, bundle.path / ONNX_FILE
    example = torch.zeros((2, 1, *plan.patch_size), dtype=torch.float32)
    export_module(bundle.model.eval(), example, target, "logits")
    image, _grid = preprocess_image(load_volume(check_image), plan)
    expected = predict_probabilities(bundle.model, image, plan).numpy()
    got = predict_probabilities(OnnxModule(target), image, plan).numpy()
    diff = float(np.abs(got - expected).max())
    if diff > TOLERANCE:
        raise ModelError(
            f"ONNX export of {bundle.path.name} differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}) on "
            f"{check_image.name}; keep using --backend torch and report this"
        )
    record = {
        "file": target.name,
        "opset": OPSET,
        "input": "one preprocessed patch (N, 1, *patch_size): resample to "
        "the plan's spacing and normalise first (medlens.segment.preprocess.preprocess_image); sliding window "
        "outside the graph",
        "checked_on": check_image.name,
        "max_abs_difference": diff,
        "tolerance": TOLERANCE,
        "onnxruntime": ort.__version__,
    }
    store_onnx_record(bundle, record)
    return record
