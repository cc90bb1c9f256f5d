"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the next step to run, the trainable module's state (networks + text head), the optimizer and
gradient-scaler states and the configuration it was trained with. Every random draw of a step is derived from
(seed, rank, step), so no random-generator state needs saving: a resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import InputError

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(path: Path, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, config: dict) -> Path:
    """Write atomically (temporary file, then rename): an interruption never leaves a broken checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save({"step": step, "model": module.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "config": config}, temporary)
    os.replace(temporary, path)
    return path


def load_checkpoint(path: Path) -> dict:
    """The checkpoint dict (tensors on the CPU); InputError when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch reports damage as many exception types
        raise InputError(f"{path}: cannot be read ({type(error).__name__}); it is damaged") from None


def check_resumable(stored: dict, current: dict, path: Path) -> None:
    """Refuse to continue a run whose model (stages, text, starting point) differs from the configuration's."""
    for key in ("stages", "text", "text_tower", "init_from"):
        if stored.get(key) != current.get(key):
            raise InputError(f"{path}: the checkpoint was trained with another {key!r}; resume with its config or "
                             "start in a new output folder")
