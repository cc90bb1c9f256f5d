"""CPU time and peak memory of one official-size Medal S forward, next to the official code's figures.

Each measurement runs in its own process (peak RSS = ru_maxrss of that process), with 2 threads, eval mode,
no autograd, random weights, the inference call form (image + union prompt, per-query prompts, N queries).
Official figures (spec §1.6, same machine kind): 81.5 s / 11.8 GB for N=2, 84.5 s / 12.4 GB for N=24.

    python benchmarks/forward_cost.py [--queries 2 24] [--crop 224 224 128] [--channels-last] [--bf16]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

OFFICIAL = {2: (81.5, 11.8), 24: (84.5, 12.4)}  # N → (seconds, GB) for 224×224×128


def measure(crop, n_queries, channels_last, bf16, threads) -> dict:
    """One forward in this process; returns seconds and peak RSS."""
    import torch

    from medals.config import NetConfig
    from medals.modeling import MedalSNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = MedalSNet(NetConfig(crop_size=tuple(crop))).eval()
    image = torch.rand(1, 1, *crop) * 255
    mc = (torch.rand(1, n_queries, *crop) > 0.9).float()
    sc = mc.amax(1, keepdim=True)
    queries = torch.randn(n_queries, 768)
    net.channels_last_inference = channels_last
    context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.no_grad()
    start = time.perf_counter()
    with torch.no_grad(), context:
        logits = net(queries, image, sc, mc)
    seconds = time.perf_counter() - start
    assert logits.shape == (1, n_queries, *crop)
    return {"seconds": seconds, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, nargs="+", default=[2, 24])
    parser.add_argument("--crop", type=int, nargs=3, default=[224, 224, 128])
    parser.add_argument("--channels-last", action="store_true", help="channels-last activations on the CPU")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast on the CPU (outside parity)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.crop, args.queries[0], args.channels_last, args.bf16, args.threads)))
        return
    official_size = args.crop == [224, 224, 128]
    print(f"crop {args.crop}, threads {args.threads}, channels_last={args.channels_last}, bf16={args.bf16}")
    for n in args.queries:
        command = [sys.executable, __file__, "--child", "--queries", str(n), "--crop", *map(str, args.crop),
                   "--threads", str(args.threads)] + ["--channels-last"] * args.channels_last + ["--bf16"] * args.bf16
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        line = f"N={n:3d}: {result['seconds']:6.1f} s, peak {result['peak_gb']:5.2f} GB"
        if official_size and n in OFFICIAL:
            seconds, gb = OFFICIAL[n]
            line += (f"   official {seconds} s / {gb} GB → time ×{seconds / result['seconds']:.2f} faster, "
                     f"memory ×{gb / result['peak_gb']:.2f} smaller")
        print(line, flush=True)


if __name__ == "__main__":
    main()
