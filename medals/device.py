"""Device choice: CUDA when present (with autocast), else CPU in float32 with a visible warning."""
from __future__ import annotations

import contextlib
import warnings

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` is "cuda", "cuda:1", "cpu" or None (auto). Warns once when the engine falls back to CPU."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            from .errors import InputError
            raise InputError(f"device {requested!r} requested but CUDA is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    warnings.warn("MedalS: no CUDA device found, running on the CPU in float32 (minutes per volume)",
                  RuntimeWarning, stacklevel=2)
    return torch.device("cpu")


def autocast(device: torch.device, enabled: bool = True):
    """fp16/bf16 autocast on CUDA (bf16 where supported); a no-op on CPU, where the engine stays float32."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def describe(device: torch.device) -> dict:
    """Name and memory of a device, for reports and the server's info endpoint."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return {"device": str(device), "name": torch.cuda.get_device_name(device),
                "memory_free_bytes": free, "memory_total_bytes": total}
    return {"device": "cpu", "name": "CPU", "threads": torch.get_num_threads()}
