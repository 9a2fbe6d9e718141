"""Multi-process training helpers (torchrun / torch.distributed).

The same command line works with and without torchrun:

    python -m condinst train ...                                   # one process
    torchrun --nproc_per_node 8 -m condinst train ...              # one process per GPU

`init_distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and starts NCCL on CUDA or gloo on CPU; without those variables it is a no-op and every
helper below behaves as for a single process. Each rank then reads its own shard of the data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from condinst.distributed import (all_gather_object, barrier, broadcast_object, cleanup_distributed,  # noqa: F401
                                 get_rank, get_world_size, is_dist_initialized, launched_by_torchrun, torchrun_rank)


@dataclass
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None = not distributed
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """"cuda" / "cuda:N" / "cpu" / None (= CUDA when available). Under torchrun, "cuda" means cuda:LOCAL_RANK."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was requested but CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank if launched_by_torchrun() else torch.cuda.current_device())
    return device


def init_distributed(device: str | torch.device | None = None, timeout_minutes: float = 30) -> DistInfo:
    """Start the process group if launched by torchrun; pick this process's device.

    NCCL when the device is CUDA (each rank on cuda:LOCAL_RANK), gloo otherwise. Calling it again
    after the group exists only returns the info.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo(device=resolve_device(device))
    rank, world_size, local_rank = torchrun_rank()
    dev = resolve_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=timedelta(minutes=timeout_minutes), **kwargs)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend, device=dev)


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_dist_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return get_rank() == 0


# ---- collectives (no-ops for one process) -----------------------------------------------------------

def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (returns a new tensor; the input is not modified)."""
    if get_world_size() == 1:
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(value: torch.Tensor | float | dict[str, Any]) -> Any:
    """Mean over ranks of a tensor, a number, or a dict of those (same keys on every rank).

    Numbers and dicts come back as Python floats; a tensor comes back as a tensor.
    """
    world = get_world_size()
    if isinstance(value, dict):
        keys = sorted(value)
        if not keys:
            return {}
        stacked = torch.stack([torch.as_tensor(value[k], dtype=torch.float64).detach().cpu().reshape(())
                               for k in keys])
        stacked = _reduce_on_backend_device(stacked) / world
        return {k: float(v) for k, v in zip(keys, stacked.tolist())}
    if isinstance(value, torch.Tensor):
        if world == 1:
            return value
        return all_reduce_sum(value) / world
    return float(_reduce_on_backend_device(torch.tensor(float(value), dtype=torch.float64)) / world)


def _reduce_on_backend_device(t: torch.Tensor) -> torch.Tensor:
    """Sum a CPU tensor over ranks, moving it to the current GPU for NCCL."""
    if get_world_size() == 1:
        return t
    if dist.get_backend() == "nccl":
        return all_reduce_sum(t.cuda()).cpu()
    return all_reduce_sum(t)


def convert_sync_bn_outside(module: nn.Module, skip: tuple[type[nn.Module], ...]) -> None:
    """In place: every BatchNorm under `module` becomes SyncBatchNorm, except inside `skip` modules."""
    for name, child in module.named_children():
        if skip and isinstance(child, skip):
            continue
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            convert_sync_bn_outside(child, skip)
