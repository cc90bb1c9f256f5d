"""Engine results → named segments: creation and update by name, other segments untouched, undo, colours."""
import numpy as np
import pytest
import slicer
from slicer_fixtures import (add_segmentation, add_volume, finer_geometry, oblique_geometry, scene,  # noqa: F401
                             structure, transposed_geometry)

from MedalSLib.errors import InputError
from MedalSLib.prompts import painted_masks
from MedalSLib.client import Structure
from MedalSLib.results import (KNOWN_STRUCTURES, LATERALITY, SYNONYMS, ResultSnapshot, find_segment, hashed_color,
                               segment_appearance, write_results)
from MedalSLib.scene import Box, oriented_image, read_volume

SHAPE = (6, 9, 11)


@pytest.fixture
def volume(scene):
    return add_volume(scene, oblique_geometry(shape=SHAPE))


@pytest.fixture
def segmentation(scene, volume):
    return add_segmentation(scene, volume)


def paint(segmentation_node, volume_node, name: str, mask: np.ndarray) -> str:
    segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", name)
    geometry = read_volume(volume_node)[1]
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_image(geometry, mask), segmentation_node, segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    return segment_id


def mask_of(segmentation_node, volume_node, name: str) -> np.ndarray:
    """A segment's voxels on the volume's grid (all zero when it is empty)."""
    segment_id = find_segment(segmentation_node, name)
    assert segment_id is not None, f"no segment named {name}"
    return painted_masks(segmentation_node, {name: segment_id}, volume_node).get(name, np.zeros(SHAPE, np.uint8))


def full_box() -> Box:
    return Box((0, 0, 0), SHAPE)


def two_organ_labels() -> np.ndarray:
    labels = np.zeros(SHAPE, np.int16)
    labels[1:3, 2:5, 2:6] = 1
    labels[4:6, 5:8, 6:10] = 2
    return labels


def segment_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def test_each_prompt_becomes_a_segment_named_after_it(segmentation, volume):
    labels = two_organ_labels()
    write_results(segmentation, volume, labels, full_box(), {1: "liver", 2: "left kidney"})
    assert segment_names(segmentation) == ["liver", "left kidney"]
    np.testing.assert_array_equal(mask_of(segmentation, volume, "liver"), labels == 1)
    np.testing.assert_array_equal(mask_of(segmentation, volume, "left kidney"), labels == 2)


def test_labels_over_a_box_land_at_the_box(segmentation, volume):
    box = Box((2, 3, 4), (4, 6, 9))
    write_results(segmentation, volume, np.ones(box.shape, np.int16), box, {1: "liver"})
    expected = np.zeros(SHAPE, np.uint8)
    expected[box.slices] = 1
    np.testing.assert_array_equal(mask_of(segmentation, volume, "liver"), expected)


def test_existing_segment_is_updated_by_name_and_keeps_its_colour(segmentation, volume):
    old = np.zeros(SHAPE, np.uint8)
    old[0, 0, 0] = 1
    segment_id = paint(segmentation, volume, "Liver", old)
    segmentation.GetSegmentation().GetSegment(segment_id).SetColor(0.1, 0.2, 0.3)
    labels = two_organ_labels()
    write_results(segmentation, volume, labels, full_box(), {1: "liver"})
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert find_segment(segmentation, "liver") == segment_id
    np.testing.assert_array_equal(mask_of(segmentation, volume, "liver"), labels == 1)
    np.testing.assert_allclose(segmentation.GetSegmentation().GetSegment(segment_id).GetColor(), (0.1, 0.2, 0.3))


def test_unrelated_overlapping_segment_is_untouched(segmentation, volume):
    painted = np.zeros(SHAPE, np.uint8)
    painted[1:5, 2:7, 2:8] = 1  # overlaps both results
    paint(segmentation, volume, "my drawing", painted)
    write_results(segmentation, volume, two_organ_labels(), full_box(), {1: "liver", 2: "spleen"})
    np.testing.assert_array_equal(mask_of(segmentation, volume, "my drawing"), painted)


def test_fresh_result_empties_the_segment_outside_its_box(segmentation, volume):
    old = np.zeros(SHAPE, np.uint8)
    old[5, 8, 10] = 1
    paint(segmentation, volume, "liver", old)
    box = Box((0, 0, 0), (2, 2, 2))
    write_results(segmentation, volume, np.ones(box.shape, np.int16), box, {1: "liver"})
    assert mask_of(segmentation, volume, "liver")[5, 8, 10] == 0


def test_refinement_replaces_voxels_only_inside_its_box(segmentation, volume):
    old = np.zeros(SHAPE, np.uint8)
    old[0:6, 0:3, 0:3] = 1
    paint(segmentation, volume, "liver", old)
    box = Box((2, 0, 0), (4, 9, 11))
    refined = np.zeros(box.shape, np.int16)
    refined[:, 5:7, 5:7] = 1
    write_results(segmentation, volume, refined, box, {1: "liver"}, only_inside_box=True)
    expected = old.copy()
    expected[box.slices] = refined
    np.testing.assert_array_equal(mask_of(segmentation, volume, "liver"), expected)


def test_results_land_on_the_right_voxels_of_a_segmentation_with_another_geometry(scene, volume):
    finer = finer_geometry(read_volume(volume)[1])
    segmentation = add_segmentation(scene, add_volume(scene, finer, name="fine"))
    labels = two_organ_labels()
    write_results(segmentation, volume, labels, full_box(), {1: "liver", 2: "spleen"})
    stored = segmentation.GetBinaryLabelmapInternalRepresentation(find_segment(segmentation, "liver"))
    np.testing.assert_allclose(stored.GetSpacing(), finer.spacing[::-1])
    np.testing.assert_array_equal(mask_of(segmentation, volume, "spleen"), labels == 2)


def test_refinement_into_a_transposed_segmentation_keeps_voxels_outside_the_box(scene, volume):
    other = transposed_geometry(read_volume(volume)[1])
    segmentation = add_segmentation(scene, add_volume(scene, other, name="other"))
    old = np.zeros(SHAPE, np.uint8)
    old[:, 0:4, 0:4] = 1
    write_results(segmentation, volume, old.astype(np.int16), full_box(), {1: "liver"})
    box = Box((0, 2, 2), (6, 7, 8))
    write_results(segmentation, volume, np.zeros(box.shape, np.int16), box, {1: "liver"}, only_inside_box=True)
    expected = old.copy()
    expected[box.slices] = 0
    np.testing.assert_array_equal(mask_of(segmentation, volume, "liver"), expected)


def test_restore_removes_created_segments(segmentation, volume):
    paint(segmentation, volume, "my drawing", np.ones(SHAPE, np.uint8))
    snapshot = write_results(segmentation, volume, two_organ_labels(), full_box(), {1: "liver", 2: "spleen"})
    snapshot.restore()
    assert segment_names(segmentation) == ["my drawing"]


def test_restore_puts_back_the_voxels_a_fresh_result_replaced(segmentation, volume):
    old = np.zeros(SHAPE, np.uint8)
    old[0:2, 0:2, 0:2] = 1
    old[5, 8, 10] = 1
    paint(segmentation, volume, "liver", old)
    snapshot = write_results(segmentation, volume, two_organ_labels(), full_box(), {1: "liver"})
    snapshot.restore()
    np.testing.assert_array_equal(mask_of(segmentation, volume, "liver"), old)


def test_restore_puts_back_the_voxels_a_refinement_replaced(segmentation, volume):
    old = np.zeros(SHAPE, np.uint8)
    old[2:4, 2:6, 2:6] = 1
    paint(segmentation, volume, "liver", old)
    box = Box((1, 1, 1), (5, 8, 10))
    snapshot = write_results(segmentation, volume, np.ones(box.shape, np.int16), box, {1: "liver"},
                             only_inside_box=True)
    snapshot.restore()
    np.testing.assert_array_equal(mask_of(segmentation, volume, "liver"), old)


def test_restore_empties_a_segment_that_was_empty(segmentation, volume):
    segmentation.GetSegmentation().AddEmptySegment("", "liver")
    snapshot = write_results(segmentation, volume, two_organ_labels(), full_box(), {1: "liver"})
    snapshot.restore()
    assert not mask_of(segmentation, volume, "liver").any()


def test_restore_keeps_an_unrelated_segment_painted_after_the_result(segmentation, volume):
    snapshot = write_results(segmentation, volume, two_organ_labels(), full_box(), {1: "liver"})
    later = np.zeros(SHAPE, np.uint8)
    later[0, 0, 0:4] = 1
    paint(segmentation, volume, "later", later)
    snapshot.restore()
    assert segment_names(segmentation) == ["later"]
    np.testing.assert_array_equal(mask_of(segmentation, volume, "later"), later)


def test_labels_that_do_not_fill_their_box_are_refused_and_nothing_is_written(segmentation, volume):
    with pytest.raises(InputError, match="does not fill its box"):
        write_results(segmentation, volume, np.ones((2, 2, 2), np.int16), Box((0, 0, 0), (3, 3, 3)), {1: "liver"})
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0


def test_a_box_outside_the_volume_is_refused(segmentation, volume):
    box = Box((5, 0, 0), (7, 1, 1))
    with pytest.raises(InputError, match="outside the volume"):
        write_results(segmentation, volume, np.ones(box.shape, np.int16), box, {1: "liver"})


def test_a_closed_surface_segmentation_is_refused(segmentation, volume):
    segmentation.GetSegmentation().SetSourceRepresentationName("Closed surface")
    with pytest.raises(InputError, match="binary labelmaps"):
        write_results(segmentation, volume, two_organ_labels(), full_box(), {1: "liver"})


def test_known_structure_gets_its_terminology_and_colour(segmentation, volume):
    write_results(segmentation, volume, two_organ_labels(), full_box(), {1: "Liver"})
    segment = segmentation.GetSegmentation().GetSegment(find_segment(segmentation, "liver"))
    assert "^10200004^Liver" in segment.GetTerminology()
    np.testing.assert_allclose(segment.GetColor(), np.array([221, 130, 101]) / 255)


def test_laterality_becomes_a_type_modifier():
    terminology = segment_appearance("left kidney").terminology
    assert "^64033007^Kidney~SCT^7771000^Left" in terminology


def test_engine_vocabulary_synonym_takes_its_structures_codes_and_colour():
    vocabulary = [structure("liver", ["hepar", "liver in CT"], sct=("10200004", "Liver"), color=(1, 2, 3))]
    look = segment_appearance("Hepar", vocabulary)
    assert "^10200004^Liver" in look.terminology and look.color == (1 / 255, 2 / 255, 3 / 255)


def test_engine_structure_with_laterality_gets_the_type_modifier():
    vocabulary = [structure("left hippocampus", laterality="left", sct=("5300000", "Hippocampus"))]
    assert "^5300000^Hippocampus~SCT^7771000^Left" in segment_appearance("left hippocampus", vocabulary).terminology


def test_engine_structure_without_codes_gets_its_colour_and_no_terminology():
    look = segment_appearance("mitochondria", [structure("mitochondria", category=None, color=(9, 8, 7))])
    assert look.terminology == "" and look.color == (9 / 255, 8 / 255, 7 / 255)


def test_names_the_engine_lacks_fall_back_on_slicers_table():
    look = segment_appearance("left kidney", [structure("liver", sct=("10200004", "Liver"))])
    assert "^64033007^Kidney~SCT^7771000^Left" in look.terminology
    np.testing.assert_allclose(look.color, np.array([185, 102, 83]) / 255)


def engine_structures() -> list[Structure]:
    """The engine's vocabulary exactly as its info endpoint publishes it and the client parses it."""
    from medals.server.engine import published_vocabulary
    from medals.vocabulary import default_vocabulary
    return [Structure.from_body(body) for body in published_vocabulary(default_vocabulary())]


def names_in_the_modules_table() -> list[str]:
    """Every name the module's own table answers: its structures, their synonyms, their left/right forms."""
    names = {entry.name for entry in engine_structures()}
    lateral = [f"{side} {name}" for name in KNOWN_STRUCTURES for side in LATERALITY if f"{side} {name}" in names]
    return [*KNOWN_STRUCTURES, *SYNONYMS, *lateral]


@pytest.mark.parametrize("name", names_in_the_modules_table())
def test_a_structure_looks_the_same_with_the_engines_vocabulary_as_with_the_modules_table(name):
    """One look per structure: the engine's data/vocabulary.json must give what Slicer's terminology gives."""
    assert segment_appearance(name, engine_structures()) == segment_appearance(name)


def test_lesion_named_after_its_organ_takes_its_kind_from_the_last_word():
    assert "^367643001^Cyst" in segment_appearance("kidney cyst").terminology


def test_unknown_names_get_the_same_colour_as_the_engine_gives_them():
    from medals.vocabulary import hashed_color as engine_color
    for name in ("cochlear duct", "Left_Hippocampus", "lung nodule"):
        assert tuple(round(channel * 255) for channel in hashed_color(name)) == engine_color(name)


def test_unknown_structure_gets_a_stable_colour_from_its_name():
    look = segment_appearance("cochlear duct")
    assert look.terminology == ""
    assert look.color == hashed_color("Cochlear_Duct") != hashed_color("vestibule")
    assert all(0.0 <= channel <= 1.0 for channel in look.color)


def test_snapshot_of_nothing_restores_nothing(segmentation):
    ResultSnapshot(segmentation).restore()
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0


def test_result_summary_names_volumes_misses_and_free_text_prompts():
    """The status line after a result, from statistics shaped as the engine sends them (protocol ClassStats)."""
    from medals.server.protocol import ClassStats
    from medals.vocabulary import vocabulary_marks

    from MedalSLib.results import result_summary

    stats = {"liver": ClassStats(name="liver", voxels=1200, volume_ml=98.76, **vocabulary_marks("liver")),
             "spleen": ClassStats(name="spleen", voxels=0, volume_ml=0.0, **vocabulary_marks("spleen")),
             "pancraes": ClassStats(name="pancraes", voxels=40, volume_ml=3.2, **vocabulary_marks("pancraes"))}
    summary = result_summary({prompt: info.model_dump() for prompt, info in stats.items()})
    assert summary.startswith("liver: 98.8 ml; pancraes: 3.2 ml. Not found: spleen")
    assert "'pancraes' is not in the vocabulary (did you mean 'pancreas'" in summary
    assert "'liver' is not" not in summary and "'spleen' is not" not in summary
    assert result_summary({}) == "nothing found"
