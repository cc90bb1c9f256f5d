"""The two-stage pipeline reproduces the official `main()` on `parity/pipeline_small` (float32, CPU).

Each step gets the official input of that step (so one step's error cannot hide in another's), and one test runs
the whole pipeline from `imgs` to `final_before_postprocess`. The official class-list post-processing that makes
`segs` is not reproduced. Fixture arrays are (D, H, W) = (k, j, i) on the input grid and (h, w, d) on working grids;
the fixture's `spacing` is in the official order (H, W, D).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medals.bench.parity import IMAGE_TOL, PIPELINE_LABEL_VALUES as LABEL_VALUES, PROBABILITY_TOL, first_half_blocks
from medals.pipeline.axes import to_network_order, volume_to_array, volume_to_network
from medals.pipeline.labels import assemble_labels, remove_small_components
from medals.pipeline.resample import resample_labels, resample_probability
from medals.pipeline.roi import box_slices, minimum_half_range, roi_box
from medals.pipeline.sliding_window import Execution, stage_probabilities
from medals.pipeline.stage import plan_stage, prepare_image, prepare_prompt
from medals.pipeline.two_stage import segment_volume
from medals.pipeline.windows import sliding_windows
from medals.pipeline.zoom import repair_spacing


@pytest.fixture(scope="module")
def case(parity_fixtures):
    return parity_fixtures.load("pipeline_small")


@pytest.fixture(scope="module")
def stages(case, parity_fixtures):
    """Coarse and fine stage models: fixture weights (seeds 1 and 3) with the README's logit-bias edit."""
    return parity_fixtures.pipeline_stages(case[0])


@pytest.fixture(scope="module")
def spacing(case):
    """The repaired spacing in (k, j, i)."""
    _, arrays = case
    h, w, d = arrays["spacing"]
    return repair_spacing(arrays["imgs"].shape, (d, h, w))


@pytest.fixture(scope="module")
def queries(case):
    return torch.from_numpy(case[1]["queries"])


def hwd(volume: np.ndarray) -> torch.Tensor:
    return volume_to_network(torch.from_numpy(volume))


def kji(volume: torch.Tensor) -> np.ndarray:
    return volume_to_array(volume).numpy()


def roi_plan(case, spacing, stages):
    _, arrays = case
    index = box_slices(tuple(arrays["roi_box"]))
    shape = to_network_order(arrays["imgs"][index].shape)
    return index, plan_stage(shape, to_network_order(spacing), stages["fine"].config, len(LABEL_VALUES))


def window_list(plan):
    return [[bound for s in window for bound in (s.start, s.stop)] for window in plan.windows]


def test_parity_spacing_repair(case, spacing):
    _, arrays = case
    assert to_network_order(spacing) == tuple(arrays["repaired_spacing"].tolist())


def test_parity_coarse_plan(case, spacing, stages):
    meta, arrays = case
    plan = plan_stage(to_network_order(arrays["imgs"].shape), to_network_order(spacing), stages["coarse"].config,
                      len(LABEL_VALUES))
    expected = meta["stage1"]
    assert list(plan.zoom.spacing) == expected["pseudo_spacing"]
    assert list(plan.zoom.target) == expected["target_spacing"]
    assert list(plan.padded_shape) == expected["working_shape_padded"]
    assert window_list(plan) == expected["windows"]


def test_parity_fine_plan(case, spacing, stages):
    meta, _ = case
    _, plan = roi_plan(case, spacing, stages)
    expected = meta["stage2"]
    assert list(plan.zoom.spacing) == expected["pseudo_spacing"]
    assert list(plan.zoom.target) == expected["target_spacing"]
    assert list(plan.padded_shape) == expected["working_shape_padded"]
    assert window_list(plan) == expected["windows"]


def test_parity_coarse_working_image(case, spacing, stages):
    _, arrays = case
    volume = hwd(arrays["imgs"])
    plan = plan_stage(volume.shape, to_network_order(spacing), stages["coarse"].config, len(LABEL_VALUES))
    working = prepare_image(volume, plan)
    assert working.shape == arrays["s1_image"].shape
    assert float((working - torch.from_numpy(arrays["s1_image"])).abs().max()) <= IMAGE_TOL


@pytest.fixture(scope="module")
def coarse_probabilities(case, stages, queries):
    _, arrays = case
    image = torch.from_numpy(arrays["s1_image"])
    windows = sliding_windows(image.shape, stages["coarse"].config.crop_size)
    return stage_probabilities(stages["coarse"].net, queries, image, windows, LABEL_VALUES)


def test_parity_coarse_probabilities(case, coarse_probabilities):
    expected = torch.from_numpy(case[1]["s1_prob"])
    assert coarse_probabilities.shape == expected.shape
    assert float((coarse_probabilities - expected).abs().max()) <= PROBABILITY_TOL


def test_parity_coarse_labels_on_input_grid(case, spacing, stages):
    _, arrays = case
    plan = plan_stage(to_network_order(arrays["imgs"].shape), to_network_order(spacing), stages["coarse"].config,
                      len(LABEL_VALUES))
    labels, _ = assemble_labels(torch.from_numpy(arrays["s1_prob"]), LABEL_VALUES)
    on_input = kji(resample_labels(labels[plan.unpadded], plan.input_shape))
    np.testing.assert_array_equal(on_input, arrays["s1_labels"])


def test_parity_coarse_cleanup(case):
    _, arrays = case
    np.testing.assert_array_equal(remove_small_components(arrays["s1_labels"]), arrays["s1_labels_clean"])


def test_parity_roi(case, spacing, stages):
    _, arrays = case
    minimum = minimum_half_range(arrays["imgs"].shape, spacing, stages["fine"].config, len(LABEL_VALUES))
    assert roi_box(arrays["s1_labels_clean"] > 0, minimum) == tuple(arrays["roi_box"].tolist())


def test_parity_fine_working_inputs(case, spacing, stages):
    _, arrays = case
    index, plan = roi_plan(case, spacing, stages)
    image = prepare_image(hwd(arrays["imgs"][index]), plan)
    prompt = prepare_prompt(hwd(arrays["s1_labels_clean"][index]), plan)
    assert float((image - torch.from_numpy(arrays["s2_image"])).abs().max()) <= IMAGE_TOL
    np.testing.assert_array_equal(prompt.numpy(), arrays["s2_prompt"])


@pytest.fixture(scope="module")
def fine_probabilities(case, spacing, stages, queries):
    _, arrays = case
    _, plan = roi_plan(case, spacing, stages)
    return stage_probabilities(stages["fine"].net, queries, torch.from_numpy(arrays["s2_image"]), plan.windows,
                               LABEL_VALUES, torch.from_numpy(arrays["s2_prompt"]),
                               execution=Execution(block_permutation=first_half_blocks))


def test_parity_fine_probabilities(case, fine_probabilities):
    expected = torch.from_numpy(case[1]["s2_prob"])
    assert fine_probabilities.shape == expected.shape
    assert float((fine_probabilities - expected).abs().max()) <= PROBABILITY_TOL


def test_parity_fine_labels_and_confidence_on_roi_grid(case, spacing, stages):
    _, arrays = case
    _, plan = roi_plan(case, spacing, stages)
    labels, confidence = assemble_labels(torch.from_numpy(arrays["s2_prob"]), LABEL_VALUES)
    np.testing.assert_array_equal(kji(resample_labels(labels[plan.unpadded], plan.input_shape)),
                                  arrays["s2_labels"])
    on_roi = kji(resample_probability(confidence[plan.unpadded], plan.input_shape))
    assert np.abs(on_roi - arrays["s2_max_prob"]).max() <= PROBABILITY_TOL


def test_parity_end_to_end(case, spacing, stages, queries):
    """imgs → repaired spacing → coarse → cleanup → ROI → prompted fine → pasted labels."""
    _, arrays = case
    result = segment_volume(arrays["imgs"], spacing, LABEL_VALUES, queries, stages,
                            execution=Execution(block_permutation=first_half_blocks))
    assert result.region == tuple(arrays["roi_box"].tolist())
    np.testing.assert_array_equal(result.labels, arrays["final_before_postprocess"])
    assert np.abs(result.confidence[box_slices(result.region)] - arrays["s2_max_prob"]).max() <= PROBABILITY_TOL
