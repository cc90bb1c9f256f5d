"""The trainable model: one Medal S network per stage plus the text head over frozen text-tower features.

The text tower is frozen, as in the official recipe, so its pooled features for every phrasing of the dataset
are computed once (`tower_features`) and kept as a table; a query is then `projection(features[row]) +
modality_embed[code]`, the text encoder's own head, trained or frozen as configured. Everything a training step
differentiates lives in `Segmenter`, the one module DistributedDataParallel wraps.
"""
from __future__ import annotations

import torch
from torch import nn

from ..modeling import MedalSNet
from ..text import TextEncoder
from .batches import Batch


@torch.no_grad()
def tower_features(text_encoder: TextEncoder, texts: list[str], chunk: int = 64) -> torch.Tensor:
    """Pooled tower outputs (len(texts), hidden_dim) float32 for the given phrasings, in order."""
    tower = text_encoder.text_tower.eval()
    return torch.cat([tower(texts[start:start + chunk]).float() for start in range(0, len(texts), chunk)])


def he_initialise(module: nn.Module, negative_slope: float = 1e-2) -> None:
    """Kaiming-normal weights (a = 0.01) and zero biases for every (transposed) convolution, as the official
    backbone is initialised (nnU-Net's InitWeights_He)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(layer.weight, a=negative_slope)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class Segmenter(nn.Module):
    """Stage networks (deep supervision on) + text head; `forward` runs one batch per stage.

    `features` (M, hidden_dim) is the frozen tower output per phrasing, a non-persistent buffer (rebuilt from the
    dataset, never saved).
    """

    def __init__(self, nets: dict[str, MedalSNet], text_encoder: TextEncoder, features: torch.Tensor,
                 train_text_head: bool):
        super().__init__()
        self.nets = nn.ModuleDict(nets)
        self.projection_layer = text_encoder.projection_layer
        self.modality_embed = text_encoder.modality_embed
        self.register_buffer("features", features, persistent=False)
        for parameter in (*self.projection_layer.parameters(), *self.modality_embed.parameters()):
            parameter.requires_grad_(train_text_head)

    def queries(self, query_index: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Queries (B, N, query_dim) for text-bank rows (B, N) of samples with modality codes (B,)."""
        return self.projection_layer(self.features[query_index]) + self.modality_embed(modality)[:, None, :]

    def forward(self, batches: dict[str, Batch], fuse_prompts: bool) -> dict[str, list[torch.Tensor]]:
        """Logits per stage, [full, /2, /4, /8] resolution; `fuse_prompts=False` trains without the mc path."""
        outputs = {}
        for stage, batch in batches.items():
            queries = self.queries(batch.query_index, batch.modality)
            outputs[stage] = self.nets[stage](queries, batch.image, batch.sc, batch.mc if fuse_prompts else None)
        return outputs
