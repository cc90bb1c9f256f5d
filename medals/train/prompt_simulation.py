"""Simulated spatial prompts for training (spec §3.2): partial, blocky, channel-shuffled copies of the targets.

From the N target masks of one sample the simulation builds the two prompt inputs of the network:
`sc` (1, *spatial), the union prompt, and `mc` (N, *spatial), one prompt per query. With probability
`zero_prob` both are all zero (text-only training). Otherwise each channel is first zeroed with probability
`channel_zero_prob`; one cubic block size is drawn; a fraction p_drop ~ U(drop_range) of the blocks is dropped
(the network must predict there without a hint) and a fraction p_add ~ U(add_range) of the others is filled
with ones (false hints); inside every kept block only a random non-empty subset of the channels keeps its
mask, and every added block switches on a random non-empty subset of the channels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PromptSimulation:
    """Probabilities of the simulation; the defaults are the official training values."""

    zero_prob: float = 0.35
    channel_zero_prob: float = 0.1
    drop_range: tuple[float, float] = (0.3, 0.9)
    add_range: tuple[float, float] = (0.0, 0.02)
    block_sizes: tuple[int, ...] = (4, 8, 16, 32)
    no_fusion_prob: float = 0.1
    """Per optimizer step: probability that the whole batch trains without the per-query prompt (mc = None)."""

    def __post_init__(self):
        for name in ("zero_prob", "channel_zero_prob", "no_fusion_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("drop_range", "add_range"):
            low, high = getattr(self, name)
            if not 0 <= low <= high <= 1:
                raise ValueError(f"{name} must be 0 ≤ low ≤ high ≤ 1, got {getattr(self, name)}")
        if not self.block_sizes or min(self.block_sizes) < 1:
            raise ValueError(f"block_sizes must be positive integers, got {self.block_sizes}")


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _random_channel_subsets(channels: int, blocks: int, generator: torch.Generator) -> torch.Tensor:
    """(channels, blocks) bool: for every block, k ~ U{1..channels} channels chosen at random."""
    counts = torch.randint(1, channels + 1, (blocks,), generator=generator)
    ranks = torch.rand(channels, blocks, generator=generator).argsort(0).argsort(0)
    return ranks < counts


def _to_voxels(block_values: torch.Tensor, block: int, spatial) -> torch.Tensor:
    """Block-grid values (..., gh, gw, gd) → voxels (..., *spatial), each block a block³ cube (edge blocks cut)."""
    for axis in range(-3, 0):
        block_values = block_values.repeat_interleave(block, dim=axis)
    return block_values[..., :spatial[0], :spatial[1], :spatial[2]]


def simulate_prompts(targets: torch.Tensor, settings: PromptSimulation,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets (N, h, w, d) {0, 1} → (sc (1, h, w, d), mc (N, h, w, d)), float32 in {0, 1}."""
    channels, spatial = targets.shape[0], tuple(targets.shape[1:])
    targets = targets.bool()
    if torch.rand((), generator=generator).item() < settings.zero_prob:
        return torch.zeros((1, *spatial)), torch.zeros((channels, *spatial))
    kept_channels = torch.rand(channels, generator=generator) >= settings.channel_zero_prob
    targets = targets & kept_channels.view(-1, 1, 1, 1)

    block = settings.block_sizes[torch.randint(len(settings.block_sizes), (), generator=generator).item()]
    grid = tuple(math.ceil(n / block) for n in spatial)
    n_blocks = math.prod(grid)
    drop_prob = _uniform(*settings.drop_range, generator)
    add_prob = _uniform(*settings.add_range, generator)
    dropped = torch.rand(n_blocks, generator=generator) < drop_prob
    added = (torch.rand(n_blocks, generator=generator) < add_prob) & ~dropped
    channel_keep = _random_channel_subsets(channels, n_blocks, generator) & ~dropped
    channel_add = _random_channel_subsets(channels, n_blocks, generator) & added

    dropped_voxels = _to_voxels(dropped.view(grid), block, spatial)
    added_voxels = _to_voxels(added.view(grid), block, spatial)
    sc = (targets.any(0) & ~dropped_voxels) | added_voxels
    mc = (targets & _to_voxels(channel_keep.view(channels, *grid), block, spatial)) \
        | _to_voxels(channel_add.view(channels, *grid), block, spatial)
    return sc[None].float(), mc.float()
