"""Device choice: CUDA when present (with autocast), else CPU in float32 with a visible warning; the arithmetic
precision of inference."""
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
    warnings.warn("MedalS: no CUDA device found, running on the CPU (minutes per volume)",
                  RuntimeWarning, stacklevel=2)
    return torch.device("cpu")


PRECISIONS = ("auto", "fp32", "bf16")
"""Inference arithmetic. auto: half-precision autocast on CUDA (bf16 where supported, else fp16), float32 on the
CPU; fp32: float32 everywhere (the official parity tolerance holds); bf16: bfloat16 autocast on either device —
on a CPU with AMX up to 3.5× faster than float32, at a small accuracy cost (README, "Faster on
the CPU")."""


def add_precision_option(parser) -> None:
    """The --precision option, one definition for every command that has it (segment, serve, bench refine)."""
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: half precision on CUDA, float32 on the CPU; fp32: float32 everywhere; bf16: "
                             "bfloat16, up to 3.5× faster on a CPU with AMX, at a small accuracy cost (default auto)")


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX-512 BF16 or AMX); True where torch cannot tell."""
    try:
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # a torch without these probes
        return True


def check_precision(precision: str | None, device: torch.device) -> str:
    """The precision name to run with (None means "auto"); InputError for an unknown name or bf16 on a GPU without
    it, a warning for bf16 on a CPU that only emulates it (slower than float32 there)."""
    from .errors import InputError

    precision = precision or "auto"
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"precision bf16 requested but {device} does not support bfloat16; use auto (fp16)")
    if precision == "bf16" and device.type == "cpu" and not cpu_computes_bf16():
        warnings.warn("MedalS: this CPU has neither AVX-512 BF16 nor AMX: bf16 is emulated and likely slower than "
                      "fp32", RuntimeWarning, stacklevel=2)
    return precision


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of `precision` on `device`, or None for plain float32."""
    if precision == "bf16":
        return torch.bfloat16
    if device.type != "cuda" or precision == "fp32":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context of `precision` on `device` (see PRECISIONS); a no-op for float32."""
    dtype = autocast_dtype(device, precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def describe(device: torch.device) -> dict:
    """Name and memory of a device, for reports and the server's info endpoint."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return {"device": str(device), "name": torch.cuda.get_device_name(device),
                "memory_free_bytes": free, "memory_total_bytes": total}
    return {"device": "cpu", "name": "CPU", "threads": torch.get_num_threads()}
