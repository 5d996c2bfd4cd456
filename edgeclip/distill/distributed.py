"""Process-group helpers for `torchrun`: rank and world size from its environment, gloo on CPU, nccl on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the processes `torchrun` started (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """Read RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; a single process without them."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return World(rank, size, local)


def init_process_group(world: World, device: torch.device) -> bool:
    """Join the process group when there is more than one process; returns whether this call created it."""
    if world.size == 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size)
    return True


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All processes' rows concatenated in rank order; gradients flow back to each process's own rows."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def gather(x: torch.Tensor) -> torch.Tensor:
    """All processes' rows concatenated in rank order, without gradients (teacher targets)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def gather_objects(obj: object) -> list:
    """Every process's picklable object, in rank order (data cursors and RNG states for a checkpoint)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every process (a no-op for one)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
