"""Spacing repair and the zoom policy (official rules without class lists; spec §5.1, §7.6)."""
from __future__ import annotations

import pytest

from medals.pipeline.zoom import plan_zoom, repair_spacing

COARSE = ((224, 224, 128), (1.5, 1.5, 3.0))
FINE = ((192, 192, 192), (1.0, 1.0, 1.0))


def test_repair_treats_spacing_below_a_tenth_of_a_millimetre_as_one():
    assert repair_spacing((100, 600, 600), (0.03, 0.01, 0.01)) == (1.0, 1.0, 1.0)


def test_repair_moves_the_largest_spacing_to_the_thinnest_axis():
    assert repair_spacing((40, 136, 112), (1.5, 5.0, 1.5)) == (5.0, 1.5, 1.5)


def test_repair_keeps_spacing_whose_largest_value_is_at_most_half_a_millimetre():
    assert repair_spacing((40, 136, 112), (0.3, 0.5, 0.3)) == pytest.approx((0.3, 0.5, 0.3))


# The spec's worked examples (§7.6) that involve no class-name rule: npz (D, H, W) shapes → (h, w, d).
WORKED_EXAMPLES = [
    # shape (h, w, d), spacing (h, w, d), classes, stage, pseudo spacing, target, working grid
    ((512, 512, 300), (0.8, 0.8, 2.5), 13, COARSE, (1, 1, 2.432), (1.5, 1.5, 3), (341, 341, 243)),
    ((512, 512, 300), (0.8, 0.8, 2.5), 13, FINE, (0.7125, 0.7125, 1), (1, 1, 1), (365, 365, 300)),
    ((512, 512, 300), (0.8, 0.8, 2.5), 1, COARSE, (0.875, 0.875, 0.8533), (1.5, 1.5, 2.0), (299, 299, 128)),
    ((512, 512, 300), (0.8, 0.8, 2.5), 1, FINE, (0.75, 0.75, 2.0833), (1, 1, 1), (384, 384, 625)),
    ((256, 256, 40), (1.2, 1.2, 6), 2, COARSE, (1.2, 1.2, 6), (1.3714, 1.3714, 1.9661), (224, 224, 122)),
    ((256, 256, 40), (1.2, 1.2, 6), 2, FINE, (1.2, 1.2, 6), (1, 1, 1), (307, 307, 240)),
    ((600, 600, 100), (1.0, 1.0, 1.0), 1, COARSE, (0.7467, 0.7467, 1), (1.5, 1.5, 0.8), (299, 299, 125)),
    ((600, 600, 100), (1.0, 1.0, 1.0), 1, FINE, (0.64, 0.64, 1), (1, 1, 0.64), (384, 384, 156)),
    ((120, 120, 60), (1, 1, 1), 2, COARSE, (1, 1, 1), (0.64, 0.64, 0.512), (188, 188, 117)),
    ((120, 120, 60), (1, 1, 1), 2, FINE, (1, 1, 1), (0.64, 0.64, 0.32768), (188, 188, 183)),
]


@pytest.mark.parametrize("shape, spacing, classes, stage, pseudo, target, working", WORKED_EXAMPLES)
def test_zoom_reproduces_the_official_worked_examples(shape, spacing, classes, stage, pseudo, target, working):
    crop, stage_target = stage
    zoom = plan_zoom(shape, spacing, crop, stage_target, classes)
    assert zoom.spacing == pytest.approx(pseudo, abs=1e-4)
    assert zoom.target == pytest.approx(target, abs=1e-4)
    assert zoom.working_shape(shape) == working


def test_sub_millimetre_axis_beyond_the_size_limit_keeps_its_spacing():
    zoom = plan_zoom((1200, 100, 100), (0.5, 1, 1), *FINE, 2)
    assert zoom.spacing[0] == 0.5


def test_very_long_coarse_axis_is_not_upsampled():
    zoom = plan_zoom((100, 100, 800), (1.0, 1.0, 2.0), *FINE, 2)
    assert zoom.working_shape((100, 100, 800))[2] == 800


def test_short_axis_is_enlarged_by_a_power_of_one_and_a_quarter():
    zoom = plan_zoom((100, 300, 300), (1.0, 1.0, 1.0), *FINE, 2)
    assert zoom.working_shape((100, 300, 300))[0] == round(100 * 1.25 ** 2)  # 1.25³·100 > 192


def test_single_class_zoom_on_a_coarse_axis_is_compressed_toward_three():
    zoom = plan_zoom((150, 150, 150), (6.0, 1.0, 1.0), *FINE, 1)
    # 6/1.2 = 5× zoom exceeds 3, so it becomes 3·5/(5 − 0.5) = 3.33×.
    assert zoom.spacing[0] / zoom.target[0] == pytest.approx(3 * 5 / 4.5, rel=1e-6)


def test_large_multi_class_volume_is_capped_near_two_crops_per_axis():
    shape = (1000, 1000, 600)
    zoom = plan_zoom(shape, (1.0, 1.0, 1.0), *FINE, 5)
    assert zoom.working_shape(shape) == (365, 365, 365)  # 1.9 crops
