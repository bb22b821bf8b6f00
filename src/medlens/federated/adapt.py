"""Make a federated model fit one hospital: fine-tuning on the site's small labelled set, and test-time adaptation.

Fine-tuning continues training the global model on the site's own training
images for a few epochs at a lower learning rate and keeps the epoch with the
best AUC on the site's validation cases (the site's test set is only scored).

Test-time adaptation needs no labels: Tent (Wang et al., ICLR 2021) minimises
the entropy of the model's predictions on the site's unlabelled test images,
updating only channel-wise parameters (the affine scale and shift of the
normalisation layers, and PReLU slopes where the net has them) and, for
BatchNorm nets, using the site's own batch statistics. A net with neither
(no affine normalisation, no PReLU) has nothing to adapt and is returned as is,
with ``adapted_parameters = 0`` in the report.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.federated.local import SiteData, train_locally
from medlens.models.probs import predict_proba


def site_auc(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float | None:
    """ROC AUC of ``model`` on the cases, or None when they hold one class only."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, predict_proba(model, x, "binary")[:, 1]))


def finetune(
    model: nn.Module, site: SiteData, epochs: int = 5, lr: float = 3e-4, batch_size: int = 32, seed: int = 0
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` trained on the site's training images; the epoch chosen on the site's validation AUC."""
    tuned = copy.deepcopy(model)
    best_auc, best_epoch, best_state = site_auc(tuned, site.x_val, site.y_val), 0, copy.deepcopy(tuned.state_dict())
    history = [best_auc]
    for epoch in range(1, epochs + 1):
        train_locally(tuned, site, 1, lr, batch_size, seed=seed + epoch)
        auc = site_auc(tuned, site.x_val, site.y_val)
        history.append(auc)
        if auc is not None and (best_auc is None or auc > best_auc):
            best_auc, best_epoch, best_state = auc, epoch, copy.deepcopy(tuned.state_dict())
    if best_auc is None:  # a single-class validation set cannot choose: keep the last epoch and say so
        best_epoch, best_state = epochs, copy.deepcopy(tuned.state_dict())
    tuned.load_state_dict(best_state)
    return tuned, {"epochs": epochs, "lr": lr, "selected_epoch": best_epoch, "val_auc": history}


def _channelwise(model: nn.Module) -> list[nn.Parameter]:
    params = []
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.PReLU)):
            params += [p for p in module.parameters(recurse=False) if p is not None]
    return params


def adapt_at_test_time(
    model: nn.Module, x: np.ndarray, steps: int = 1, lr: float = 1e-3, batch_size: int = 64, seed: int = 0
) -> tuple[nn.Module, dict[str, Any]]:
    """Tent: a copy of ``model`` whose channel-wise parameters minimise prediction entropy on unlabelled ``x``."""
    adapted = copy.deepcopy(model)
    adapted.requires_grad_(False)
    params = _channelwise(adapted)
    for p in params:
        p.requires_grad_(True)
    report = {"method": "tent", "adapted_parameters": int(sum(p.numel() for p in params)), "steps": steps, "lr": lr}
    if not params:
        return adapted, report
    adapted.train()  # BatchNorm uses the site's batch statistics
    for module in adapted.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(x)
    for _ in range(steps):
        for batch in torch.randperm(len(data), generator=generator).split(batch_size):
            if len(batch) < 2:
                continue
            probs = adapted(data[batch]).softmax(1)
            entropy = -(probs * probs.clamp_min(1e-8).log()).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            entropy.backward()
            optimizer.step()
    adapted.eval()
    return adapted, report
