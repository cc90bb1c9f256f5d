"""Spatial-prompt simulation statistics (spec §3.2), measured over many draws on small volumes."""
import dataclasses

import pytest
import torch

from medals.train.prompt_simulation import PromptSimulation, simulate_prompts

SHAPE = (16, 16, 16)
NO_ZERO = PromptSimulation(zero_prob=0.0, channel_zero_prob=0.0)


def draws(targets, settings, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [simulate_prompts(targets, settings, generator) for _ in range(count)]


def test_whole_prompt_is_zero_with_the_configured_probability():
    # Nothing else empties a prompt here: no channel zeroing, no dropped blocks.
    settings = PromptSimulation(channel_zero_prob=0.0, drop_range=(0.0, 0.0))
    targets = torch.ones(2, *SHAPE)
    empty = [not sc.any() and not mc.any() for sc, mc in draws(targets, settings, 600)]
    assert sum(empty) / len(empty) == pytest.approx(0.35, abs=0.06)


def test_each_channel_is_zeroed_with_the_configured_probability():
    # One channel, no dropped or added blocks: the prompt is the target unless the channel was zeroed.
    settings = dataclasses.replace(PromptSimulation(zero_prob=0.0), drop_range=(0.0, 0.0), add_range=(0.0, 0.0))
    targets = torch.ones(1, *SHAPE)
    zeroed = [not mc.any() for _, mc in draws(targets, settings, 600)]
    assert sum(zeroed) / len(zeroed) == pytest.approx(0.1, abs=0.04)


def test_about_drop_fraction_of_the_blocks_is_dropped():
    settings = dataclasses.replace(NO_ZERO, add_range=(0.0, 0.0), block_sizes=(4,))
    targets = torch.ones(1, *SHAPE)
    kept = torch.stack([sc.mean() for sc, _ in draws(targets, settings, 300)])
    assert 1 - kept.mean().item() == pytest.approx(0.6, abs=0.03)  # E[U(0.3, 0.9)]
    assert 1 - kept.max().item() >= 0.1 and 1 - kept.min().item() <= 0.99


def test_dropped_and_added_regions_are_whole_blocks():
    settings = dataclasses.replace(NO_ZERO, add_range=(0.2, 0.2), block_sizes=(8,))
    targets = torch.zeros(1, *SHAPE)
    targets[0, :, :, :8] = 1
    for sc, _ in draws(targets, settings, 20):
        blocks = sc[0].unfold(0, 8, 8).unfold(1, 8, 8).unfold(2, 8, 8).reshape(8, -1)
        assert torch.all((blocks.min(1).values == blocks.max(1).values))


def test_without_added_blocks_prompts_never_exceed_the_targets():
    settings = dataclasses.replace(PromptSimulation(), add_range=(0.0, 0.0))
    targets = (torch.rand(3, *SHAPE) > 0.5).float()
    for sc, mc in draws(targets, settings, 30):
        assert torch.all(mc <= targets)
        assert torch.all(sc[0] <= targets.amax(0))


def test_added_blocks_switch_on_the_union_prompt_outside_the_targets():
    settings = dataclasses.replace(NO_ZERO, add_range=(0.5, 0.5), drop_range=(0.0, 0.0), block_sizes=(4,))
    targets = torch.zeros(2, *SHAPE)
    for sc, mc in draws(targets, settings, 10):
        assert sc.mean().item() == pytest.approx(0.5, abs=0.2)
        assert torch.equal(sc[0], mc.amax(0))


def test_every_kept_block_keeps_a_random_nonempty_subset_of_the_channels():
    settings = dataclasses.replace(NO_ZERO, drop_range=(0.0, 0.0), add_range=(0.0, 0.0), block_sizes=(4,))
    targets = torch.ones(3, *SHAPE)
    fractions = []
    for sc, mc in draws(targets, settings, 50):
        assert torch.all(sc == 1)
        channels_per_voxel = mc.sum(0)
        assert channels_per_voxel.min() >= 1
        fractions.append(channels_per_voxel.mean().item() / 3)
    assert sum(fractions) / len(fractions) == pytest.approx(2 / 3, abs=0.03)  # k ~ U{1, 2, 3}


def test_prompts_are_float_and_shaped_like_the_targets():
    sc, mc = simulate_prompts(torch.ones(4, 5, 6, 7), NO_ZERO, torch.Generator().manual_seed(1))
    assert sc.shape == (1, 5, 6, 7) and mc.shape == (4, 5, 6, 7)
    assert sc.dtype == mc.dtype == torch.float32
