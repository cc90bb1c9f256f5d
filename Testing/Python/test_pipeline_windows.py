"""Sliding windows, padding and the Gaussian importance map (spec §7.3)."""
from __future__ import annotations

import torch

from medals.pipeline.windows import gaussian_importance, pad_to, sliding_windows, window_starts


def test_window_starts_overlap_by_half_and_the_last_window_ends_at_the_border():
    assert window_starts(68, 64) == [0, 4]
    assert window_starts(160, 64) == [0, 32, 64, 96]
    assert window_starts(64, 64) == [0]


def test_windows_cover_every_voxel_in_c_order():
    windows = sliding_windows((70, 64, 40), (32, 32, 32))
    covered = torch.zeros(70, 64, 40, dtype=torch.bool)
    for window in windows:
        covered[window] = True
    assert covered.all()
    starts = [tuple(s.start for s in w) for w in windows]
    assert starts == sorted(starts)


def test_padding_adds_zeros_at_the_high_end_only():
    padded = pad_to(torch.ones(2, 3, 4), (4, 3, 5))
    assert padded.shape == (4, 3, 5)
    assert padded[:2, :, :4].eq(1).all() and padded.sum() == 24


def test_gaussian_importance_is_float16_peaks_at_ten_in_the_centre_and_has_no_zeros():
    importance = gaussian_importance((32, 32, 16))
    assert importance.dtype == torch.float16
    assert float(importance[16, 16, 8]) == 10.0 == float(importance.max())
    assert float(importance.min()) > 0
