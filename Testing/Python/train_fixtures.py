"""Shared by the training tests: a tiny text tower, a toy labelled dataset and a tiny training configuration.

The toy volumes are small (≈ 10⁴ voxels) so a few training steps of the tiny network take seconds.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel

from medals.io import Volume, write_labels, write_volume

TOY_SHAPE = (20, 28, 24)   # (k, j, i)
TOY_SPACING = (2.0, 1.5, 1.5)
BALL, SHELL, LEFT, RIGHT = 1, 2, 3, 4


def write_tiny_tower(parity: Path, folder: Path) -> Path:
    """The parity tiny MPNet's tokenizer with a 32-wide, 1-layer config and seeded random weights saved beside it
    (a tower folder with its weights, like the packaged MiniLM)."""
    shutil.copytree(parity / "tiny_mpnet", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1)
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
    return folder


def toy_labels(shape=TOY_SHAPE, centre_shift=0) -> np.ndarray:
    """A ball (1) in a shell (2) in the middle of the volume, with a left (3) and right (4) block beside it."""
    k, j, i = np.indices(shape)
    centre = np.array(shape) / 2 + centre_shift
    radius = np.sqrt(((np.stack([k, j, i], -1) - centre) ** 2).sum(-1))
    labels = np.zeros(shape, dtype=np.uint8)
    labels[radius < 7] = SHELL
    labels[radius < 4] = BALL
    labels[2:6, 2:8, 1:5] = LEFT
    labels[2:6, 2:8, -5:-1] = RIGHT
    return labels


def toy_image(labels: np.ndarray, seed: int) -> np.ndarray:
    brightness = np.array([20, 200, 120, 60, 90], dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0, 5, labels.shape)
    return np.clip(brightness[labels] + noise, 0, 255).astype(np.float32)


def toy_prompt_set() -> dict:
    return {"modality": "mri", "structures": [
        {"name": "ball", "values": [BALL], "synonyms": ["ball", "inner ball", "core"]},
        {"name": "shell", "values": [SHELL], "synonyms": ["shell", "outer shell"]},
        {"name": "object", "values": [BALL, SHELL], "synonyms": ["object", "whole object"]},
        {"name": "left block", "values": [LEFT], "synonyms": ["left block"]},
        {"name": "right block", "values": [RIGHT], "synonyms": ["right block"]}],
        "mirror_pairs": [["left block", "right block"]]}


def write_toy_dataset(folder: Path, cases: int = 2) -> Path:
    """dataset.json + NIfTI images and labels for `cases` toy volumes (shifted objects, different noise)."""
    entries = []
    for number in range(cases):
        labels = toy_labels(centre_shift=number)
        write_volume(Volume(toy_image(labels, number), TOY_SPACING), folder / f"case{number}_image.nii.gz")
        write_labels(labels, Volume(labels, TOY_SPACING), folder / f"case{number}_labels.nii.gz")
        entries.append({"name": f"case{number}", "image": f"case{number}_image.nii.gz",
                        "labels": f"case{number}_labels.nii.gz", "prompt_set": "toy"})
    (folder / "dataset.json").write_text(json.dumps(
        {"format": "medals-dataset/1", "prompt_sets": {"toy": toy_prompt_set()}, "cases": entries}))
    return folder


TINY_NET = {"crop_size": [32, 32, 16], "features": [4, 8, 8, 16, 16], "strides": [1, 2, 2, 2, 2], "query_dim": 16,
            "heads": 2, "ffn_dim": 32, "decoder_layers": 1, "mask_hidden": 16}


def tiny_config(dataset: Path, tower: Path, output: Path, steps: int = 4, **overrides) -> dict:
    """A training configuration of the tiny network on the toy dataset (one coarse stage unless overridden)."""
    config = {
        "name": "toy-model", "dataset": str(dataset), "output": str(output), "text_tower": str(tower),
        "text": {"tower": "tiny", "hidden_dim": 32, "query_dim": 16, "max_length": 16, "tokenization": "native"},
        "train_text_head": True,
        "stages": {"coarse": {"net": TINY_NET, "target_spacing": [3.0, 3.0, 3.0], "batch_size": 2}},
        "optimizer": {"cycles": [{"steps": steps, "warmup": 1, "peak_lr": 1e-3}], "grad_clip_norm": 12.0},
        "queries": {"max_queries": 6},
        "checkpoint_every": 2, "log_every": 1, "seed": 3,
    }
    config.update(overrides)
    return config
