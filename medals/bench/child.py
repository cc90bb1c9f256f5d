"""One measurement in a fresh process, so that its peak memory is its own.

`in_child("package.module:function", spec)` runs `function(spec)` in a new Python and returns what it returned
(JSON). `peak_memory_mb(device)` is what a measurement reports: the CUDA allocator's peak on a GPU, else the
process's peak resident set size.
"""
from __future__ import annotations

import importlib
import json
import resource
import subprocess
import sys


def in_child(function: str, spec: dict) -> dict:
    completed = subprocess.run([sys.executable, "-m", "medals.bench.child"],
                               input=json.dumps({"function": function, "spec": spec}), text=True, capture_output=True)
    if completed.returncode:
        raise RuntimeError(f"benchmark child failed:\n{completed.stderr.strip()}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _main() -> None:
    request = json.loads(sys.stdin.read())
    module, function = request["function"].split(":")
    print(json.dumps(getattr(importlib.import_module(module), function)(request["spec"])))


if __name__ == "__main__":
    _main()
