"""Reading the official Medal S release files (spec §4.4) into a model configuration and state dicts.

An official checkpoint folder holds
* two stage checkpoints `nano_UNet_CVPR2025_crop_size_{h}_{w}_{d}_spacing_{a}_{b}_{c}_step_{n}.pth` (crop and
  working spacing in the network's (h, w, d) order; the one with the larger voxel spacing is the coarse stage),
* `text_encoder.pth` (the DDP-wrapped text encoder: tower + projection + modality embedding),
* `BioLORD-2023-C/` (the Hugging Face tower folder: config and tokenizer files).

Stage checkpoints come from training: keys carry DDP's `module.` prefix and the deep-supervision heads
`mid_mask_embed_proj.*`, which inference drops; everything else must match the network strictly, both
conv/norm alias names included.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig, NetConfig, StageConfig, TextConfig
from ..errors import WeightsError
from ..modeling import MedalSNet
from ..text import TextEncoder, load_official_state
from .state import check_state, drop_aliases, expected_shapes, read_torch_checkpoint, strip_prefix

STAGE_FILE = re.compile(
    r"crop_size_(\d+)_(\d+)_(\d+)_spacing_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)_step_(\d+)\.pth$")
TEXT_ENCODER_FILE = "text_encoder.pth"
TOWER_FOLDER_PREFIX = "BioLORD"
DEEP_SUPERVISION_KEYS = "mid_mask_embed_proj"
TOWER_WEIGHT_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ot", ".ckpt")
"""Tower-folder files that hold weights: not needed, `text_encoder.pth` carries every tower weight."""


@dataclass(frozen=True)
class StageFile:
    """One stage checkpoint and what its name says: crop (h, w, d) in voxels, spacing (h, w, d) in mm, step."""

    path: Path
    crop_size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    step: int

    @classmethod
    def parse(cls, path: Path) -> "StageFile | None":
        match = STAGE_FILE.search(Path(path).name)
        if match is None:
            return None
        numbers = match.groups()
        return cls(Path(path), tuple(int(n) for n in numbers[:3]), tuple(float(s) for s in numbers[3:6]),
                   int(numbers[6]))


@dataclass(frozen=True)
class OfficialFiles:
    """The located files of an official release: stage checkpoints by role, text encoder, tower folder."""

    stages: dict  # "coarse"/"fine" → StageFile
    text_encoder: Path
    tower_folder: Path


def is_stage_file(name: str) -> bool:
    return STAGE_FILE.search(name) is not None


def assign_stages(stage_files: list[StageFile]) -> dict:
    """Roles by spacing: of two stages the coarser voxel spacing is "coarse"; a lone stage is "fine" when its
    voxels are at most 1 mm³ (the official fine stage's), else "coarse"."""
    by_volume = sorted(stage_files, key=lambda f: math.prod(f.spacing))
    if len(by_volume) == 1:
        return {"fine" if math.prod(by_volume[0].spacing) <= 1.0 else "coarse": by_volume[0]}
    if len(by_volume) == 2 and math.prod(by_volume[0].spacing) < math.prod(by_volume[1].spacing):
        return {"fine": by_volume[0], "coarse": by_volume[1]}
    names = ", ".join(f.path.name for f in stage_files)
    raise WeightsError(f"expected one coarse and one fine stage checkpoint with different spacings, found: {names}")


def find_official_files(folder: Path) -> OfficialFiles:
    """Locate the release files directly inside `folder` (the official `checkpoints/` layout)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: not a folder")
    stage_files = [f for f in map(StageFile.parse, sorted(folder.glob("*.pth"))) if f is not None]
    if not stage_files:
        raise WeightsError(f"{folder}: no stage checkpoint named like "
                           "'nano_UNet_CVPR2025_crop_size_224_224_128_spacing_1.5_1.5_3.0_step_N.pth'")
    text_encoder = folder / TEXT_ENCODER_FILE
    if not text_encoder.is_file():
        raise WeightsError(f"{text_encoder}: file not found")
    towers = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(TOWER_FOLDER_PREFIX))
    if len(towers) != 1:
        found = ", ".join(p.name for p in towers) or "none"
        raise WeightsError(f"{folder}: expected one text tower folder named {TOWER_FOLDER_PREFIX}* (found {found})")
    return OfficialFiles(assign_stages(stage_files), text_encoder, towers[0])


def stage_config(stage_file: StageFile, plan: NetConfig | None = None) -> StageConfig:
    """The StageConfig of a stage checkpoint: `plan` (default: the official widths) with the file's crop."""
    net = dataclasses.replace(plan or NetConfig(), crop_size=stage_file.crop_size, deep_supervision=False)
    return StageConfig(net, stage_file.spacing)


def read_stage_state(stage_file: StageFile, net_config: NetConfig,
                     allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A stage checkpoint's inference weights, verified strictly against MedalSNet(net_config).

    Returns the state with one name per tensor (canonical `.conv.`/`.norm.` keys), ready to store.
    """
    state = strip_prefix(read_torch_checkpoint(stage_file.path, allow_pickle))
    state = {k: v for k, v in state.items() if not k.startswith(DEEP_SUPERVISION_KEYS)}
    with torch.device("meta"):
        expected = expected_shapes(MedalSNet(net_config))
    check_state(expected, state, stage_file.path)
    return drop_aliases(state, stage_file.path)


def official_text_config(tower_folder: Path, query_dim: int) -> TextConfig:
    """The official text encoder's configuration for a tower folder (its width read from config.json)."""
    path = Path(tower_folder) / "config.json"
    try:
        hidden_size = int(json.loads(path.read_text())["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{path}: cannot read the tower's hidden_size ({error})") from None
    return TextConfig(tower=Path(tower_folder).name, hidden_dim=hidden_size, query_dim=query_dim,
                      tokenization="official")


def read_text_state(path: Path, text_config: TextConfig, tower_folder: Path,
                    allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The official text encoder's weights, loaded into TextEncoder (which checks every key and shape) and
    returned as that module's state dict (extra keys of the file, such as SAT's `atlas_tower.*`, dropped)."""
    encoder = TextEncoder(text_config, tower_folder)
    try:
        load_official_state(encoder, read_torch_checkpoint(path, allow_pickle))
    except WeightsError as error:
        raise WeightsError(f"{path}: {error}") from None
    return encoder.state_dict()


def read_official_model(folder: Path, name: str, plan: NetConfig | None = None, allow_pickle: bool = False,
                        description: str = "", log=lambda message: None) -> tuple[ModelConfig, dict, dict, Path]:
    """Read and verify an official checkpoint folder → (config, stage state dicts, text state, tower folder).

    `plan` gives the network widths (default: the official NetConfig); crops and spacings come from the
    stage file names.
    """
    files = find_official_files(folder)
    stages, states = {}, {}
    for role, stage_file in sorted(files.stages.items()):
        stages[role] = stage_config(stage_file, plan)
        log(f"verifying {role} stage {stage_file.path.name}")
        states[role] = read_stage_state(stage_file, stages[role].net, allow_pickle)
    query_dim = next(iter(stages.values())).net.query_dim
    text_config = official_text_config(files.tower_folder, query_dim)
    log(f"verifying text encoder {files.text_encoder.name} with tower {files.tower_folder.name}")
    text_state = read_text_state(files.text_encoder, text_config, files.tower_folder, allow_pickle)
    config = ModelConfig(name=name, text=text_config, stages=stages, description=description)
    return config, states, text_state, files.tower_folder
