"""Training loss: Dice + BCE per query, averaged over the real queries, with deep supervision (spec §6.4).

Shapes: logits (B, N, *spatial) raw; targets (B, N, *spatial) in {0, 1}; query_mask (B, N) bool, False for the
padding queries a batch adds so that every sample has N of them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_EPS = 1e-7


def level_weights(levels: int) -> list[float]:
    """Deep-supervision weights 1, 1/2, 1/4, ... normalised to sum 1 (4 levels: 0.533, 0.267, 0.133, 0.067)."""
    raw = [0.5 ** k for k in range(levels)]
    return [w / sum(raw) for w in raw]


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 − (2Σpg + ε)/(Σp² + Σg² + ε) per (b, n), p = σ(logits), sums over all voxels → (B, N)."""
    p = torch.sigmoid(logits.float()).flatten(2)
    g = targets.float().flatten(2)
    return 1 - (2 * (p * g).sum(-1) + DICE_EPS) / (p.square().sum(-1) + g.square().sum(-1) + DICE_EPS)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, mean over voxels per (b, n) → (B, N)."""
    per_voxel = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return per_voxel.flatten(2).mean(-1)


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """BCE + Dice of one output level, averaged over the real queries of the batch (a scalar)."""
    per_query = bce_loss(logits, targets) + dice_loss(logits, targets)
    weights = query_mask.to(per_query.dtype)
    return (per_query * weights).sum() / weights.sum().clamp(min=1)


def downsample_targets(targets: torch.Tensor, shape) -> torch.Tensor:
    """Binary targets (B, N, *spatial) → (B, N, *shape) by nearest-neighbour sampling."""
    if tuple(targets.shape[2:]) == tuple(shape):
        return targets
    return F.interpolate(targets.float(), size=tuple(shape), mode="nearest")


def deep_supervision_loss(outputs: list[torch.Tensor], targets: torch.Tensor,
                          query_mask: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k · loss(outputs[k], targets at outputs[k]'s resolution), w = level_weights(len(outputs)).

    `outputs` is the network's training output, full resolution first; targets are at full resolution.
    """
    total = 0.0
    for weight, logits in zip(level_weights(len(outputs)), outputs):
        total = total + weight * segmentation_loss(logits, downsample_targets(targets, logits.shape[2:]), query_mask)
    return total
