"""Processes of one job started by torchrun: where this process sits, and the few collectives used.

    python -m condinst predict ...                              # one process
    torchrun --nproc_per_node 2 -m condinst predict ...         # two processes, each its share

Without torchrun's environment (RANK, WORLD_SIZE, ...) every helper behaves as for one process.
The trainer (training.distributed) builds on these; the library never imports the trainer.
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """True when torchrun (or any env:// launcher) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    if not launched_by_torchrun():
        return 0, 1, 0
    rank = int(os.environ["RANK"])
    return rank, int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", rank))


def init_gloo(timeout: timedelta = timedelta(days=7)) -> None:
    """Start the gloo process group of a torchrun job (no-op for one process or when started).

    gloo carries the small messages prediction needs (a barrier, a broadcast, a sum) on any device.
    The long timeout lets a rank wait at the final barrier while the others finish their shares
    (torchrun stops the whole group if one process dies).
    """
    rank, world_size, _ = torchrun_rank()
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="gloo", init_method="env://", rank=rank, world_size=world_size,
                                timeout=timeout)


def die_with_launcher() -> None:
    """Linux: end this process when the launcher that started it dies (torchrun starts each worker in
    its own session, so a killed torchrun would otherwise leave its workers running, orphaned)."""
    if not launched_by_torchrun() or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request: act on it now
        os.kill(os.getpid(), signal.SIGKILL)


def cleanup_distributed() -> None:
    """Destroy the process group (if any)."""
    if is_dist_initialized():
        dist.destroy_process_group()


def is_dist_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_initialized() else 1


# ---- collectives (no-ops for one process) -----------------------------------------------------------

def barrier() -> None:
    if get_world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] (picklable objects)."""
    world = get_world_size()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s obj on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
