"""Process group for DistributedDataParallel under `torchrun`: NCCL between GPUs, gloo between CPU processes.

Without torchrun's environment (WORLD_SIZE unset or 1) training runs in this one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..device import pick_device


@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(device: str | None = None) -> Processes:
    """Join torchrun's process group when launched by it; pick this process's device (cuda:LOCAL_RANK or CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    chosen = pick_device(device)
    if chosen.type == "cuda" and world_size > 1:
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Processes(rank, world_size, chosen)


def stop(processes: Processes) -> None:
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_processes(value: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The mean of a tensor over all processes (itself when training alone)."""
    if not processes.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / processes.world_size


def barrier(processes: Processes) -> None:
    if processes.distributed:
        dist.barrier()
