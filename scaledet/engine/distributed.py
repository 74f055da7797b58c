"""torch.distributed helpers: set-up from torchrun's environment, rank queries, reductions.

``torchrun --nproc_per_node=K -m scaledet train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init_from_env` then starts a process group (gloo on CPU, NCCL on CUDA). Without those
variables everything runs in one process and the helpers are no-ops.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: the process group's, else torchrun's ``RANK`` (before set-up), else 0."""
    if is_distributed():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def world_size() -> int:
    """The number of processes: the process group's, else torchrun's ``WORLD_SIZE`` (before
    set-up), else 1."""
    if is_distributed():
        return dist.get_world_size()
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Start the process group if launched by torchrun; returns whether it is distributed."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each float over ranks (identity when not distributed)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= world_size()
    return dict(zip(keys, tensor.tolist()))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (used for the wall-time stop)."""
    if not is_distributed():
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def gather_objects(items: list[Any]) -> list[Any]:
    """Concatenate every rank's ``items`` (a list of picklable objects) on all ranks."""
    if not is_distributed():
        return list(items)
    gathered: list[list[Any] | None] = [None] * world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in (part or [])]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
