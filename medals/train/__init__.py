"""Training: datasets of labelled volumes with prompt sets, patch sampling and augmentation, simulated prompts,
query sampling, Dice + BCE with deep supervision, AdamW with warm-up + cosine, checkpoints, DDP via torchrun."""
from .config import TrainConfig, load_config, parse_config
from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "parse_config", "train"]
