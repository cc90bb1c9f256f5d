"""Prompts and painted seeds: parsing, mapping segments to prompts by name, masks on the volume's grid."""
import numpy as np
import pytest
import slicer
from slicer_fixtures import (add_segmentation, add_volume, finer_geometry, oblique_geometry, scene,  # noqa: F401
                             structure, transposed_geometry)

from MedalSLib.errors import InputError
from MedalSLib.prompts import (completion_names, edited_region, margin_voxels, painted_masks, parse_prompts,
                               segments_by_prompt, structure_key)
from MedalSLib.scene import Box, VolumeGeometry, oriented_image


def paint(segmentation_node, name: str, mask: np.ndarray, geometry: VolumeGeometry) -> str:
    """A new segment `name` holding `mask` (k, j, i) drawn on `geometry`'s grid; returns its ID."""
    segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_image(geometry, mask.astype(np.uint8)), segmentation_node, segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    return segment_id


def test_parse_prompts_keeps_one_trimmed_name_per_line():
    assert parse_prompts("  liver \n\n left   kidney\n\t\nspleen") == ["liver", "left kidney", "spleen"]


def test_parse_prompts_keeps_the_first_of_names_repeated_in_another_case():
    assert parse_prompts("Liver\nliver\nLIVER\nspleen") == ["Liver", "spleen"]


def test_structure_key_ignores_case_underscores_and_repeated_spaces():
    assert structure_key("Left_Kidney ") == structure_key("left  kidney") == "left kidney"


def test_completion_offers_names_and_synonyms_once_each_sorted():
    vocabulary = [structure("Liver", ["liver", "hepar", "Liver in CT"]),
                  structure("Left kidney", ["kidney left", "LEFT KIDNEY"])]
    assert completion_names(vocabulary) == ["hepar", "kidney left", "Left kidney", "Liver", "Liver in CT"]


def test_segments_match_prompts_by_name(scene):
    volume = add_volume(scene, oblique_geometry())
    segmentation = add_segmentation(scene, volume)
    liver = segmentation.GetSegmentation().AddEmptySegment("", "Liver")
    kidney = segmentation.GetSegmentation().AddEmptySegment("", "left_kidney")
    assert segments_by_prompt(segmentation, ["liver", "left kidney", "spleen"]) == \
        {"liver": liver, "left kidney": kidney}


def test_override_maps_a_prompt_to_a_differently_named_segment(scene):
    volume = add_volume(scene, oblique_geometry())
    segmentation = add_segmentation(scene, volume)
    seeds = segmentation.GetSegmentation().AddEmptySegment("", "my seeds")
    assert segments_by_prompt(segmentation, ["liver"], {"liver": "My Seeds"}) == {"liver": seeds}


def test_empty_override_means_no_seeds_for_that_prompt(scene):
    volume = add_volume(scene, oblique_geometry())
    segmentation = add_segmentation(scene, volume)
    segmentation.GetSegmentation().AddEmptySegment("", "liver")
    assert segments_by_prompt(segmentation, ["liver"], {"liver": ""}) == {}


def test_override_to_a_missing_segment_is_refused(scene):
    volume = add_volume(scene, oblique_geometry())
    segmentation = add_segmentation(scene, volume)
    with pytest.raises(InputError, match="mapped to segment 'nowhere'"):
        segments_by_prompt(segmentation, ["liver"], {"liver": "nowhere"})


def test_masks_painted_on_the_volumes_grid_come_back_unchanged(scene):
    geometry = oblique_geometry()
    volume = add_volume(scene, geometry)
    segmentation = add_segmentation(scene, volume)
    mask = np.zeros(geometry.shape, np.uint8)
    mask[1:4, 2:7, 3:5] = 1
    mask[5, 0, 0] = 1
    segment_id = paint(segmentation, "liver", mask, geometry)
    masks = painted_masks(segmentation, {"liver": segment_id}, volume)
    np.testing.assert_array_equal(masks["liver"], mask)


def test_segments_sharing_one_labelmap_layer_come_back_separately(scene):
    geometry = oblique_geometry()
    volume = add_volume(scene, geometry)
    segmentation = add_segmentation(scene, volume)
    first, second = np.zeros(geometry.shape, np.uint8), np.zeros(geometry.shape, np.uint8)
    first[0:2] = 1
    second[3:5] = 1
    ids = {"a": paint(segmentation, "a", first, geometry), "b": paint(segmentation, "b", second, geometry)}
    assert segmentation.GetSegmentation().GetNumberOfLayers() == 1
    masks = painted_masks(segmentation, ids, volume)
    np.testing.assert_array_equal(masks["a"], first)
    np.testing.assert_array_equal(masks["b"], second)


def test_mask_painted_on_a_finer_grid_lands_on_the_covering_voxels(scene):
    geometry = oblique_geometry(shape=(5, 6, 7))
    volume = add_volume(scene, geometry)
    fine = finer_geometry(geometry)
    segmentation = add_segmentation(scene, add_volume(scene, fine, name="fine reference"))
    fine_mask = np.zeros(fine.shape, np.uint8)
    fine_mask[3 * 1:3 * 3, 3 * 2:3 * 4, 3 * 4:3 * 6] = 1
    segment_id = paint(segmentation, "liver", fine_mask, fine)
    stored = segmentation.GetBinaryLabelmapInternalRepresentation(segment_id)
    np.testing.assert_allclose(stored.GetSpacing(), fine.spacing[::-1])
    expected = np.zeros(geometry.shape, np.uint8)
    expected[1:3, 2:4, 4:6] = 1
    np.testing.assert_array_equal(painted_masks(segmentation, {"liver": segment_id}, volume)["liver"], expected)


def test_mask_painted_on_a_transposed_flipped_grid_lands_on_the_same_places(scene):
    geometry = oblique_geometry(shape=(4, 5, 6))
    volume = add_volume(scene, geometry)
    other = transposed_geometry(geometry)
    segmentation = add_segmentation(scene, add_volume(scene, other, name="other reference"))
    other_mask = np.zeros(other.shape, np.uint8)
    other_mask[1:3, 0:2, 0:1] = 1
    segment_id = paint(segmentation, "liver", other_mask, other)
    expected = other_mask.transpose(2, 1, 0)[::-1]
    np.testing.assert_array_equal(painted_masks(segmentation, {"liver": segment_id}, volume)["liver"], expected)


def test_empty_painted_segment_is_left_out(scene):
    volume = add_volume(scene, oblique_geometry())
    segmentation = add_segmentation(scene, volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "liver")
    assert painted_masks(segmentation, {"liver": segment_id}, volume) == {}


def test_margin_is_rounded_up_to_whole_voxels_per_axis():
    assert margin_voxels(oblique_geometry(spacing=(2.5, 0.7, 1.0)), 10.0) == (4, 15, 10)


def test_unchanged_masks_give_no_edited_region():
    geometry = oblique_geometry()
    mask = np.zeros(geometry.shape, np.uint8)
    mask[2, 2, 2] = 1
    assert edited_region({"liver": mask}, {"liver": mask.copy()}, geometry) is None


def test_edited_region_is_the_changed_voxels_grown_by_the_margin_and_clipped():
    geometry = oblique_geometry(shape=(6, 20, 20), spacing=(2.0, 1.0, 1.0))
    before = np.zeros(geometry.shape, np.uint8)
    after = before.copy()
    after[3, 10:12, 1] = 1
    region = edited_region({"liver": after}, {"liver": before}, geometry, margin_mm=4.0)
    assert region == Box((1, 6, 0), (6, 16, 6))


def test_first_seeds_and_erased_segments_both_count_as_edits():
    geometry = oblique_geometry(shape=(6, 20, 20))
    seeds, erased = np.zeros(geometry.shape, np.uint8), np.zeros(geometry.shape, np.uint8)
    seeds[0, 0, 0] = 1
    erased[5, 19, 19] = 1
    region = edited_region({"liver": seeds}, {"spleen": erased}, geometry, margin_mm=0.0)
    assert region == Box((0, 0, 0), (6, 20, 20))
