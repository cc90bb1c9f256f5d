"""Spatial prompts of one batch of windows, and the complementary block masking used whenever a prompt exists.

The model was trained to predict where blocks of its prompt were dropped (spec §3.2), so a prompted window is
predicted twice (spec §3.3): once with a random half of the blocks of the prompt kept and once with the other half,
and every voxel takes the prediction of the pass in which its own block was hidden.

A `BlockPermutation` maps a block count K to a permutation of range(K); the first max(1, K // 2) entries are the
blocks kept in the first pass. The official code draws `torch.randperm`; tests inject a fixed rule.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

BlockPermutation = Callable[[int], torch.Tensor]
Forward = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]
"""forward(image (B,1,*crop), sc (B,1,*crop) or None, mc (B,N,*crop)) → logits (B,N,*crop)."""

FIRST_PASS_BLOCK = 8   # block edge (voxels) for the first prompted prediction
REFINE_BLOCK = 4       # block edge for self-refinement passes


def random_permutation(seed: int = 0) -> BlockPermutation:
    """Seeded `torch.randperm`: the official random block choice, reproducible from run to run."""
    generator = torch.Generator().manual_seed(seed)
    return lambda count: torch.randperm(count, generator=generator)


def repeated_permutation(seed: int = 0) -> BlockPermutation:
    """The same seeded permutation on every call: windows predicted twice with different prompts hide the same
    blocks, so their difference is the prompts' alone."""
    return lambda count: torch.randperm(count, generator=torch.Generator().manual_seed(seed))


def block_mask(shape, block: int, permutation: BlockPermutation) -> torch.Tensor:
    """Bool mask of `shape` that is True on the chosen half of the (block³) blocks, C order over the block grid."""
    grid = [math.ceil(n / block) for n in shape]
    count = math.prod(grid)
    chosen = torch.zeros(count, dtype=torch.bool)
    chosen[permutation(count)[:max(1, count // 2)]] = True
    mask = chosen.view(grid)
    for axis in range(3):
        mask = mask.repeat_interleave(block, dim=axis)
    return mask[:shape[0], :shape[1], :shape[2]]


def label_prompts(labels: torch.Tensor, label_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-map prompt (B, *crop) → union `sc` (B,1,*crop) and per-query `mc` (B,N,*crop), both float32."""
    mc = (labels[:, None] == label_values.view(1, -1, 1, 1, 1)).float()
    return (labels[:, None] > 0).float(), mc


def complementary_logits(forward: Forward, image: torch.Tensor, sc: torch.Tensor, mc: torch.Tensor, block: int,
                         permutation: BlockPermutation) -> torch.Tensor:
    """Logits (B,N,*crop) from two passes with complementary halves of each window's prompt blocks hidden.

    One block mask is drawn per window, in batch order. Voxels whose block was kept in pass A take pass B's
    logits and the others pass A's: each voxel is predicted with its own prompt block hidden.
    """
    kept = torch.stack([block_mask(image.shape[2:], block, permutation) for _ in range(image.shape[0])])
    kept = kept[:, None].to(image.device)
    first = forward(image, sc * kept, mc * kept)
    second = forward(image, sc * ~kept, mc * ~kept)
    return torch.where(kept, second, first)
