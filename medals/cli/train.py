"""`medals train CONFIG`: train (or fine-tune) a model as a JSON configuration describes.

One process by default; several with torchrun, e.g. `torchrun --nproc_per_node 2 -m medals.cli train CONFIG`
(NCCL between GPUs, gloo between CPU processes).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path


def run_train(args) -> int:
    from ..train import load_config, train

    config = load_config(args.config)
    if args.output:
        config = dataclasses.replace(config, output=Path(args.output))
    train(config, resume=args.resume, device=args.device, max_steps=args.max_steps)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train or fine-tune a model from a JSON training configuration")
    parser.add_argument("config", help="training configuration (JSON; see configs/demo.json)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in the output folder")
    parser.add_argument("--max-steps", type=int, metavar="N",
                        help="stop after N steps of this run (checkpointed; continue with --resume)")
    parser.add_argument("--output", help="output folder (overrides the configuration's)")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: CUDA when present)")
    parser.set_defaults(func=run_train)
