"""Cohorts across processes: `torchrun ... -m medals.cli segment FOLDER -o OUT` shares a folder's images among
torchrun's processes (ranks), on one node or many, each rank on its own GPU (or CPU process).

Rank 0 decides which rank segments which image, once, and every rank follows that decision, so each image is
segmented exactly once even while ranks start at different times and outputs appear. Images go to ranks
largest first, each to the rank with the least work so far (file bytes standing in for work), which evens out
the ranks' finishing times on a cohort of mixed sizes. At the end rank 0 gathers every rank's report entries.

The process group is the one training uses (`medals.train.distributed`); the entries travel in a gloo group of
their own with a long timeout, since a rank that finished early waits at the gather for the slowest one.
Without torchrun's environment the cohort is this one process and nothing is exchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

from .device import pick_device

GATHER_TIMEOUT = timedelta(days=7)
"""How long a rank that finished may wait for the others at the gather: longer than any cohort's imbalance."""


def assign(sizes: list[int | None], ranks: int) -> list[int | None]:
    """The rank for each case: largest first, each to the rank with the least total size so far (ties to the lower
    rank); None (a case with no size: nothing to do) stays None."""
    owners: list[int | None] = [None] * len(sizes)
    loads = [0] * ranks
    for index in sorted((i for i, size in enumerate(sizes) if size is not None), key=lambda i: (-sizes[i], i)):
        rank = min(range(ranks), key=lambda r: (loads[r], r))
        owners[index] = rank
        loads[rank] += sizes[index]
    return owners


@dataclass
class Cohort:
    """This process's place among torchrun's processes: `rank` of `world_size`, its `device`."""

    rank: int
    world_size: int
    device: torch.device | None
    processes: Any = None
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def join(cls, device: str | None, needs_device: bool = True) -> "Cohort":
        """Join torchrun's processes when launched by it (the device is then cuda:LOCAL_RANK or the CPU), else a
        cohort of this one process. `needs_device` False (segmenting on a server) picks no device."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(0, 1, pick_device(device) if needs_device else None)
        from .train import distributed

        processes = distributed.start(device if needs_device else "cpu")
        group = dist.new_group(backend="gloo", timeout=GATHER_TIMEOUT)
        return cls(processes.rank, processes.world_size, processes.device if needs_device else None, processes,
                   group)

    def decide(self, choose: Callable[[], Any]) -> Any:
        """`choose()` run on rank 0 only, its result handed to every rank."""
        if self.world_size == 1:
            return choose()
        box = [choose() if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, entries: dict[int, Any]) -> dict[int, Any] | None:
        """Every rank's entries (by case index) merged on rank 0; None on the other ranks."""
        if self.world_size == 1:
            return entries
        parts = [None] * self.world_size if self.is_main else None
        dist.gather_object(entries, parts, dst=0, group=self.group)
        return {index: entry for part in parts for index, entry in part.items()} if self.is_main else None

    def leave(self) -> None:
        if self.processes is not None:
            from .train import distributed

            distributed.stop(self.processes)
