"""Intensity rules: CT windows, percentile rescaling of other modalities, pass-through of 0–255 input."""
from __future__ import annotations

import numpy as np
import pytest

from medals.errors import InputError
from medals.intensity import (CT_WINDOWS, Window, apply_window, percentile_rescale, resolve_window,
                              to_model_range)


def test_soft_tissue_window_maps_minus_160_to_0_and_240_to_255():
    hu = np.array([-1000, -160, 40, 140, 240, 3000], dtype=np.int16)
    np.testing.assert_allclose(apply_window(hu, CT_WINDOWS["soft_tissue"]), [0, 0, 127.5, 191.25, 255, 255])


def test_ct_default_is_the_soft_tissue_window():
    hu = np.array([[[-160, 40, 240]]], dtype=np.int16)
    np.testing.assert_allclose(to_model_range(hu, "ct"), [[[0, 127.5, 255]]])


@pytest.mark.parametrize("preset, low, high", [("lung", -1350, 150), ("bone", -500, 1300), ("brain", 0, 80)])
def test_presets_span_level_plus_minus_half_width(preset, low, high):
    window = resolve_window(preset)
    assert window.bounds == (low, high)
    np.testing.assert_allclose(apply_window(np.array([low, (low + high) / 2, high]), window), [0, 127.5, 255])


def test_explicit_level_and_width_override_the_preset():
    assert resolve_window("lung", level=50, width=350) == Window(50, 350)
    assert resolve_window("lung", width=1000) == Window(-600, 1000)


@pytest.mark.parametrize("kwargs", [{"preset": "liver"}, {"width": 0}, {"width": -10}, {"level": float("nan")}])
def test_bad_window_requests_are_input_errors(kwargs):
    with pytest.raises(InputError):
        resolve_window(**kwargs)


def test_window_names_tolerate_case_and_separators():
    assert resolve_window("Soft Tissue") == CT_WINDOWS["soft_tissue"]


def test_percentiles_are_taken_over_positive_voxels_only():
    # 1..1000 plus a large zero background: the 0.5/99.5 percentiles of 1..1000 are 5.995 and 995.005 (linear
    # interpolation), independent of the zeros.
    image = np.concatenate([np.zeros(5000), np.arange(1, 1001)]).astype(np.float32)
    low, high = 5.995, 995.005
    result = percentile_rescale(image)
    assert np.all(result[:5000] == 0)
    np.testing.assert_allclose(result[5000 + 499], (500 - low) / (high - low) * 255, rtol=1e-6)
    assert result[5000] == 0 and result[-1] == 255  # 1 and 1000 lie outside the percentiles and are clipped


def test_negative_voxels_become_zero_outside_ct():
    result = percentile_rescale(np.array([-5.0, 1.0, 2.0, 3.0]))
    assert result[0] == 0


def test_constant_positive_image_becomes_255():
    np.testing.assert_array_equal(percentile_rescale(np.array([0.0, 7.0, 7.0])), [0, 255, 255])


def test_all_zero_image_stays_zero():
    assert not percentile_rescale(np.zeros((2, 3, 4))).any()


@pytest.mark.parametrize("modality", ["mri", "pet", "us", "microscopy"])
def test_non_ct_modalities_use_percentiles(modality):
    image = np.linspace(0, 100, 1001).astype(np.float32)
    np.testing.assert_array_equal(to_model_range(image, modality), percentile_rescale(image))


def test_uint8_images_pass_through_for_every_modality():
    image = np.array([0, 17, 255], np.uint8)
    for modality in ("ct", "mri"):
        result = to_model_range(image, modality)
        assert result.dtype == np.float32
        np.testing.assert_array_equal(result, [0, 17, 255])


def test_challenge_input_passes_through_unchanged():
    image = np.array([0.0, 12.5, 300.0], np.float32)  # not clipped or rescaled even when odd
    np.testing.assert_array_equal(to_model_range(image, "ct", challenge_input=True), image)


def test_outputs_are_float32():
    assert to_model_range(np.array([1, 2, 3], np.int16), "ct").dtype == np.float32
    assert to_model_range(np.array([1, 2, 3], np.int16), "mri").dtype == np.float32
