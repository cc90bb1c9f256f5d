"""The fine stage's region of interest (spec §7.2 step 6, §12)."""
from __future__ import annotations

import numpy as np

from medals.config import NetConfig, StageConfig
from medals.pipeline.roi import grow_box, minimum_half_range, roi_box

FINE = StageConfig(NetConfig(crop_size=(64, 64, 64)), (2.0, 2.0, 2.0))


def test_roi_is_the_bounding_box_widened_by_ten_percent():
    mask = np.zeros((100, 100, 100), dtype=bool)
    mask[40:60, 30:50, 10:30] = True  # extent 20 → half-range 11 around centres 49.5, 39.5, 19.5
    assert roi_box(mask, (0, 0, 0)) == (38, 60, 28, 50, 8, 30)


def test_roi_is_at_least_the_minimum_half_range_and_clipped_to_the_image():
    mask = np.zeros((30, 100, 100), dtype=bool)
    mask[10, 50, 2] = True
    assert roi_box(mask, (20.0, 5.5, 5.5)) == (0, 29, 44, 55, 0, 7)


def test_minimum_half_range_spans_one_fine_crop_in_millimetres():
    half = minimum_half_range((40, 136, 112), (5.0, 1.5, 1.5), FINE, 2)
    # (64/2)·2 mm / spacing − 1, per (k, j, i)
    np.testing.assert_allclose(half, [64 / 5 - 1, 64 / 1.5 - 1, 64 / 1.5 - 1], rtol=1e-6)


def test_grow_box_widens_narrow_axes_symmetrically():
    assert grow_box((10, 12, 0, 99, 50, 50), (5, 5, 5), (100, 100, 100)) == (6, 16, 0, 99, 45, 55)
