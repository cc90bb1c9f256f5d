"""`medals info` (engine, device and model report) and `medals demo` (the README's first command)."""
from __future__ import annotations

import json
import time

import torch

from . import __version__
from .config import NetConfig
from .device import describe, pick_device
from .modeling import MedalSNet

# A freshly initialised small plan of the same network, used until a trained demo model ships.
SMALL_PLAN = NetConfig(crop_size=(64, 64, 64), features=(16, 16, 32, 64, 96, 128), query_dim=128, heads=4,
                       ffn_dim=256, decoder_layers=2, mask_hidden=64)


def engine_report(device: torch.device) -> dict:
    report = {"medals": __version__, "torch": torch.__version__, **describe(device)}
    try:
        from .weights import list_models
        report["installed_models"] = [m if isinstance(m, str) else getattr(m, "name", str(m)) for m in list_models()]
    except ImportError:
        report["installed_models"] = []
    return report


def small_forward(device: torch.device, n_queries: int = 3) -> dict:
    """One forward of a randomly initialised small configuration on a synthetic volume (no trained weights)."""
    torch.manual_seed(0)
    net = MedalSNet(SMALL_PLAN).eval().to(device)
    image = torch.rand(1, 1, *SMALL_PLAN.crop_size, device=device) * 255
    queries = torch.randn(n_queries, SMALL_PLAN.query_dim, device=device)
    start = time.perf_counter()
    with torch.no_grad():
        logits = net(queries, image)
    return {"plan": SMALL_PLAN.to_dict(), "parameters": sum(p.numel() for p in net.parameters()),
            "output_shape": list(logits.shape), "seconds": round(time.perf_counter() - start, 3)}


def run_info(args) -> int:
    print(json.dumps(engine_report(pick_device(args.device)), indent=2))
    return 0


def run_demo(args) -> int:
    device = pick_device(args.device)
    print("MedalS engine report:")
    print(json.dumps(engine_report(device), indent=2))
    print("\nDemonstration (no trained demo model ships yet): one forward pass of a freshly initialised small "
          "configuration of the Medal S network on a synthetic 64³ volume with 3 text queries.")
    print(json.dumps(small_forward(device), indent=2))
    return 0


def register(subparsers) -> None:
    info = subparsers.add_parser("info", help="engine version, device and installed models")
    info.add_argument("--device", help="cuda, cuda:N or cpu (default: CUDA when present)")
    info.set_defaults(func=run_info)
    demo = subparsers.add_parser("demo", help="run the bundled demonstration")
    demo.add_argument("--device", help="cuda, cuda:N or cpu (default: CUDA when present)")
    demo.set_defaults(func=run_demo)
