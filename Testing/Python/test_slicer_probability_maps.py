"""Probability maps → one scalar volume per structure on the input volume's grid, updated in place (real MRML)."""
import numpy as np
import pytest
import slicer
from slicer_fixtures import add_segmentation, add_volume, oblique_geometry, scene  # noqa: F401

from MedalSLib.errors import InputError
from MedalSLib.probability_maps import find_probability_map, write_probability_maps
from MedalSLib.scene import Box, volume_geometry

SHAPE = (6, 9, 11)
BOX = Box((1, 2, 3), (5, 8, 10))


@pytest.fixture
def volume(scene):
    return add_volume(scene, oblique_geometry(shape=SHAPE))


@pytest.fixture
def segmentation(scene, volume):
    return add_segmentation(scene, volume, "Result")


def ramp(offset: float = 0.0) -> np.ndarray:
    """Distinct probabilities in [0, 1] over BOX."""
    values = np.linspace(0.0, 1.0, int(np.prod(BOX.shape)), dtype=np.float32).reshape(BOX.shape)
    return np.clip(values + offset, 0.0, 1.0)


def voxels(node) -> np.ndarray:
    return slicer.util.arrayFromVolume(node)


def scalar_volumes(scene) -> int:
    return scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")


def test_each_structure_gets_a_volume_named_after_segmentation_and_structure(segmentation, volume):
    nodes = write_probability_maps(segmentation, volume, {"liver": ramp(), "left kidney": ramp(0.2)}, BOX)
    assert [node.GetName() for node in nodes.values()] == ["Result – liver probability",
                                                           "Result – left kidney probability"]


def test_a_map_lies_on_the_input_volumes_grid_with_the_box_filled_and_zero_outside(segmentation, volume):
    node = write_probability_maps(segmentation, volume, {"liver": ramp()}, BOX)["liver"]
    assert volume_geometry(node).same_grid(volume_geometry(volume))
    expected = np.zeros(SHAPE, np.float32)
    expected[BOX.slices] = ramp()
    assert voxels(node).dtype == np.float32
    np.testing.assert_array_equal(voxels(node), expected)


def test_a_map_is_shown_with_a_zero_to_one_window(segmentation, volume):
    display = write_probability_maps(segmentation, volume, {"liver": ramp()}, BOX)["liver"].GetDisplayNode()
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)


def test_a_rerun_writes_into_the_same_volume_even_after_a_rename(scene, segmentation, volume):
    first = write_probability_maps(segmentation, volume, {"liver": ramp()}, BOX)["liver"]
    first.SetName("my liver map")
    count = scalar_volumes(scene)
    second = write_probability_maps(segmentation, volume, {"Liver": ramp(0.3)}, Box((0, 0, 0), BOX.shape))["Liver"]
    expected = np.zeros(SHAPE, np.float32)
    expected[:BOX.shape[0], :BOX.shape[1], :BOX.shape[2]] = ramp(0.3)
    assert second is first and scalar_volumes(scene) == count
    assert second.GetName() == "Result – Liver probability"
    np.testing.assert_array_equal(voxels(second), expected)


def test_a_refinement_rewrites_only_its_box(segmentation, volume):
    before = voxels(write_probability_maps(segmentation, volume, {"liver": ramp()}, BOX)["liver"]).copy()
    small = Box((2, 3, 4), (3, 5, 6))
    node = write_probability_maps(segmentation, volume, {"liver": np.ones(small.shape, np.float32)}, small,
                                  only_inside_box=True)["liver"]
    expected = before.copy()
    expected[small.slices] = 1.0
    np.testing.assert_array_equal(voxels(node), expected)


def test_each_segmentation_has_maps_of_its_own(scene, segmentation, volume):
    other = add_segmentation(scene, volume, "Other")
    mine = write_probability_maps(segmentation, volume, {"liver": ramp()}, BOX)["liver"]
    theirs = write_probability_maps(other, volume, {"liver": ramp(0.5)}, BOX)["liver"]
    assert theirs is not mine and find_probability_map(scene, segmentation, "liver") is mine


def test_a_map_follows_the_input_volumes_parent_transform(scene, segmentation, volume):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    node = write_probability_maps(segmentation, volume, {"liver": ramp()}, BOX)["liver"]
    assert node.GetTransformNodeID() == transform.GetID()


def test_a_map_that_does_not_fill_its_box_is_refused(segmentation, volume):
    with pytest.raises(InputError, match="does not fill its box"):
        write_probability_maps(segmentation, volume, {"liver": np.zeros((2, 2, 2), np.float32)}, BOX)
