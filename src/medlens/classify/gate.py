"""Fit a classifier's out-of-distribution gate (:mod:`medlens.models.ood`) on its own training data."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from medlens.datasets import ClassificationData
from medlens.models.ood import FALSE_FLAG_RATE, OodGate, embeddings, fit_gate
from medlens.preprocess import Preprocessing
from medlens.preprocess.pipeline import normalized_inputs


def fit_classifier_gate(
    model: nn.Module,
    data: ClassificationData,
    prep: Preprocessing,
    tabular: Any = None,
    false_flag_rate: float = FALSE_FLAG_RATE,
) -> tuple[OodGate, dict[str, Any]]:
    """The gate fitted on the training split's features, its threshold set on the validation split's.

    ``tabular``: a fused bundle's clinical encoder (its features are part of the head's input).
    """
    features = {}
    for name in ("train", "val"):
        split = data.split(name)
        inputs: Any = normalized_inputs(split, prep)
        if tabular is not None:
            inputs = (inputs, tabular.transform(split.metadata, f"{data.name}: {name} split"))
        features[name] = embeddings(model, inputs)
    return fit_gate(features["train"], np.asarray(data.split("train").labels), features["val"], false_flag_rate)
