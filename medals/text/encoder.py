"""The text encoder: prompts + image modality → one query vector per prompt (spec §4.1–4.2).

`TextEncoder` = text tower (tokenize, transformer, masked mean pooling) → `projection_layer`
(Linear → GELU → Linear) + `modality_embed[modality]`. Submodule names follow the official
`Knowledge_Encoder`, so the keys of the released `text_encoder.pth` (after `module.` is stripped) are this
module's state-dict keys: `text_tower.biolord.*`, `projection_layer.{0,2}.*`, `modality_embed.weight`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import TextConfig
from ..errors import InputError, WeightsError
from .cache import EmbeddingCache
from .tokenizer import TOKENIZATIONS, token_ids
from .towers import load_tower_model, load_tower_tokenizer


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden states (N, L, C) over the tokens where mask (N, L) is non-zero → (N, C).

    `Σ h·mask / max(Σ mask, 1e-9)`, as the official tower pools (an all-zero mask gives zeros, not NaN).
    """
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class TextTower(nn.Module):
    """Prompt strings → pooled hidden states (N, hidden_size) of a Hugging Face transformer."""

    def __init__(self, folder: Path, tokenization: str, max_length: int):
        super().__init__()
        # "biolord" is the official attribute name; the checkpoint keys `text_tower.biolord.*` depend on it,
        # whichever transformer the folder holds.
        self.biolord = load_tower_model(folder)
        self.tokenizer = load_tower_tokenizer(folder)
        self.tokenization = tokenization
        self.max_length = max_length

    @property
    def hidden_size(self) -> int:
        return self.biolord.config.hidden_size

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(input_ids, attention_mask)`, each (N, L) int64 on the CPU."""
        return token_ids(self.tokenizer, prompts, self.tokenization, self.max_length)

    def forward(self, prompts: list[str]) -> torch.Tensor:
        input_ids, attention_mask = self.tokenize(prompts)
        device = self.biolord.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        # No token_type_ids, as in the official tower (towers that have them default to zeros).
        hidden = self.biolord(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(hidden, attention_mask)


class TextEncoder(nn.Module):
    """Prompts and a modality code → queries (N, query_dim) for the segmentation network.

    `tower_folder` is a Hugging Face model folder (config + tokenizer files; weights optional, since a
    checkpoint loaded with `load_official_state` overwrites them). `forward` is the differentiable,
    uncached path with the official signature; `encode` is the validated, cached path for inference.
    """

    def __init__(self, config: TextConfig, tower_folder: Path, cache_size: int = 1024):
        super().__init__()
        if config.tokenization not in TOKENIZATIONS:
            raise ValueError(f"unknown tokenization {config.tokenization!r}; expected one of {', '.join(TOKENIZATIONS)}")
        self.config = config
        self.tower_folder = Path(tower_folder).resolve()
        self.text_tower = TextTower(self.tower_folder, config.tokenization, config.max_length)
        if self.text_tower.hidden_size != config.hidden_dim:
            raise WeightsError(f"text tower {self.tower_folder} has hidden size {self.text_tower.hidden_size}, "
                               f"the text config says {config.hidden_dim}")
        self.projection_layer = nn.Sequential(
            nn.Linear(config.hidden_dim, config.query_dim), nn.GELU(), nn.Linear(config.query_dim, config.query_dim))
        self.modality_embed = nn.Embedding(len(config.modalities), config.query_dim)
        self.cache = EmbeddingCache(cache_size)
        # Bumped by every load_state_dict, so embeddings cached under older weights are never served.
        self._weights_version = 0
        self.register_load_state_dict_post_hook(TextEncoder._count_weight_load)
        self.eval()

    @staticmethod
    def _count_weight_load(module: "TextEncoder", incompatible_keys) -> None:
        module._weights_version += 1

    def forward(self, prompts: list[str], modality_codes: torch.Tensor) -> torch.Tensor:
        """Queries (N, query_dim) for N prompts; `modality_codes` (1,) is shared by all prompts, (N,) is per prompt."""
        features = self.text_tower(prompts)
        return self.projection_layer(features) + self.modality_embed(modality_codes.to(features.device))

    def modality_code(self, modality: str) -> int:
        """Index of a modality name (case-insensitive) in the modality-embedding table."""
        name = modality.strip().lower() if isinstance(modality, str) else modality
        if name not in self.config.modalities:
            raise InputError(f"unknown modality {modality!r}; valid modalities: {', '.join(self.config.modalities)}")
        return self.config.modalities.index(name)

    def identity(self) -> tuple:
        """What an embedding depends on besides its text and modality: tower, config, weights, device, dtype."""
        parameter = next(self.parameters())
        return (str(self.tower_folder), self.config, self._weights_version, str(parameter.device), parameter.dtype)

    @torch.no_grad()
    def encode(self, prompts: list[str], modality: str) -> torch.Tensor:
        """float32 queries (N, query_dim) for N prompt strings of one image modality ("ct", "mri", ...).

        Prompts go to the tower unchanged. Embeddings are cached by (model identity, modality, text): only
        prompts not seen before under these weights run through the tower, in one batch.
        """
        if self.training:
            raise RuntimeError("TextEncoder.encode is for inference: call .eval() first (dropout would be active)")
        _check_prompts(prompts)
        code = self.modality_code(modality)
        identity = self.identity()
        key = {text: (identity, self.config.modalities[code], text) for text in prompts}
        found = {text: self.cache.get(key[text]) for text in key}
        missing = [text for text, embedding in found.items() if embedding is None]
        if missing:
            device = next(self.parameters()).device
            queries = self(missing, torch.tensor([code], device=device)).float()
            for text, query in zip(missing, queries):
                found[text] = query = query.clone()  # its own storage, not a view of the batch
                self.cache.put(key[text], query)
        return torch.stack([found[text] for text in prompts])


def _check_prompts(prompts) -> None:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise InputError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise InputError("no prompts given: at least one text prompt is needed")
    for number, text in enumerate(prompts, start=1):
        if not isinstance(text, str):
            raise InputError(f"prompt {number} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise InputError(f"prompt {number} is empty")


def load_official_state(encoder: TextEncoder, state: dict) -> None:
    """Load official text-encoder weights into `encoder`.

    `state` is the state dict of the official `Knowledge_Encoder` (e.g. `torch.load("text_encoder.pth")
    ["model_state_dict"]`) or the checkpoint dict holding it under "model_state_dict". A leading `module.`
    (DDP) is stripped; keys the encoder does not have (`atlas_tower.*`, `temperature`, a persistent
    `position_ids` buffer, ...) are ignored, as the official `strict=False` load ignores them. Unlike that
    load, a missing or mis-shaped key is an error: WeightsError naming the first one.
    """
    if "model_state_dict" in state:
        state = state["model_state_dict"]
    stripped = {key.removeprefix("module."): value for key, value in state.items()}
    expected = encoder.state_dict()
    for key, tensor in expected.items():
        if key not in stripped:
            raise WeightsError(f"text encoder weights lack {key}")
        shape = tuple(getattr(stripped[key], "shape", ()))
        if not isinstance(stripped[key], torch.Tensor) or shape != tuple(tensor.shape):
            raise WeightsError(f"text encoder weight {key} has shape {list(shape)}, expected {list(tensor.shape)}")
    encoder.load_state_dict({key: stripped[key] for key in expected})
