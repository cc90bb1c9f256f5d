"""The engine's own model format: one folder per model.

```
<model>/
  config.json                 ModelConfig ("format": "medals-model/1"): stage plans, spacings, text encoder
  coarse.safetensors          stage weights (either stage file may be absent, as in config.json)
  fine.safetensors
  text_encoder.safetensors    text tower + projection + modality embedding
  text_tower/                 Hugging Face config + tokenizer files of the tower (no weights)
```

A model whose text tower ships inside a Python package (`medals.text.towers.PACKAGED_TOWERS`, e.g. the demo
model's all-MiniLM-L6-v2) stores neither the tower folder nor the tower's weights: they are frozen during
training, so the package's copy is exact, and leaving them out keeps such a model small enough to ship.

Stage files hold each tensor once, under its canonical `.conv.`/`.norm.` name (safetensors refuses the
shared `.all_modules.0/1.` aliases of the official layout); loading restores the aliases and loads strictly, so
every real parameter is verified by name and shape.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import ModelConfig
from ..errors import WeightsError
from ..modeling import MedalSNet
from ..text import TextEncoder
from ..text.towers import PACKAGED_TOWERS, packaged_tower_folder
from .official import TOWER_WEIGHT_SUFFIXES
from .state import canonical_key, check_state, drop_aliases, expected_shapes, load_strict, restore_aliases
from .store import CONFIG_FILE, read_model_config, resolve_model

STAGES = ("coarse", "fine")
TEXT_FILE = "text_encoder.safetensors"
TOWER_DIR = "text_tower"


TOWER_PREFIX = "text_tower."


def _packaged_tower(config: ModelConfig) -> Path | None:
    """The package folder of the model's text tower, when it ships in a Python package."""
    return packaged_tower_folder(config.text.tower) if config.text.tower in PACKAGED_TOWERS else None


def _without_tower(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(TOWER_PREFIX)}


def stage_file(stage: str) -> str:
    return f"{stage}.safetensors"


@dataclass
class LoadedModel:
    """A model ready for inference: every module in eval() mode on `device`.

    `nets` maps "coarse" and/or "fine" to its MedalSNet (only the stages the model has).
    """

    config: ModelConfig
    path: Path
    device: torch.device
    text_encoder: TextEncoder
    nets: dict


def _canonical_shapes(net_config) -> dict[str, torch.Size]:
    with torch.device("meta"):
        shapes = expected_shapes(MedalSNet(net_config))
    return {canonical_key(k): v for k, v in shapes.items()}


def _text_shapes(config: ModelConfig, tower_folder: Path) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return expected_shapes(TextEncoder(config.text, tower_folder))


def _check_config(config: ModelConfig) -> None:
    unknown = set(config.stages) - set(STAGES)
    if unknown or not config.stages:
        raise WeightsError(f"model {config.name!r}: stages must be a non-empty subset of {STAGES}, got "
                           f"{sorted(config.stages)}")
    for stage, stage_config in config.stages.items():
        if stage_config.net.query_dim != config.text.query_dim:
            raise WeightsError(f"model {config.name!r}: text query_dim {config.text.query_dim} differs from the "
                               f"{stage} network's query_dim {stage_config.net.query_dim}")


def _write_safetensors(state: dict, path: Path, stage: str) -> None:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={"format": "medals-model/1", "part": stage})


def _copy_tower(tower_folder: Path, destination: Path) -> None:
    """Copy the tower's config and tokenizer files (top-level files except weights)."""
    tower_folder = Path(tower_folder)
    if not (tower_folder / "config.json").is_file():
        raise WeightsError(f"text tower folder {tower_folder} has no config.json")
    destination.mkdir()
    for path in sorted(tower_folder.iterdir()):
        if path.is_file() and not path.name.endswith(TOWER_WEIGHT_SUFFIXES):
            shutil.copyfile(path, destination / path.name)


def save_model(folder, config: ModelConfig, stage_state_dicts: dict, text_state: dict, tower_folder) -> Path:
    """Write a model folder after verifying every tensor's name and shape against the configuration.

    `stage_state_dicts` maps each stage of `config.stages` to a MedalSNet state dict (aliases optional);
    `text_state` is the TextEncoder state dict; `tower_folder` the Hugging Face tower folder whose config and
    tokenizer files are copied (unused for a packaged tower, whose files and weights are not stored). `folder` must not exist yet or be empty. Returns the folder.
    """
    folder = Path(folder)
    _check_config(config)
    if set(stage_state_dicts) != set(config.stages):
        raise WeightsError(f"model {config.name!r}: weights given for stages {sorted(stage_state_dicts)}, "
                           f"config has {sorted(config.stages)}")
    canonical_states = {}
    for stage, state in stage_state_dicts.items():
        canonical_states[stage] = drop_aliases(state, f"{stage} weights")
        check_state(_canonical_shapes(config.stages[stage].net), canonical_states[stage], f"{stage} weights")
    packaged = _packaged_tower(config)
    text_shapes = _text_shapes(config, packaged or tower_folder)
    if packaged:
        text_shapes, text_state = _without_tower(text_shapes), _without_tower(text_state)
    check_state(text_shapes, text_state, "text encoder weights")

    if folder.exists() and any(folder.iterdir()):
        raise WeightsError(f"{folder}: folder exists and is not empty")
    folder.mkdir(parents=True, exist_ok=True)
    if not packaged:
        _copy_tower(tower_folder, folder / TOWER_DIR)
    for stage, state in canonical_states.items():
        _write_safetensors(state, folder / stage_file(stage), stage)
    _write_safetensors(text_state, folder / TEXT_FILE, "text_encoder")
    config.save(folder / CONFIG_FILE)  # last: a folder with config.json is complete
    return folder


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path}: cannot be read, the file is truncated or corrupt ({error})") from None


def load_model(name_or_path, device="cpu") -> LoadedModel:
    """Load an installed model (store name) or a model folder (path), verified strictly, in eval() mode."""
    folder = resolve_model(name_or_path)
    config = read_model_config(folder)
    _check_config(config)
    device = torch.device(device)

    packaged = _packaged_tower(config)
    text_encoder = TextEncoder(config.text, packaged or folder / TOWER_DIR)
    text_state = _read_safetensors(folder / TEXT_FILE)
    if packaged:  # the tower's weights are the package's own, already loaded
        text_state = {**text_state, **{k: v for k, v in text_encoder.state_dict().items() if k.startswith(TOWER_PREFIX)}}
    load_strict(text_encoder, text_state, folder / TEXT_FILE)
    nets = {}
    for stage, stage_config in config.stages.items():
        net = MedalSNet(stage_config.net)
        path = folder / stage_file(stage)
        load_strict(net, restore_aliases(_read_safetensors(path), net.state_dict().keys()), path)
        nets[stage] = net.eval().to(device)
    return LoadedModel(config, folder, device, text_encoder.eval().to(device), nets)
