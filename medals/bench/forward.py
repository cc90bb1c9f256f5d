"""`medals bench forward`: the time and peak memory of one network forward in each precision, and its speed-up
against float32 measured in the same run.

Each precision runs in a fresh child process, so its peak memory is its own (the CUDA allocator's peak on a GPU,
else the child's peak resident set size): official network width, random weights, one prompted window in the
inference call form (image + union prompt, per-query prompts, N queries) under the pipeline's autocast, timed
once, as the official code's figures were. The default window is the official coarse crop 224×224×128 (on two
CPU cores about 45 s and 6 GB in float32); `--crop` runs a small one.
"""
from __future__ import annotations

import time

from .child import in_child, peak_memory_mb
from .prompts import OFFICIAL_CROP, random_window

MEASURED = ("fp32", "bf16")
"""The precisions compared; the first is the reference of every speed-up."""
OFFICIAL_CPU = {2: (81.5, 11_795), 24: (84.5, 12_423)}
"""The official code on this kind of machine (spec §1.6): N queries → (seconds, peak MB) of one float32 forward
at 224×224×128 on two CPU threads."""


def measure(spec: dict) -> dict:
    """One forward in this process: its seconds and the peak memory (MB)."""
    import torch

    from ..device import autocast

    n_queries = spec["queries"]
    device, net, queries, image, prompt = random_window(spec, n_queries)
    mc = torch.stack([prompt == value for value in range(1, n_queries + 1)], 1).float()
    start = time.perf_counter()
    with torch.no_grad(), autocast(device, spec["precision"]):
        net(queries, image, mc.amax(1, keepdim=True), mc)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"seconds": time.perf_counter() - start, "peak_mb": peak_memory_mb(device)}


def run_forward(args) -> int:
    import torch

    from ..device import check_precision, pick_device

    device = pick_device(args.device)
    for precision in MEASURED:
        check_precision(precision, device)
    crop = tuple(args.crop)
    threads = args.threads or torch.get_num_threads()
    print(f"medals bench forward: window {crop[0]}×{crop[1]}×{crop[2]}, {args.queries} queries, official network "
          f"width, random weights, {device}{'' if device.type == 'cuda' else f', {threads} threads'}; one child "
          "process per precision")
    print(f"{'precision':<11}{'seconds':>9}{'peak MB':>10}{'speed-up':>10}")
    results = {}
    for precision in MEASURED:
        results[precision] = in_child("medals.bench.forward:measure",
                                      {"precision": precision, "queries": args.queries, "crop": list(crop),
                                       "device": str(device), "threads": threads})
        speed_up = results[MEASURED[0]]["seconds"] / results[precision]["seconds"]
        print(f"{precision:<11}{results[precision]['seconds']:>9.2f}{results[precision]['peak_mb']:>10.0f}"
              f"{speed_up:>9.2f}x", flush=True)
    official = ", ".join(f"{seconds} s / {mb:,} MB with {n} queries" for n, (seconds, mb) in OFFICIAL_CPU.items())
    print(f"official code, fp32 on 2 CPU threads at {OFFICIAL_CROP[0]}×{OFFICIAL_CROP[1]}×{OFFICIAL_CROP[2]} "
          f"(for reference): {official}")
    fastest = min(MEASURED, key=lambda p: results[p]["seconds"])
    print(f"fastest: {fastest} {results[MEASURED[0]]['seconds'] / results[fastest]['seconds']:.2f}x")
    return 0


def register(kinds) -> None:
    """Add `forward` to the `medals bench` subcommands."""
    forward = kinds.add_parser("forward", help="one network forward per precision: time, peak memory, speed-up",
                               description=__doc__.split("\n\n")[0])
    forward.add_argument("--crop", type=int, nargs=3, default=list(OFFICIAL_CROP), metavar=("H", "W", "D"),
                         help="window size, multiples of 32 (default: the official %(default)s)")
    forward.add_argument("--queries", type=int, default=2, help="queries N in the window (default %(default)s)")
    forward.add_argument("--device", help="cuda, cuda:N or cpu (default: CUDA when present)")
    forward.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    forward.set_defaults(func=run_forward)
