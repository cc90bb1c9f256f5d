"""The server's device pool: one model replica per listed device, each used by one worker of the job queue.

`medals serve --devices cuda:0,cuda:1` (or `--device cuda:0 --device cuda:1`) keeps one copy of the model on each
GPU. A device may be listed more than once: `--devices cpu,cpu` runs two CPU workers, which share the process's
CPU threads (torch's intra-op threads, OMP_NUM_THREADS) equally, so two jobs never fight over the same cores.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..device import pick_device
from ..errors import InputError


@dataclass(frozen=True)
class Replica:
    """One copy of the model, kept on `device`."""

    model: object
    device: torch.device

    def selected(self):
        """The context a job on this replica runs in: its GPU is the current one, for any tensor made without an
        explicit device."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()


def parse_devices(values: list[str] | None) -> list[str | None]:
    """The devices of repeated and comma-separated --device values, in order; [None] (pick one) when none given."""
    if not values:
        return [None]
    devices = [name.strip() for value in values for name in value.split(",")]
    if any(not name for name in devices):
        raise InputError(f"--device {','.join(values)!r} has an empty entry; list devices as cuda:0,cuda:1")
    return devices


def check_device(device: torch.device) -> torch.device:
    """`device` when this machine has it; InputError naming the GPUs there are otherwise."""
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device {device} requested, but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s): cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    return device


def share_cpu_threads(devices: list[torch.device]) -> None:
    """Give each CPU worker an equal share of torch's intra-op threads (at least one), when there are several."""
    cpu_workers = sum(device.type == "cpu" for device in devices)
    if cpu_workers > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // cpu_workers))


def load_replicas(load, names: list[str | None]) -> list[Replica]:
    """One replica per device name, made by `load(device) -> model`; devices are checked before any is loaded."""
    devices = [check_device(pick_device(name)) for name in names]
    share_cpu_threads(devices)
    return [Replica(load(device), device) for device in devices]
