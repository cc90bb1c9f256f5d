"""`medals bench prompts`: the cost of parallel prompting (all N classes in one window forward) against
sequential prompting (one forward per class), for N = 1, 4, 12, 24, unprompted and prompted.

"Unprompted" is the coarse stage's window: one forward with zero prompts. "Prompted" is the fine stage's window:
the complementary pair of forwards (spec §3.3) with the per-class masks as prompt; sequentially, each class runs
its own pair with only its own mask. Both go through the pipeline's own window function.

Every measurement runs in a fresh child process (same network, same random inputs), after one untimed warm-up
pass (parallel: median of three runs; sequential: the N passes timed once), so its peak memory is real: the child's peak resident set size (`ru_maxrss`) on the CPU, or the CUDA
allocator's peak on a GPU. The default crop finishes in about ten minutes on two CPU cores; `--official` uses the
official coarse crop 224×224×128 (meant for a GPU: about 80 s per forward on two CPU cores).
"""
from __future__ import annotations

import time

from .child import in_child, peak_memory_mb

DEFAULT_CROP = (64, 64, 32)
OFFICIAL_CROP = (224, 224, 128)
CLASS_COUNTS = (1, 4, 12, 24)
MODES = ("unprompted", "prompted")
PARALLEL_REPEATS = 3


def synthetic_window(crop, n_classes: int, seed: int = 0):
    """A random 0–255 image (1, 1, *crop) and a label-map prompt (1, *crop) with one random box per class 1..N."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    image = torch.rand((1, 1, *crop), generator=generator) * 255
    prompt = torch.zeros((1, *crop), dtype=torch.int16)
    for value in range(1, n_classes + 1):
        starts = [int(torch.randint(0, c // 2, (), generator=generator)) for c in crop]
        box = tuple(slice(s, s + c // 3) for s, c in zip(starts, crop))
        prompt[(0, *box)] = value
    return image, prompt


def random_window(spec: dict, n_queries: int):
    """What a window benchmark's child measures on: `spec["threads"]` CPU threads, an official-width network with
    random weights for `spec["crop"]`, `n_queries` random queries and `synthetic_window`, on `spec["device"]`.
    Returns (device, net, queries, image, prompt)."""
    import torch

    from ..config import NetConfig
    from ..modeling import MedalSNet

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    crop = tuple(spec["crop"])
    torch.manual_seed(0)
    net = MedalSNet(NetConfig(crop_size=crop)).eval().to(device)
    queries = torch.randn(n_queries, net.config.query_dim).to(device)
    image, prompt = (t.to(device) for t in synthetic_window(crop, n_queries))
    return device, net, queries, image, prompt


def measure(spec: dict) -> dict:
    """One measurement in this process: seconds for all passes of `spec["kind"]` and the peak memory (MB)."""
    import torch

    from ..device import autocast
    from ..pipeline.prompting import random_permutation
    from ..pipeline.sliding_window import Execution, window_logits

    n_classes = spec["classes"]
    device, net, queries, image, prompt = random_window(spec, n_classes)
    values = torch.arange(1, n_classes + 1, device=device)
    prompted = spec["mode"] == "prompted"
    if spec["kind"] == "parallel":
        calls = [(queries, prompt if prompted else None, values)]
    else:  # one pass per class, prompted by that class' mask alone
        calls = [(queries[n:n + 1], prompt * (prompt == n + 1) if prompted else None, values[n:n + 1])
                 for n in range(n_classes)]
    execution = Execution(device, block_permutation=random_permutation(0))

    def run(call):
        with torch.no_grad(), autocast(device):
            window_logits(net, call[0], image, call[1], call[2], 0, execution)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run(calls[0])  # warm-up: kernel selection and first-touch allocations
    # The parallel work is short, so its time is the median of three runs; the sequential work is N passes
    # timed once (each class one real pass).
    repeats = PARALLEL_REPEATS if spec["kind"] == "parallel" else 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for call in calls:
            run(call)
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    return {"seconds": seconds, "peak_mb": peak_memory_mb(device)}


def run_prompts(args) -> int:
    import torch

    from ..device import pick_device

    device = pick_device(args.device)
    crop = OFFICIAL_CROP if args.official else tuple(args.crop)
    threads = args.threads or torch.get_num_threads()
    print(f"medals bench prompts: window {crop[0]}×{crop[1]}×{crop[2]}, official network width, {device}"
          f"{'' if device.type == 'cuda' else f', {threads} threads'}; one child process per measurement")
    print(f"{'mode':<11}{'classes':>8}{'parallel s':>12}{'sequential s':>14}{'ratio':>8}"
          f"{'peak MB par.':>14}{'peak MB seq.':>14}")
    results = {}
    for mode in MODES:
        for n_classes in args.classes:
            row = {}
            for kind in ("parallel", "sequential"):
                row[kind] = in_child("medals.bench.prompts:measure",
                                     {"mode": mode, "kind": kind, "classes": n_classes, "crop": list(crop),
                                      "device": str(device), "threads": threads})
            ratio = row["sequential"]["seconds"] / row["parallel"]["seconds"]
            results[mode, n_classes] = (ratio, row)
            print(f"{mode:<11}{n_classes:>8}{row['parallel']['seconds']:>12.2f}{row['sequential']['seconds']:>14.2f}"
                  f"{ratio:>7.1f}x{row['parallel']['peak_mb']:>14.0f}{row['sequential']['peak_mb']:>14.0f}",
                  flush=True)
    smallest, largest = min(args.classes), max(args.classes)
    for mode in MODES:
        growth = results[mode, largest][1]["parallel"]["peak_mb"] / results[mode, smallest][1]["parallel"]["peak_mb"]
        print(f"{mode}: parallel peak memory at {largest} classes = {growth:.2f}× that at {smallest}")
    worst = min(results[mode, largest][0] for mode in MODES)
    print(f"{largest} classes: {worst:.1f}x")
    return 0


def register(kinds) -> None:
    """Add `prompts` to the `medals bench` subcommands."""
    prompts = kinds.add_parser("prompts", help="parallel vs sequential prompting: time and peak memory per window",
                               description=__doc__.split("\n\n")[0])
    prompts.add_argument("--official", action="store_true", help=f"official coarse window {OFFICIAL_CROP}")
    prompts.add_argument("--crop", type=int, nargs=3, default=list(DEFAULT_CROP), metavar=("H", "W", "D"),
                         help="window size, multiples of 32 (default %(default)s)")
    prompts.add_argument("--classes", type=int, nargs="+", default=list(CLASS_COUNTS),
                         help="class counts N (default %(default)s)")
    prompts.add_argument("--device", help="cuda, cuda:N or cpu (default: CUDA when present)")
    prompts.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    prompts.set_defaults(func=run_prompts)
