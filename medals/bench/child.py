"""One measurement in a fresh process, so that its peak memory is its own.

`in_child("package.module:function", spec)` runs `function(spec)` in a new Python and returns what it returned
(JSON). `peak_memory_mb(device)` is what a measurement reports: the CUDA allocator's peak on a GPU, else the
process's peak resident set size; `reset_peak_memory(device)` starts a new peak for the next measurement in the
same process.
"""
from __future__ import annotations

import importlib
import json
import resource
import subprocess
import sys
from pathlib import Path


def in_child(function: str, spec: dict, echo: bool = False) -> dict:
    """`echo`: the child's messages (stderr) go to this process's stderr as they come (progress of a long
    measurement) instead of only into the error when it fails."""
    completed = subprocess.run([sys.executable, "-m", "medals.bench.child"],
                               input=json.dumps({"function": function, "spec": spec}), text=True, encoding="utf-8",
                               stdout=subprocess.PIPE, stderr=None if echo else subprocess.PIPE)
    if completed.returncode:
        raise RuntimeError("benchmark child failed" + (" (its messages are above)" if echo else
                                                       f":\n{completed.stderr.strip()}"))
    return json.loads(completed.stdout.strip().splitlines()[-1])


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:  # Linux: the peak since the last reset_peak_memory
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024  # kB
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def reset_peak_memory(device) -> None:
    """Start a new peak: the CUDA allocator's, or the process's peak resident set size (Linux: clear_refs 5)."""
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux: the peak stays the process's own
        pass


def current_memory_mb(device) -> float:
    """What the measurement holds now: the CUDA allocator's allocated bytes, else the resident set size."""
    if device.type == "cuda":
        import torch

        return torch.cuda.memory_allocated(device) / 2 ** 20
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2 ** 20


def synchronize(device) -> None:
    """Wait for the device's queued work, so that a clock read afterwards has seen it finish."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _main() -> None:
    request = json.loads(sys.stdin.read())
    module, function = request["function"].split(":")
    print(json.dumps(getattr(importlib.import_module(module), function)(request["spec"])))


if __name__ == "__main__":
    _main()
