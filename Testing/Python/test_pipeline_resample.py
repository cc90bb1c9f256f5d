"""Resampling kernels: thick-axis choice, label indicator rule, images (spec §5.4, §12)."""
from __future__ import annotations

import torch

from medals.pipeline.resample import resample_image, resample_labels, thick_axis


def test_thick_axis_is_the_single_axis_more_than_three_times_coarser():
    assert thick_axis((1.5, 1.5, 5.0), (2.0, 2.0, 2.0)) == 2


def test_no_thick_axis_at_anisotropy_three_or_less():
    assert thick_axis((1.0, 1.0, 3.0), (1.0, 1.0, 1.0)) is None


def test_no_thick_axis_when_two_axes_share_the_largest_spacing():
    assert thick_axis((5.0, 5.0, 1.0), (1.0, 1.0, 1.0)) is None


def test_thick_axis_falls_back_to_the_new_spacing():
    assert thick_axis((1.0, 1.0, 1.0), (4.0, 1.0, 1.0)) == 0


def test_label_ties_go_to_the_lower_label_value():
    # [a, b] → 3 voxels: the middle one is exactly half a, half b.
    up = resample_labels(torch.tensor([[[2, 1]]], dtype=torch.int16), (1, 1, 3))
    assert up.flatten().tolist() == [2, 1, 1]
    up = resample_labels(torch.tensor([[[1, 2]]], dtype=torch.int16), (1, 1, 3))
    assert up.flatten().tolist() == [1, 1, 2]


def test_label_resampling_keeps_only_present_labels_and_returns_int16():
    labels = torch.zeros(4, 4, 4, dtype=torch.int16)
    labels[1:3, 1:3, 1:3] = 7
    out = resample_labels(labels, (8, 8, 8))
    assert out.dtype == torch.int16
    assert set(out.unique().tolist()) == {0, 7}
    assert out[2:6, 2:6, 2:6].sum() > 0 and out[3:5, 3:5, 3:5].eq(7).all()


def test_image_along_the_thick_axis_is_resampled_by_nearest_neighbour():
    image = torch.tensor([0.0, 100.0]).view(1, 1, 2).expand(2, 2, 2).contiguous()
    linear = resample_image(image, (2, 2, 4))
    nearest = resample_image(image, (2, 2, 4), axis=2)
    assert linear[0, 0].tolist() == [0.0, 25.0, 75.0, 100.0]
    assert nearest[0, 0].tolist() == [0.0, 0.0, 100.0, 100.0]


def test_in_plane_resampling_is_bilinear_with_a_thick_axis():
    image = torch.tensor([0.0, 100.0]).view(2, 1, 1).expand(2, 2, 3).contiguous()
    out = resample_image(image, (4, 2, 3), axis=2)
    assert out[:, 0, 0].tolist() == [0.0, 25.0, 75.0, 100.0]


def test_resampling_to_the_same_shape_is_the_identity():
    image = torch.rand(5, 6, 7)
    assert torch.equal(resample_image(image, (5, 6, 7)), image)
