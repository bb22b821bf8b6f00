"""Data-parallel training under PyTorch's own launcher: ``torchrun --nproc_per_node N -m medlens train ...``.

Nothing here is needed for one process: without torchrun's environment
(``WORLD_SIZE`` unset or 1) every helper is a no-op and training runs as
before. Under torchrun each process trains on its own shard of the data,
gradients are averaged by ``DistributedDataParallel`` (gloo on CPU, NCCL on
GPUs), rank 0 validates, keeps the best weights and writes checkpoints and
the bundle, and tells the others whether to stop.

The *global* batch stays the config's ``batch_size`` (each of N processes
takes ``batch_size / N``), so a recipe gives the same optimisation with 1 or N
processes and its learning rate needs no rescaling.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from medlens.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``; ``local_rank`` picks its GPU on a multi-GPU node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """This process's place, read from the variables torchrun sets (one process when they are absent)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise ConfigError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers (set by torchrun): {exc}") from exc
    return DistInfo(rank, world, local)


@contextmanager
def distributed_session(device: torch.device) -> Iterator[tuple[DistInfo, torch.device]]:
    """Join the process group torchrun started (if any) for the duration of a training run.

    Yields this process's :class:`DistInfo` and the device it should use
    (``cuda:LOCAL_RANK`` on GPUs). Leaves the group on exit, also after an error.
    """
    info = dist_info()
    if not info.active or dist.is_initialized():
        yield info, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=30))
    log.info("process %d of %d joined (%s, %s)", info.rank, info.world_size, backend, device)
    try:
        yield info, device
    finally:
        dist.destroy_process_group()


def shard_batch_size(batch_size: int, info: DistInfo, field: str = "train.batch_size") -> int:
    """Each process's share of the global batch; refuses a batch that does not split evenly."""
    if batch_size % info.world_size:
        raise ConfigError(
            f"{field}: {batch_size} does not split evenly over {info.world_size} processes; "
            f"use a multiple of {info.world_size} (the batch size is the global batch across processes)"
        )
    return batch_size // info.world_size


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` when a process group is up, else ``model`` itself."""
    if not (dist.is_available() and dist.is_initialized()):
        return model
    if device.type == "cuda":  # batch norm over the global batch; PyTorch's SyncBatchNorm works on GPUs only
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place below the top module, same parameters
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return torch.nn.parallel.DistributedDataParallel(model)  # CPU: each process normalises its own share of the batch


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every process (e.g. the validation scores that decide early stopping)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_across_processes(value: float) -> float:
    """The mean of a per-process number (e.g. each shard's training loss) over all processes."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor([value], dtype=torch.float64, device=device)  # NCCL reduces only CUDA tensors
    dist.all_reduce(total)
    return float(total.item()) / dist.get_world_size()


def barrier() -> None:
    """Wait for every process (e.g. until rank 0 has written a checkpoint the others will read)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
