"""Where training starts and what it leaves: a fresh model from a plan, or an installed model to fine-tune;
and the export of the trained networks into the engine's model-folder format.

Fine-tuning (`init_from`) takes the model's text encoder and, for every stage the model has, its network and
working spacing; the deep-supervision heads, which model folders do not keep, start fresh. A stage the model lacks
needs its own plan and starts from scratch.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig, NetConfig, StageConfig, TextConfig
from ..errors import InputError, WeightsError
from ..modeling import MedalSNet
from ..text import TextEncoder
from ..text.towers import PACKAGED_TOWERS, packaged_tower_folder
from ..weights import load_model, save_model
from .config import TrainConfig
from .segmenter import he_initialise

MODEL_CARD = "MODEL_CARD.md"
DEEP_HEADS = "mid_mask_embed_proj."
"""Key prefix of the deep-supervision heads: trained, never exported (inference does not use them)."""


@dataclass
class TrainingModel:
    """The parts a run trains, in place: text encoder (and the folder of its tower), stage configs (networks without
    deep supervision), the stage networks (with deep supervision), and the orientation cases are turned to (None:
    as stored)."""

    text_encoder: TextEncoder
    tower_folder: Path
    stages: dict[str, StageConfig]
    nets: dict[str, MedalSNet]
    orientation: str | None = None


def tower_folder_of(name_or_folder: str) -> Path:
    """A packaged tower's folder (e.g. "all-MiniLM-L6-v2") or a Hugging Face folder path."""
    if name_or_folder in PACKAGED_TOWERS:
        return packaged_tower_folder(name_or_folder)
    folder = Path(name_or_folder).expanduser()
    if not (folder / "config.json").is_file():
        raise InputError(f"text tower {name_or_folder!r} is neither a packaged tower ({', '.join(PACKAGED_TOWERS)}) "
                         "nor a Hugging Face folder with config.json")
    return folder


def training_net(plan: NetConfig) -> MedalSNet:
    """A network of `plan` with deep supervision, backbone He-initialised."""
    net = MedalSNet(dataclasses.replace(plan, deep_supervision=True))
    he_initialise(net.backbone)
    return net


def _fresh(config: TrainConfig) -> TrainingModel:
    tower_folder = tower_folder_of(config.text_tower)
    torch.manual_seed(config.seed)
    text_encoder = TextEncoder(config.text, tower_folder)
    stages, nets = {}, {}
    for name, stage in config.stages.items():
        plan = dataclasses.replace(stage.net, deep_supervision=False)
        stages[name] = StageConfig(plan, stage.target_spacing)
        nets[name] = training_net(plan)
    return TrainingModel(text_encoder, tower_folder, stages, nets, config.orientation)


def _fine_tuned(config: TrainConfig) -> TrainingModel:
    loaded = load_model(config.init_from)
    model_name = loaded.config.name
    if config.text is not None and config.text != loaded.config.text:
        raise InputError(f"config 'text' differs from the text encoder of model {model_name!r}; leave it out to use "
                         "the model's")
    torch.manual_seed(config.seed)
    stages, nets = {}, {}
    for name, stage in config.stages.items():
        stored = loaded.config.stages.get(name)
        if stored is None:
            if stage.net is None or stage.target_spacing is None:
                raise InputError(f"model {model_name!r} has no {name} stage: give its 'net' and 'target_spacing'")
            plan = dataclasses.replace(stage.net, deep_supervision=False)
            stages[name], nets[name] = StageConfig(plan, stage.target_spacing), training_net(plan)
            continue
        if stage.net is not None and dataclasses.replace(stage.net, deep_supervision=False) != stored.net:
            raise InputError(f"stage {name}: 'net' differs from model {model_name!r}'s plan; leave it out to use it")
        stages[name] = StageConfig(stored.net, stage.target_spacing or stored.target_spacing)
        nets[name] = training_net(stored.net)
        missing, unexpected = nets[name].load_state_dict(loaded.nets[name].state_dict(), strict=False)
        if unexpected or any(not key.startswith(DEEP_HEADS) for key in missing):
            raise WeightsError(f"stage {name} of model {model_name!r} does not fit its own plan")
    text_encoder = loaded.text_encoder
    orientation = config.orientation or loaded.config.orientation
    return TrainingModel(text_encoder, loaded.text_encoder.tower_folder, stages, nets, orientation)


def initial_model(config: TrainConfig) -> TrainingModel:
    """The model training starts from, every part on the CPU in float32."""
    model = _fine_tuned(config) if config.init_from else _fresh(config)
    model.text_encoder.to("cpu")
    return model


def inference_state(net: MedalSNet) -> dict[str, torch.Tensor]:
    """A training network's state dict without the deep-supervision heads, tensors on the CPU."""
    return {k: v.detach().cpu() for k, v in net.state_dict().items() if not k.startswith(DEEP_HEADS)}


def export_model(folder: Path, config: TrainConfig, model: TrainingModel) -> Path:
    """Write the (trained) networks and text encoder of `model` as a model folder, replacing `folder` whole, with
    the configuration's model card as MODEL_CARD.md.

    Written beside the target first, so an interrupted export never leaves a half-written model.
    """
    folder = Path(folder)
    text: TextConfig = model.text_encoder.config
    description = config.description or f"trained with `medals train` ({config.name})"
    model_config = ModelConfig(config.name, text, dict(model.stages), description, model.orientation)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    try:
        save_model(staging / "model", model_config, {name: inference_state(net) for name, net in model.nets.items()},
                   {k: v.detach().cpu() for k, v in model.text_encoder.state_dict().items()},
                   model.tower_folder)
        if config.model_card is not None:
            shutil.copyfile(config.model_card, staging / "model" / MODEL_CARD)
        if folder.exists():
            shutil.rmtree(folder)
        (staging / "model").rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
