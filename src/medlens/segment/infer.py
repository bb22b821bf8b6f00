"""Inference: sliding window with Gaussian weighting (MONAI), optional mirror TTA, largest-component post-processing,
label map back on the input's own grid, volumes in millilitres."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medlens.io.volume import resample_to_reference
from medlens.segment.plan import SegPlan
from medlens.segment.preprocess import needs_resampling, preprocess_image
from medlens.types import Volume


@torch.no_grad()
def predict_probabilities(model: nn.Module, image: np.ndarray, plan: SegPlan, tta: bool = False) -> torch.Tensor:
    """Softmax ``(C, X, Y, Z)`` for a preprocessed ``(1, X, Y, Z)`` image; 2D plans run slice by slice."""
    from monai.inferers import sliding_window_inference

    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # an ONNX Runtime module has no parameters: CPU
    x = torch.from_numpy(image).to(device)
    batch = x[None] if plan.dims == 3 else x.permute(3, 0, 1, 2)  # 2D: slices along the last axis as a batch

    def run(inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, enabled=device.type == "cuda"):  # mixed precision on a GPU, fp32 on CPU
            logits = sliding_window_inference(
                inputs,
                roi_size=plan.patch_size,
                sw_batch_size=4 if plan.dims == 3 else 32,
                predictor=model,
                overlap=0.5,
                mode="gaussian",
                padding_mode="constant",
            )
        return torch.softmax(logits.float(), dim=1).cpu()

    probs = run(batch)
    if tta:  # mirror along the plan's axes and average (nnU-Net's test-time augmentation, single flips)
        axes = [2 + a for a in plan.mirror_axes]
        for axis in axes:
            probs += run(batch.flip(axis)).flip(axis)
        probs /= 1 + len(axes)
    return probs[0] if plan.dims == 3 else probs.permute(1, 2, 3, 0)


def keep_largest_component(labels: np.ndarray, label_values: list[int]) -> np.ndarray:
    """Per label, keep only the largest connected component (MONAI's transform)."""
    from monai.transforms import KeepLargestConnectedComponent

    if not label_values:
        return labels
    kept = KeepLargestConnectedComponent(applied_labels=label_values, independent=True)(torch.from_numpy(labels[None]))
    return np.asarray(kept[0], dtype=labels.dtype)


def segment_volume(
    model: nn.Module, volume: Volume, plan: SegPlan, postprocess: list[int], tta: bool = False
) -> Volume:
    """A label map on ``volume``'s own grid (uint8 values as float32 in the Volume)."""
    image, grid = preprocess_image(volume, plan)
    labels = predict_probabilities(model, image, plan, tta).argmax(0).numpy().astype(np.uint8)
    labels = keep_largest_component(labels, postprocess)
    result = grid.with_array(labels.astype(np.float32))
    if needs_resampling(volume, plan):
        result = resample_to_reference(result, volume, "nearest")
    return Volume(
        array=np.rint(result.array).astype(np.float32),
        affine=volume.affine,
        meta={"name": volume.meta.get("name", "segmentation"), "kind": "label map"},
    )


def label_volumes_ml(labels: Volume, label_names: dict[int, str]) -> dict[str, float]:
    """Millilitres per foreground label: voxel count times voxel volume."""
    voxel_ml = float(np.prod(labels.spacing_mm)) / 1000.0
    return {
        name: round(float((labels.array == value).sum()) * voxel_ml, 4) for value, name in label_names.items() if value
    }
