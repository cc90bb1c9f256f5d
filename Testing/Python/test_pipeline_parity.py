"""The two-stage pipeline reproduces the official `main()` on each `parity/pipeline_*` case (float32, CPU).

Weights, prompts, label values, crops and spacings come from the case's metadata. Each step gets the official
input of that step (so one step's error cannot hide in another's), and one test runs the whole pipeline from
`imgs` to `final_before_postprocess`. The official class-list post-processing that makes `segs` is not
reproduced. Fixture arrays are (D, H, W) = (k, j, i) on the input grid and (h, w, d) on working grids; the
fixture's `spacing` is in the official order (H, W, D).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import load_fixture, parity_cases
from medals.pipeline.axes import to_network_order
from medals.pipeline.labels import assemble_labels, remove_small_components
from medals.pipeline.resample import resample_labels, resample_probability
from medals.pipeline.roi import box_slices, minimum_half_range, roi_box
from medals.pipeline.sliding_window import Execution, stage_probabilities
from medals.pipeline.stage import plan_stage, prepare_image, prepare_prompt
from medals.pipeline.two_stage import segment_volume
from medals.pipeline.windows import sliding_windows
from medals.pipeline.zoom import repair_spacing
from medals.bench.parity import IMAGE_TOL, PROBABILITY_TOL, first_half_blocks, label_values as case_label_values
from parity_sets import hwd, kji, text_encoder, window_list

QUERY_TOL = 1e-4


@pytest.fixture(scope="module", params=parity_cases("pipeline_", holding="final_before_postprocess"))
def case(request, parity):
    return load_fixture(parity, request.param)


@pytest.fixture(scope="module")
def label_values(case):
    """The prompts' label values, in the prompts' order (the order of the queries)."""
    return case_label_values(case[0])


@pytest.fixture(scope="module")
def stages(case, parity_fixtures):
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


def test_parity_queries_from_the_prompts(case, parity, parity_weights):
    """Both stages' queries are the text encoder's (the case's text seed) for the prompts and the modality."""
    meta, arrays = case
    encoder = text_encoder(parity, parity_weights, meta["text_seed"])
    queries = encoder.encode(list(meta["prompts"].values()), meta["modality"])
    assert float((queries - torch.from_numpy(arrays["queries"])).abs().max()) <= QUERY_TOL


def roi_plan(case, spacing, stages, label_values):
    _, arrays = case
    index = box_slices(tuple(arrays["roi_box"]))
    shape = to_network_order(arrays["imgs"][index].shape)
    return index, plan_stage(shape, to_network_order(spacing), stages["fine"].config, len(label_values))


def test_parity_spacing_repair(case, spacing):
    _, arrays = case
    assert to_network_order(spacing) == tuple(arrays["repaired_spacing"].tolist())


def test_parity_coarse_plan(case, spacing, stages, label_values):
    meta, arrays = case
    plan = plan_stage(to_network_order(arrays["imgs"].shape), to_network_order(spacing), stages["coarse"].config,
                      len(label_values))
    expected = meta["stage1"]
    assert list(plan.zoom.spacing) == expected["pseudo_spacing"]
    assert list(plan.zoom.target) == expected["target_spacing"]
    assert list(plan.padded_shape) == expected["working_shape_padded"]
    assert window_list(plan) == expected["windows"]


def test_parity_fine_plan(case, spacing, stages, label_values):
    meta, _ = case
    _, plan = roi_plan(case, spacing, stages, label_values)
    expected = meta["stage2"]
    assert list(plan.zoom.spacing) == expected["pseudo_spacing"]
    assert list(plan.zoom.target) == expected["target_spacing"]
    assert list(plan.padded_shape) == expected["working_shape_padded"]
    assert window_list(plan) == expected["windows"]


def test_parity_coarse_working_image(case, spacing, stages, label_values):
    _, arrays = case
    volume = hwd(arrays["imgs"])
    plan = plan_stage(volume.shape, to_network_order(spacing), stages["coarse"].config, len(label_values))
    working = prepare_image(volume, plan)
    assert working.shape == arrays["s1_image"].shape
    assert float((working - torch.from_numpy(arrays["s1_image"])).abs().max()) <= IMAGE_TOL


@pytest.fixture(scope="module")
def coarse_probabilities(case, stages, queries, label_values):
    _, arrays = case
    image = torch.from_numpy(arrays["s1_image"])
    windows = sliding_windows(image.shape, stages["coarse"].config.crop_size)
    return stage_probabilities(stages["coarse"].net, queries, image, windows, label_values)


def test_parity_coarse_probabilities(case, coarse_probabilities):
    expected = torch.from_numpy(case[1]["s1_prob"])
    assert coarse_probabilities.shape == expected.shape
    assert float((coarse_probabilities - expected).abs().max()) <= PROBABILITY_TOL


def test_parity_coarse_labels_on_input_grid(case, spacing, stages, label_values):
    _, arrays = case
    plan = plan_stage(to_network_order(arrays["imgs"].shape), to_network_order(spacing), stages["coarse"].config,
                      len(label_values))
    labels, _ = assemble_labels(torch.from_numpy(arrays["s1_prob"]), label_values)
    on_input = kji(resample_labels(labels[plan.unpadded], plan.input_shape))
    np.testing.assert_array_equal(on_input, arrays["s1_labels"])


def test_parity_coarse_cleanup(case):
    _, arrays = case
    np.testing.assert_array_equal(remove_small_components(arrays["s1_labels"]), arrays["s1_labels_clean"])


def test_parity_roi(case, spacing, stages, label_values):
    _, arrays = case
    minimum = minimum_half_range(arrays["imgs"].shape, spacing, stages["fine"].config, len(label_values))
    assert roi_box(arrays["s1_labels_clean"] > 0, minimum) == tuple(arrays["roi_box"].tolist())


def test_parity_fine_working_inputs(case, spacing, stages, label_values):
    _, arrays = case
    index, plan = roi_plan(case, spacing, stages, label_values)
    image = prepare_image(hwd(arrays["imgs"][index]), plan)
    prompt = prepare_prompt(hwd(arrays["s1_labels_clean"][index]), plan)
    assert float((image - torch.from_numpy(arrays["s2_image"])).abs().max()) <= IMAGE_TOL
    np.testing.assert_array_equal(prompt.numpy(), arrays["s2_prompt"])


@pytest.fixture(scope="module")
def fine_probabilities(case, spacing, stages, queries, label_values):
    _, arrays = case
    _, plan = roi_plan(case, spacing, stages, label_values)
    return stage_probabilities(stages["fine"].net, queries, torch.from_numpy(arrays["s2_image"]), plan.windows,
                               label_values, torch.from_numpy(arrays["s2_prompt"]),
                               execution=Execution(block_permutation=first_half_blocks))


def test_parity_fine_probabilities(case, fine_probabilities):
    expected = torch.from_numpy(case[1]["s2_prob"])
    assert fine_probabilities.shape == expected.shape
    assert float((fine_probabilities - expected).abs().max()) <= PROBABILITY_TOL


def test_parity_fine_labels_and_confidence_on_roi_grid(case, spacing, stages, label_values):
    _, arrays = case
    _, plan = roi_plan(case, spacing, stages, label_values)
    labels, confidence = assemble_labels(torch.from_numpy(arrays["s2_prob"]), label_values)
    np.testing.assert_array_equal(kji(resample_labels(labels[plan.unpadded], plan.input_shape)),
                                  arrays["s2_labels"])
    on_roi = kji(resample_probability(confidence[plan.unpadded], plan.input_shape))
    assert np.abs(on_roi - arrays["s2_max_prob"]).max() <= PROBABILITY_TOL


def test_parity_end_to_end(case, spacing, stages, queries, label_values):
    """imgs → repaired spacing → coarse → cleanup → ROI → prompted fine → pasted labels."""
    _, arrays = case
    result = segment_volume(arrays["imgs"], spacing, label_values, queries, stages,
                            execution=Execution(block_permutation=first_half_blocks))
    assert result.region == tuple(arrays["roi_box"].tolist())
    np.testing.assert_array_equal(result.labels, arrays["final_before_postprocess"])
    assert np.abs(result.confidence[box_slices(result.region)] - arrays["s2_max_prob"]).max() <= PROBABILITY_TOL
