"""The session's scene-side steps: preparing requests, applying results, edited regions, undo.

`run` needs an engine and is covered by the end-to-end test; here results are built as the client
returns them (`SegmentationResult` is plain data).
"""
import numpy as np
import pytest
import slicer
from slicer_fixtures import add_segmentation, add_volume, oblique_geometry, scene  # noqa: F401

from MedalSLib.client import JobProgress, SegmentationResult
from MedalSLib.errors import InputError
from MedalSLib.probability_maps import find_probability_map
from MedalSLib.prompts import painted_masks
from MedalSLib.results import find_segment, new_segmentation
from MedalSLib.scene import Box, oriented_image, read_volume, volume_geometry
from MedalSLib.session import (EngineChoice, EngineOptions, SegmentationSession, describe_progress, from_inclusive,
                               inclusive, labels_over)

SHAPE = (8, 40, 40)


@pytest.fixture
def volume(scene):
    return add_volume(scene, oblique_geometry(shape=SHAPE, spacing=(3.0, 1.0, 1.0)))


@pytest.fixture
def segmentation(scene, volume):
    return add_segmentation(scene, volume)


@pytest.fixture
def session(scene):
    return SegmentationSession(scene)


def result_of(labels: np.ndarray, box: Box | None = None) -> SegmentationResult:
    """What the client returns: labels over their box (inclusive bounds) and the image's shape."""
    box = box or Box((0, 0, 0), labels.shape)
    return SegmentationResult(labels[box.slices] if labels.shape == SHAPE else labels, tuple(inclusive(box)), SHAPE,
                              {1: {"name": "liver", "voxels": int((labels == 1).sum())}})


def paint(segmentation_node, volume_node, name: str, mask: np.ndarray) -> None:
    segment_id = find_segment(segmentation_node, name) or segmentation_node.GetSegmentation().AddEmptySegment("", name)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_image(read_volume(volume_node)[1], mask), segmentation_node, segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)


def organ() -> np.ndarray:
    labels = np.zeros(SHAPE, np.int16)
    labels[2:6, 10:20, 10:20] = 1
    return labels


def test_segment_request_numbers_prompts_in_typed_order_and_reads_the_volume(session, volume, segmentation):
    request = session.prepare_segment(volume, segmentation, "liver\n\nleft kidney\n", "auto")
    assert request.mode == "text" and request.prompts == {1: "liver", 2: "left kidney"}
    assert request.modality is None and request.region is None and request.masks == {}
    np.testing.assert_array_equal(request.voxels, read_volume(volume)[0])
    assert request.geometry.spacing == pytest.approx((3.0, 1.0, 1.0))


def test_segment_request_passes_an_explicit_modality(session, volume, segmentation):
    assert session.prepare_segment(volume, segmentation, "liver", "mri").modality == "mri"


@pytest.mark.parametrize("text, modality, message", [
    (" \n ", "auto", "at least one structure"),
    ("liver", "xray", "modality 'xray'"),
])
def test_segment_request_refuses_unusable_input(session, volume, segmentation, text, modality, message):
    with pytest.raises(InputError, match=message):
        session.prepare_segment(volume, segmentation, text, modality)


def test_segment_request_needs_a_volume_and_a_segmentation(session, volume, segmentation):
    with pytest.raises(InputError, match="input volume"):
        session.prepare_segment(None, segmentation, "liver")
    with pytest.raises(InputError, match="output segmentation"):
        session.prepare_segment(volume, None, "liver")


def test_engine_options_become_protocol_options_with_an_inclusive_box():
    options = EngineOptions(stages=("coarse",), refine_iterations=2, keep_largest=True, probabilities=True)
    assert options.for_protocol(Box((1, 2, 3), (4, 5, 6))) == {
        "stages": ["coarse"], "refine_iterations": 2, "keep_largest": True, "probabilities": True,
        "box": [1, 3, 2, 4, 3, 5]}
    assert "box" not in options.for_protocol(None)


def test_engine_options_refuse_stages_out_of_order():
    with pytest.raises(InputError, match="stages"):
        EngineOptions(stages=("fine", "coarse")).for_protocol(None)


def test_inclusive_bounds_round_trip():
    box = Box((1, 2, 3), (4, 6, 9))
    assert from_inclusive(inclusive(box)) == box


def test_applied_text_result_becomes_named_segments(session, volume, segmentation):
    request = session.prepare_segment(volume, segmentation, "liver\nspleen")
    stats = session.apply(request, result_of(organ(), Box((2, 10, 10), (6, 20, 20))))
    assert find_segment(segmentation, "liver") and find_segment(segmentation, "spleen")
    assert stats["liver"]["voxels"] == 400 and stats["spleen"] == {}


def test_applied_probabilities_become_one_volume_per_structure_on_the_input_grid(scene, session, volume,
                                                                                segmentation):
    box = Box((2, 10, 10), (6, 20, 20))
    probability = np.full(box.shape, 0.75, np.float32)
    result = result_of(organ(), box)
    result = SegmentationResult(result.labels, result.box, SHAPE, result.stats, "ct", {2: probability})
    session.apply(session.prepare_segment(volume, segmentation, "liver\nspleen"), result)
    node = find_probability_map(scene, segmentation, "spleen")
    expected = np.zeros(SHAPE, np.float32)
    expected[box.slices] = 0.75
    assert find_probability_map(scene, segmentation, "liver") is None
    assert volume_geometry(node).same_grid(volume_geometry(volume))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), expected)


def test_refine_without_painted_seeds_is_refused(session, volume, segmentation):
    with pytest.raises(InputError, match="nothing is painted"):
        session.prepare_refine(volume, segmentation, "liver")


def test_first_seeds_make_a_hybrid_request_around_them(session, volume, segmentation):
    seeds = np.zeros(SHAPE, np.uint8)
    seeds[4, 20:22, 30] = 1
    paint(segmentation, volume, "Liver", seeds)
    request = session.prepare_refine(volume, segmentation, "spleen\nliver")
    assert request.mode == "hybrid" and list(request.masks) == [2]
    np.testing.assert_array_equal(request.masks[2], seeds)
    assert request.region == Box((0, 10, 20), (8, 32, 40))  # 10 mm of context: 4 slices, 10 rows, 10 columns


def test_refine_after_an_unchanged_result_is_refused(session, volume, segmentation):
    session.apply(session.prepare_segment(volume, segmentation, "liver"), result_of(organ()))
    with pytest.raises(InputError, match="nothing changed"):
        session.prepare_refine(volume, segmentation, "liver")


def test_refine_region_surrounds_only_the_edit_since_the_last_result(session, volume, segmentation):
    session.apply(session.prepare_segment(volume, segmentation, "liver"), result_of(organ()))
    edited = organ().astype(np.uint8)
    edited[5, 19, 19] = 0  # erase one voxel of the result
    paint(segmentation, volume, "liver", edited)
    request = session.prepare_refine(volume, segmentation, "liver")
    assert request.region == Box((1, 9, 9), (8, 30, 30))


def test_applied_refinement_changes_only_its_region(session, volume, segmentation):
    session.apply(session.prepare_segment(volume, segmentation, "liver"), result_of(organ()))
    edited = organ().astype(np.uint8)
    edited[2, 10, 10] = 0
    paint(segmentation, volume, "liver", edited)
    request = session.prepare_refine(volume, segmentation, "liver")
    request.region = Box((0, 0, 0), (4, 15, 15))
    refined = np.zeros(SHAPE, np.int16)
    refined[0:2, 0:3, 0:3] = 1  # the engine's box covers only part of the region: the rest of it is cleared
    session.apply(request, result_of(refined, Box((0, 0, 0), (2, 3, 3))))
    expected = organ().astype(np.uint8)
    expected[request.region.slices] = refined[request.region.slices]
    liver = find_segment(segmentation, "liver")
    np.testing.assert_array_equal(painted_masks(segmentation, {"liver": liver}, volume)["liver"], expected)


def test_a_refined_result_is_written_over_its_whole_box_beyond_the_region(session, volume, segmentation):
    session.apply(session.prepare_segment(volume, segmentation, "liver"), result_of(organ()))
    edited = organ().astype(np.uint8)
    edited[2, 10, 10] = 0
    paint(segmentation, volume, "liver", edited)
    request = session.prepare_refine(volume, segmentation, "liver")
    request.region = Box((2, 8, 8), (4, 12, 12))
    refined = np.zeros(SHAPE, np.int16)
    refined[2:6, 12:20, 10:20] = 1  # the engine refined its kept result: its box holds the region and more
    box = Box((0, 5, 5), (8, 25, 25))
    result = result_of(refined, box)
    session.apply(request, SegmentationResult(result.labels, result.box, SHAPE, result.stats, refined=True))
    expected = organ().astype(np.uint8)
    expected[box.slices] = refined[box.slices]
    liver = find_segment(segmentation, "liver")
    np.testing.assert_array_equal(painted_masks(segmentation, {"liver": liver}, volume)["liver"], expected)


def test_labels_over_a_region_take_the_result_where_they_meet_and_zero_elsewhere():
    labels = np.arange(1, 9, dtype=np.int16).reshape(2, 2, 2)
    result = SegmentationResult(labels, (1, 2, 1, 2, 1, 2), SHAPE)
    region = Box((0, 0, 0), (2, 2, 3))
    expected = np.zeros((2, 2, 3), np.int16)
    expected[1, 1, 1:3] = labels[0, 0, 0:2]
    np.testing.assert_array_equal(labels_over(result, region), expected)


def test_undo_removes_the_result_and_its_memory_of_it(session, volume, segmentation):
    session.apply(session.prepare_segment(volume, segmentation, "liver"), result_of(organ()))
    assert session.can_undo
    session.undo()
    assert find_segment(segmentation, "liver") is None and not session.can_undo
    paint(segmentation, volume, "liver", organ().astype(np.uint8))
    # With the result undone, the same voxels painted by hand are new seeds, not "nothing changed".
    assert session.prepare_refine(volume, segmentation, "liver").region is not None


def test_undo_with_nothing_to_undo_says_so(session):
    with pytest.raises(InputError, match="no MedalS result to undo"):
        session.undo()


def test_forgetting_results_empties_the_undo_stack(session, volume, segmentation):
    session.apply(session.prepare_segment(volume, segmentation, "liver"), result_of(organ()))
    session.forget_results()
    assert not session.can_undo and find_segment(segmentation, "liver") is not None


def test_result_for_a_volume_changed_meanwhile_is_refused(session, volume, segmentation):
    request = session.prepare_segment(volume, segmentation, "liver")
    slicer.util.arrayFromVolume(volume)[0, 0, 0] += 1
    slicer.util.arrayFromVolumeModified(volume)
    with pytest.raises(InputError, match="changed while the engine worked"):
        session.apply(request, result_of(organ()))
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0


def test_result_for_a_removed_segmentation_is_refused(scene, session, volume, segmentation):
    request = session.prepare_segment(volume, segmentation, "liver")
    scene.RemoveNode(segmentation)
    with pytest.raises(InputError, match="output segmentation was removed"):
        session.apply(request, result_of(organ()))


def test_run_without_an_engine_says_what_to_do(session, volume, segmentation):
    with pytest.raises(InputError, match="no engine is connected"):
        session.run(session.prepare_segment(volume, segmentation, "liver"))


def test_new_segmentation_follows_the_volume(scene, volume):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "t")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    node = new_segmentation(scene, volume)
    assert node.GetName() == "CT MedalS" and node.GetTransformNodeID() == transform.GetID()


def progress(**fields) -> JobProgress:
    """A job poll as the client reads it from the engine's JSON body."""
    base = dict(job_id="j", state="running", queue_position=None, stage="coarse", done=0, total=0, message="",
                eta_seconds=None)
    return JobProgress.from_body({**base, **fields})


def test_progress_of_a_queued_job_counts_the_requests_ahead():
    assert describe_progress(progress(state="queued", queue_position=2)).text == \
        "Waiting for the engine (2 requests ahead)"


def test_progress_of_a_running_stage_is_its_window_fraction_with_time_left():
    described = describe_progress(progress(stage="fine", done=3, total=12, eta_seconds=27.4))
    assert described.text == "Fine stage: 3 of 12 windows, about 27 s left" and described.fraction == 0.25


def test_an_engine_must_be_chosen(session):
    with pytest.raises(InputError, match="no engine is chosen"):
        session.ensure_engine(EngineChoice())
