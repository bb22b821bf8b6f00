"""Where did the model look: saliency maps on the input grid, for 2D and 3D classifiers.

Explainers are registered by name: ``gradcam`` and ``gradcam++`` (MONAI's
implementations, which upsample the layer's map to the input size in 2D *and*
3D, where pytorch-grad-cam users report failures), ``occlusion`` (Captum:
the drop in the class probability when a patch is hidden) and ``integrated-gradients`` (Captum, from a black image). Every map is
``(N, *spatial)`` on the model's input grid, scaled to [0, 1], for the class the
bundle predicts unless another is asked for.

The CAM methods need a convolutional layer; by default the last module whose
output is still a spatial feature map (e.g. ``layer4`` of a ResNet). Asking for
a layer the model does not have is an error that lists the candidates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from medlens.errors import ModelError
from medlens.registry import Registry


@dataclass(frozen=True)
class ExplainOptions:
    layer: str | None = None  # CAM target layer; None = the last spatial feature map
    occlusion_mask: int | None = None  # occlusion patch size in pixels; None = 1/7 of the image side
    ig_steps: int = 32
    baseline: float = 0.0  # model-input value of "no signal" (integrated gradients, deletion curves)


ExplainFn = Callable[[nn.Module, torch.Tensor, int, ExplainOptions], np.ndarray]
EXPLAINERS: Registry[ExplainFn] = Registry("explainer")


def spatial_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of modules whose output is a spatial feature map bigger than 1 pixel, in execution order.

    A module run more than once in a pass (EfficientNet's one shared activation, say) is left out: a CAM hook on
    it would pair one call's activations with another call's gradients.
    """
    spatial_dims = example.ndim - 2
    seen: list[str] = []
    calls: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(_m: nn.Module, _args: object, out: object, name: str = name) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor) and out.ndim == 2 + spatial_dims and max(out.shape[2:]) > 1:
                seen.append(name)

        hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return [name for name in seen if calls[name] == 1]


def default_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The last module (the outermost, when containers finish together) that outputs a spatial map."""
    layers = spatial_layers(model, example)
    if not layers:
        raise ModelError(
            "Grad-CAM needs a convolutional layer with a spatial output, and this network has none; "
            "use --method occlusion or integrated-gradients"
        )
    last = layers[-1]
    containers = [n for n in layers if last.startswith(n + ".")]  # e.g. layer4 finishes right after layer4.1.relu
    return containers[0] if containers else last


def check_layer(model: nn.Module, example: torch.Tensor, layer: str) -> None:
    names = dict(model.named_modules())
    if layer not in names:
        candidates = spatial_layers(model, example)[-8:]
        raise ModelError(
            f"the network has no layer {layer!r}; layers with a spatial output (last 8): "
            f"{', '.join(candidates) or 'none'}"
        )
    if layer not in spatial_layers(model, example):
        raise ModelError(
            f"layer {layer!r} does not output a spatial feature map, so Grad-CAM cannot use it; "
            f"try {default_layer(model, example)!r}"
        )


def _cam(kind: str) -> ExplainFn:
    def explain(model: nn.Module, x: torch.Tensor, class_idx: int, opts: ExplainOptions) -> np.ndarray:
        from monai.visualize import GradCAM, GradCAMpp

        layer = opts.layer or default_layer(model, x)
        cam = (GradCAM if kind == "gradcam" else GradCAMpp)(nn_module=model, target_layers=layer)
        with torch.enable_grad():
            return cam(x=x.clone().requires_grad_(True), class_idx=class_idx).detach().cpu().numpy()[:, 0]

    return explain


def _occlusion(model: nn.Module, x: torch.Tensor, class_idx: int, opts: ExplainOptions) -> np.ndarray:
    """Captum's occlusion on the class probability: patches of 1/7 of the side, half-overlapping (2D)."""
    from captum.attr import Occlusion

    size = opts.occlusion_mask or max(2, min(x.shape[2:]) // 7)
    stride = max(1, size // 2) if x.ndim == 4 else size
    occlusion = Occlusion(lambda inp: torch.softmax(model(inp), dim=1))
    with torch.no_grad():
        attr = occlusion.attribute(
            x,
            target=class_idx,
            sliding_window_shapes=(x.shape[1], *[size] * (x.ndim - 2)),
            strides=(x.shape[1], *[stride] * (x.ndim - 2)),
            baselines=opts.baseline,
            perturbations_per_eval=64,
        )
    return _unit(attr.sum(dim=1).clamp(min=0).cpu().numpy())


def _integrated_gradients(model: nn.Module, x: torch.Tensor, class_idx: int, opts: ExplainOptions) -> np.ndarray:
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(model)
    with torch.enable_grad():
        attr = ig.attribute(
            x,
            baselines=torch.full_like(x, opts.baseline),
            target=class_idx,
            n_steps=opts.ig_steps,
            internal_batch_size=opts.ig_steps,
        )
    return _unit(attr.abs().sum(dim=1).detach().cpu().numpy(), robust=True)


def _unit(maps: np.ndarray, robust: bool = False) -> np.ndarray:
    """Scale each map to [0, 1] (by its 99th percentile when ``robust``: gradients have a few huge pixels)."""
    out = np.empty_like(maps, dtype=np.float32)
    for i, m in enumerate(maps):
        m = m - m.min()
        top = np.percentile(m, 99) if robust else m.max()
        out[i] = np.clip(m / top, 0, 1) if top > 0 else m
    return out


EXPLAINERS.add("gradcam", _cam("gradcam"))
EXPLAINERS.add("gradcam++", _cam("gradcam++"))
EXPLAINERS.add("occlusion", _occlusion)
EXPLAINERS.add("integrated-gradients", _integrated_gradients)


def explain(
    model: nn.Module,
    inputs: np.ndarray,
    method: str = "gradcam",
    classes: list[int] | None = None,
    opts: ExplainOptions = ExplainOptions(),
) -> np.ndarray:
    """Saliency maps ``(N, *spatial)`` in [0, 1] for normalised inputs ``(N, C, *spatial)``.

    ``classes`` gives the class to explain per case; by default the arg-max class.
    """
    fn = EXPLAINERS.get(method)
    model.eval()
    x_all = torch.as_tensor(inputs, dtype=torch.float32)
    if method.startswith("gradcam") and len(x_all):  # find / check the layer once, not per image
        if opts.layer is None:
            opts = replace(opts, layer=default_layer(model, x_all))
        else:
            check_layer(model, x_all, opts.layer)
    if classes is None:
        with torch.no_grad():
            classes = model(x_all).argmax(dim=1).tolist()
    return np.concatenate([fn(model, x_all[i : i + 1], int(classes[i]), opts) for i in range(len(x_all))])
