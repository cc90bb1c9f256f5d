"""`medals info`: engine version, device, the models (installed and bundled) and the one used by default."""
from __future__ import annotations

import json

import torch

from .. import __version__
from ..device import describe, pick_device
from ..weights import available_models, default_model_name


def engine_report(device: torch.device) -> dict:
    models = available_models()
    return {"medals": __version__, "torch": torch.__version__, **describe(device),
            "installed_models": [model.name for model in models if not model.bundled],
            "bundled_models": [model.name for model in models if model.bundled],
            "default_model": default_model_name()}


def run_info(args) -> int:
    print(json.dumps(engine_report(pick_device(args.device)), indent=2))
    return 0


def register(subparsers) -> None:
    info = subparsers.add_parser("info", help="engine version, device, installed and bundled models")
    info.add_argument("--device", help="cuda, cuda:N or cpu (default: CUDA when present)")
    info.set_defaults(func=run_info)
