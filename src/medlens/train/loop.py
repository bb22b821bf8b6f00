"""A small, resumable training loop: AdamW, warmup + cosine schedule, early stopping.

The task decides *what* (loss, validation score); this loop decides *how*.
After every epoch it writes ``last.pt`` (model, optimiser, scheduler, epoch,
history, RNG state) so an interrupted run resumes where it stopped, and keeps
the weights of the best validation epoch. Test data never reaches this loop.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.errors import ConfigError
from medlens.train.distributed import broadcast_from_main, is_main_process, mean_across_processes, wrap_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopOptions:
    epochs: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    patience: int
    device: torch.device
    memory_format: torch.memory_format = torch.contiguous_format  # channels_last: 1.2-1.4x faster 2D on CPU
    show_progress: bool = True
    schedule: str = "cosine"  # "cosine" (warmup + cosine) or "poly" (nnU-Net: (1 - t/T)^0.9)
    mixed_precision: bool = True  # autocast on CUDA (bf16 where supported, else fp16 with loss scaling); CPU stays fp32
    head_names: frozenset[str] = frozenset()  # the head's parameters; the rest is the encoder
    freeze_epochs: int = 0  # epochs that train the head only (needs head_names)
    encoder_lr_scale: float = 1.0  # the encoder's learning rate relative to the head's
    loss_takes_model: bool = False  # loss_fn(model, inputs, targets): models that compute their own loss (detectors)


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    best_state: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0


Batch = tuple[torch.Tensor, torch.Tensor]


def fit(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    train_batches: Collection[Batch],
    score_val: Callable[[nn.Module], dict[str, float]],
    options: LoopOptions,
    checkpoint_dir: Path,
    run_key: str = "",
) -> FitResult:
    """Train ``model`` and return the best validation epoch's weights.

    ``train_batches`` is iterated once per epoch (a DataLoader);
    ``score_val(model)`` returns a dict whose ``"score"`` is maximised
    (e.g. validation AUC). ``run_key`` identifies the run's settings: a
    checkpoint written under another key is refused rather than resumed.
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    model.to(options.device, memory_format=options.memory_format)
    steps_per_epoch = max(1, len(train_batches))
    optimizer = torch.optim.AdamW(_parameter_groups(model, options), lr=options.lr, weight_decay=options.weight_decay)
    total_steps = options.epochs * steps_per_epoch
    factor = (
        _poly(total_steps)
        if options.schedule == "poly"
        else _warmup_cosine(options.warmup_epochs * steps_per_epoch, total_steps)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    state = _resume(checkpoint_dir / "last.pt", model, optimizer, scheduler, run_key)
    result = FitResult(
        state["best_epoch"], state["best_score"], state["best_state"], state["history"], seconds=state["seconds"]
    )
    started = time.perf_counter() - state["seconds"]
    main = is_main_process()
    trained = wrap_model(model, options.device)  # DDP under torchrun (after resuming: it broadcasts rank 0's weights)
    scaler = torch.amp.GradScaler("cuda", enabled=_autocast_dtype(options) == torch.float16)
    for epoch in range(state["epoch"] + 1, options.epochs):
        sampler = getattr(train_batches, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # a DistributedSampler reshuffles per epoch only when told the epoch
        _freeze_encoder(model, options, frozen=epoch < options.freeze_epochs)
        train_loss = mean_across_processes(
            _train_one_epoch(trained, loss_fn, train_batches, optimizer, scheduler, scaler, options, epoch)
        )
        model.eval()
        scores = broadcast_from_main(score_val(model) if main else None)
        result.history.append({"epoch": epoch, "train_loss": train_loss, **scores})
        if scores["score"] > result.best_score:
            result.best_epoch, result.best_score = epoch, scores["score"]
            result.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        log.info("epoch %d: train loss %.4f, val %s", epoch, train_loss, _fmt(scores))
        result.seconds = time.perf_counter() - started
        if main:
            _save(checkpoint_dir, epoch, model, optimizer, scheduler, result, run_key)
        if epoch - result.best_epoch >= options.patience:
            result.stopped_early = True
            log.info("early stop: no validation gain for %d epochs", options.patience)
            break
    return result


def _parameter_groups(model: nn.Module, options: LoopOptions) -> list[dict[str, Any]]:
    """One group, or encoder and head apart when the encoder learns at its own rate (discriminative LRs)."""
    if not options.head_names:
        return [{"params": list(model.parameters())}]
    named = dict(model.named_parameters())
    head = [p for n, p in named.items() if n in options.head_names]
    encoder = [p for n, p in named.items() if n not in options.head_names]
    return [{"params": encoder, "lr": options.lr * options.encoder_lr_scale}, {"params": head, "lr": options.lr}]


def _freeze_encoder(model: nn.Module, options: LoopOptions, frozen: bool) -> None:
    """While frozen the encoder gets no gradients (AdamW skips it) and its BatchNorm statistics stay as loaded."""
    if not options.freeze_epochs:
        return
    for name, parameter in model.named_parameters():
        if name not in options.head_names:
            parameter.requires_grad_(not frozen)


def _hold_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _poly(total_steps: int, exponent: float = 0.9) -> Callable[[int], float]:
    def factor(step: int) -> float:
        return max(0.0, 1 - step / max(1, total_steps)) ** exponent

    return factor


def _warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _to_device(inputs: Any, options: LoopOptions) -> Any:
    """An image batch, or (image, clinical features) for fused models: the image in the loop's memory format."""
    if isinstance(inputs, (tuple, list)):
        return (_to_device(inputs[0], options), *(t.to(options.device, non_blocking=True) for t in inputs[1:]))
    return inputs.to(options.device, memory_format=options.memory_format, non_blocking=True)


def _targets_to_device(targets: Any, device: torch.device) -> Any:
    """A label tensor, or a detector's list of per-image ``{"boxes", "labels"}`` dicts, on ``device``."""
    if isinstance(targets, list):
        return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    return targets.to(device, non_blocking=True)


def _train_one_epoch(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Collection[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    options: LoopOptions,
    epoch: int,
) -> float:
    from rich.progress import Progress

    model.train()
    if epoch < options.freeze_epochs:
        _hold_batchnorm(model)
    total, count = 0.0, 0
    amp_dtype = _autocast_dtype(options)
    with Progress(transient=True, disable=not options.show_progress) as progress:
        task = progress.add_task(f"epoch {epoch + 1}/{options.epochs}", total=len(batches))
        for inputs, targets in batches:
            inputs = _to_device(inputs, options)
            targets = _targets_to_device(targets, options.device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(options.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                if options.loss_takes_model:
                    loss = loss_fn(model, inputs, targets)  # type: ignore[call-arg]
                else:
                    loss = loss_fn(model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs), targets)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += loss.item() * len(targets)
            count += len(targets)
            progress.advance(task)
    return total / max(count, 1)


def _autocast_dtype(options: LoopOptions) -> torch.dtype | None:
    """bf16 on GPUs that have it, else fp16 (with loss scaling); ``None`` (fp32) on CPU.

    On CPU, bf16 autocast measured 15x *slower* on a CPU without BF16
    instructions (benchmarks/results/train_speed.json), so it stays off there.
    """
    if not options.mixed_precision or options.device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _save(
    checkpoint_dir: Path, epoch: int, model: nn.Module, optimizer: Any, scheduler: Any, result: FitResult, run_key: str
) -> None:
    state = {
        "run_key": run_key,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "best_state": result.best_state,
        "history": result.history,
        "seconds": result.seconds,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }
    tmp = checkpoint_dir / "last.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(checkpoint_dir / "last.pt")  # atomic: a crash mid-write keeps the previous checkpoint
    (checkpoint_dir / "history.json").write_text(json.dumps(result.history, indent=1))


def _resume(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, run_key: str) -> dict[str, Any]:
    fresh = {"epoch": -1, "best_epoch": -1, "best_score": -math.inf, "best_state": {}, "history": [], "seconds": 0.0}
    if not path.is_file():
        return fresh
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("run_key") != run_key:
        raise ConfigError(
            f"{path} was written by a run with other settings; to resume, repeat that run's settings "
            f"(only epochs may grow), or train into a new --out folder"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    log.info("resuming from %s after epoch %d", path, state["epoch"])
    return state


def _fmt(scores: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items())


def optimise_epoch(
    batches: Any, loss_of: Any, optimizer: torch.optim.Optimizer, scheduler: Any, title: str, show_progress: bool
) -> tuple[float, float]:
    """One pass of a self-supervised objective: ``loss_of(batch) -> (loss, score)`` per batch, a step after each;
    returns the epoch's mean loss and score (shared by classifier and U-Net pretraining)."""
    from rich.progress import Progress

    losses, scores = [], []
    with Progress(transient=True, disable=not show_progress) as progress:
        task = progress.add_task(title, total=len(batches))
        for batch in batches:
            loss, score = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            scores.append(score)
            progress.advance(task)
    return float(np.mean(losses)), float(np.mean(scores))
