"""Training loss on hand-made cases: Dice (squared denominators) + BCE, real queries only, deep supervision."""
import math

import pytest
import torch

from medals.train.loss import (bce_loss, deep_supervision_loss, dice_loss, downsample_targets, level_weights,
                               segmentation_loss)


def test_deep_supervision_weights_halve_per_level_and_sum_to_one():
    assert level_weights(4) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])


def test_confident_correct_logits_give_almost_zero_loss():
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., :2] = 1
    logits = (target * 2 - 1) * 50
    assert segmentation_loss(logits, target, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(0, abs=1e-6)


def test_zero_logits_give_log2_bce_and_the_hand_computed_dice():
    target = torch.zeros(1, 1, 2, 2, 2)
    target[0, 0, 0] = 1  # 4 of 8 voxels
    logits = torch.zeros_like(target)  # p = 0.5 everywhere
    assert bce_loss(logits, target).item() == pytest.approx(math.log(2))
    # 1 − (2·Σpg)/(Σp² + Σg²) = 1 − (2·2)/(8·0.25 + 4) = 1/3
    assert dice_loss(logits, target).item() == pytest.approx(1 / 3, abs=1e-6)


def test_an_empty_target_with_an_empty_prediction_costs_nothing():
    target = torch.zeros(1, 1, 2, 2, 2)
    assert dice_loss(torch.full_like(target, -1e4), target).item() == pytest.approx(0, abs=1e-6)


def test_padding_queries_do_not_change_the_loss():
    target = torch.randint(0, 2, (2, 3, 4, 4, 4)).float()
    logits = torch.randn(2, 3, 4, 4, 4)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    changed = logits.clone()
    changed[~mask] = 1e3
    assert segmentation_loss(logits, target, mask) == segmentation_loss(changed, target, mask)


def test_loss_is_the_mean_over_real_queries():
    target = torch.randint(0, 2, (1, 2, 4, 4, 4)).float()
    logits = torch.randn(1, 2, 4, 4, 4)
    both = segmentation_loss(logits, target, torch.ones(1, 2, dtype=torch.bool))
    each = [segmentation_loss(logits[:, [n]], target[:, [n]], torch.ones(1, 1, dtype=torch.bool)) for n in (0, 1)]
    assert both.item() == pytest.approx((each[0] + each[1]).item() / 2)


def test_targets_of_lower_levels_are_nearest_neighbour_samples():
    target = torch.zeros(1, 1, 4, 4, 4)
    target[0, 0, 0, 0, 0] = 1
    target[0, 0, 2, 2, 2] = 1
    small = downsample_targets(target, (2, 2, 2))
    assert small.shape == (1, 1, 2, 2, 2)
    assert small[0, 0, 0, 0, 0] == 1 and small[0, 0, 1, 1, 1] == 1 and small.sum() == 2


def test_deep_supervision_loss_is_the_weighted_sum_of_level_losses():
    target = torch.randint(0, 2, (1, 2, 8, 8, 8)).float()
    outputs = [torch.randn(1, 2, n, n, n) for n in (8, 4, 2, 1)]
    mask = torch.ones(1, 2, dtype=torch.bool)
    by_hand = sum(w * segmentation_loss(o, downsample_targets(target, o.shape[2:]), mask)
                  for w, o in zip([8 / 15, 4 / 15, 2 / 15, 1 / 15], outputs))
    assert deep_supervision_loss(outputs, target, mask).item() == pytest.approx(by_hand.item())
