"""Complementary block masking of spatial prompts (spec §3.3)."""
from __future__ import annotations

import torch

from medals.pipeline.prompting import block_mask, complementary_logits, label_prompts


def first_half(count):
    return torch.arange(count)


def test_block_mask_keeps_the_first_half_of_the_blocks_in_c_order():
    mask = block_mask((16, 8, 8), 8, first_half)  # 2 blocks along h: the first one is kept
    assert mask[:8].all() and not mask[8:].any()


def test_block_mask_keeps_at_least_one_block_and_is_cropped_to_the_shape():
    mask = block_mask((5, 5, 5), 8, first_half)
    assert mask.shape == (5, 5, 5) and mask.all()


def test_label_prompts_give_the_union_and_one_channel_per_query():
    labels = torch.tensor([0, 3, 5, 3]).view(1, 1, 1, 4)
    sc, mc = label_prompts(labels, torch.tensor([5, 3]))
    assert sc.flatten().tolist() == [0, 1, 1, 1]
    assert mc[0, :, 0, 0].tolist() == [[0, 0, 1, 0], [0, 1, 0, 1]]


def test_every_voxel_is_predicted_with_its_own_prompt_block_hidden():
    # A forward that echoes its per-query prompt: the combined result must never show a voxel its own prompt.
    mc = torch.ones(2, 3, 16, 16, 16)
    logits = complementary_logits(lambda image, sc, mc: mc, torch.zeros(2, 1, 16, 16, 16), mc[:, :1], mc, 8,
                                  lambda count: torch.randperm(count))
    assert logits.shape == mc.shape and not logits.any()


def test_each_window_of_a_batch_draws_its_own_blocks():
    drawn = []
    complementary_logits(lambda image, sc, mc: mc, torch.zeros(3, 1, 8, 8, 8), torch.ones(3, 1, 8, 8, 8),
                         torch.ones(3, 1, 8, 8, 8), 4, lambda count: drawn.append(count) or torch.arange(count))
    assert drawn == [8, 8, 8]
