"""Process-group helpers for `torchrun` (rank and world size from its environment, gloo on CPU, nccl on GPU) and
the independent-worker split of `edgeclip reinforce` (Slurm job arrays, Kubernetes indexed jobs: no process group).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

# The variable a Kubernetes indexed job sets in each pod (its completion index); the worker count has no standard
# variable there, so it comes from --num-workers or from this one (set it to the job's `completions`).
NUM_WORKERS_ENV = "EDGECLIP_NUM_WORKERS"


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


# --- independent workers (reinforce) ------------------------------------------------------------------------


@dataclass(frozen=True)
class Workers:
    """Which of `count` independent jobs this is (0 of 1 when alone), and where that came from."""

    index: int = 0
    count: int = 1
    origin: str = ""  # e.g. "--worker-index/--num-workers", "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"

    def describe(self) -> str:
        return f"worker {self.index} of {self.count}" + (f" (from {self.origin})" if self.origin else "")


def _env_int(environ: Mapping[str, str], name: str) -> int:
    from edgeclip.errors import UsageError

    value = environ[name].strip()
    if not value.lstrip("-").isdigit():
        raise UsageError(f"{name}={environ[name]!r} in the environment is not an integer")
    return int(value)


def _index_from_env(environ: Mapping[str, str]) -> tuple[int, str] | None:
    """This job's index among its siblings as a scheduler sets it: a Slurm array task or a Kubernetes pod."""
    from edgeclip.errors import UsageError

    if "SLURM_ARRAY_TASK_ID" in environ:
        task = _env_int(environ, "SLURM_ARRAY_TASK_ID")
        low = _env_int(environ, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in environ else 0
        step = _env_int(environ, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in environ else 1
        if step < 1 or (task - low) % step:
            raise UsageError(
                f"SLURM_ARRAY_TASK_ID={task} is not on the array's grid (min {low}, step {step}): "
                "pass --worker-index and --num-workers explicitly"
            )
        return (task - low) // step, "SLURM_ARRAY_TASK_ID"
    if "JOB_COMPLETION_INDEX" in environ:
        return _env_int(environ, "JOB_COMPLETION_INDEX"), "JOB_COMPLETION_INDEX"
    return None


def _count_from_env(environ: Mapping[str, str]) -> tuple[int, str] | None:
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        return _env_int(environ, "SLURM_ARRAY_TASK_COUNT"), "SLURM_ARRAY_TASK_COUNT"
    if NUM_WORKERS_ENV in environ:
        return _env_int(environ, NUM_WORKERS_ENV), NUM_WORKERS_ENV
    return None


def resolve_workers(
    num_workers: int | None = None, worker_index: int | None = None, environ: Mapping[str, str] | None = None
) -> Workers:
    """The worker split: the options where given, else the scheduler's environment (Slurm array, indexed Job).

    Slurm: index = (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP, count =
    SLURM_ARRAY_TASK_COUNT. Kubernetes indexed Job: index = JOB_COMPLETION_INDEX, count = --num-workers or
    EDGECLIP_NUM_WORKERS. `--num-workers 1` opts out of a scheduler's split.
    """
    from edgeclip.errors import UsageError

    environ = os.environ if environ is None else environ
    if num_workers == 1 and worker_index in (None, 0):
        return Workers(0, 1, "--num-workers 1")
    index_origin = "--worker-index"
    count_origin = "--num-workers"
    if worker_index is None:
        found = _index_from_env(environ)
        if found is not None:
            worker_index, index_origin = found
    if num_workers is None:
        counted = _count_from_env(environ)
        if counted is not None and worker_index is not None:
            num_workers, count_origin = counted
    if worker_index is None and num_workers is None:
        return Workers()
    if worker_index is None:
        raise UsageError(
            f"--num-workers {num_workers} needs --worker-index (or a scheduler's SLURM_ARRAY_TASK_ID / "
            "JOB_COMPLETION_INDEX in the environment)"
        )
    if num_workers is None:
        hint = f"set {NUM_WORKERS_ENV} to the job's completions" if index_origin == "JOB_COMPLETION_INDEX" else ""
        raise UsageError(
            f"{index_origin} {worker_index} needs a worker count: pass --num-workers" + (f" or {hint}" if hint else "")
        )
    if num_workers < 1:
        raise UsageError(f"{count_origin} must be >= 1, got {num_workers}")
    if not 0 <= worker_index < num_workers:
        raise UsageError(
            f"worker index {worker_index} ({index_origin}) is outside 0..{num_workers - 1} "
            f"({count_origin} {num_workers})"
        )
    origin = index_origin if index_origin == count_origin else f"{index_origin}/{count_origin}"
    return Workers(worker_index, num_workers, origin)


def shards_for(total: int, workers: Workers, world: World) -> list[int]:
    """The shards this process writes: worker i of W owns `n % W == i`; its torchrun ranks deal those out in turn.

    With one worker that is torchrun's own split (`n % world == rank`); with one process per worker it is the same
    split by worker index. A worker's shards do not depend on how many processes it runs, so a rerun of a dead
    worker (with any --nproc-per-node) covers exactly its own shards.
    """
    mine = [n for n in range(total) if n % workers.count == workers.index]
    return mine[world.rank :: world.size]
