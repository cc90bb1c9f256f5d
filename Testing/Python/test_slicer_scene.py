"""MRML volumes ⇄ arrays: (k, j, i) order, anisotropic spacing, oblique directions, fingerprints."""
import numpy as np
import pytest
import slicer
import vtk
from slicer_fixtures import add_segmentation, add_volume, oblique_geometry, scene  # noqa: F401

from MedalSLib.errors import InputError
from MedalSLib.scene import (VolumeGeometry, array_from_oriented_image, check_same_transform, oriented_image,
                             read_volume, volume_fingerprint, volume_geometry, write_volume)


def test_geometry_round_trips_through_a_volume_node(scene):
    geometry = oblique_geometry()
    node = add_volume(scene, geometry)
    back = volume_geometry(node)
    assert back.shape == geometry.shape
    np.testing.assert_allclose(back.spacing, geometry.spacing, atol=1e-9)
    np.testing.assert_allclose(back.origin, geometry.origin, atol=1e-9)
    np.testing.assert_allclose(back.axes, geometry.axes, atol=1e-9)


def test_read_volume_returns_voxels_in_kji_order_with_kji_spacing(scene):
    geometry = oblique_geometry(shape=(3, 4, 5), spacing=(3.0, 0.5, 0.8))
    array = np.random.default_rng(0).integers(-1000, 1000, geometry.shape).astype(np.int16)
    voxels, read_geometry = read_volume(add_volume(scene, geometry, array))
    assert voxels.shape == (3, 4, 5) and voxels.dtype == np.int16
    np.testing.assert_array_equal(voxels, array)
    np.testing.assert_allclose(read_geometry.spacing, (3.0, 0.5, 0.8))


def test_kji_to_ras_agrees_with_the_nodes_ijk_to_ras(scene):
    geometry = oblique_geometry()
    node = add_volume(scene, geometry)
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    k, j, i = 4, 2, 7
    expected = matrix.MultiplyPoint((i, j, k, 1))[:3]
    np.testing.assert_allclose(geometry.kji_to_ras([[k, j, i]])[0], expected, atol=1e-9)


def test_ras_to_kji_inverts_kji_to_ras():
    geometry = oblique_geometry()
    voxels = np.array([[0, 0, 0], [5, 8, 10], [2.5, 1.25, 3.0]])
    np.testing.assert_allclose(geometry.ras_to_kji(geometry.kji_to_ras(voxels)), voxels, atol=1e-9)


def test_one_voxel_step_along_k_moves_by_the_k_spacing():
    geometry = oblique_geometry(spacing=(2.5, 0.7, 0.9))
    step = geometry.kji_to_ras([[1, 0, 0]])[0] - geometry.kji_to_ras([[0, 0, 0]])[0]
    assert np.linalg.norm(step) == pytest.approx(2.5)


def test_fingerprint_is_stable_while_nothing_changes(scene):
    node = add_volume(scene, oblique_geometry())
    assert volume_fingerprint(node) == volume_fingerprint(node)


def test_fingerprint_changes_when_voxels_change(scene):
    node = add_volume(scene, oblique_geometry())
    before = volume_fingerprint(node)
    slicer.util.arrayFromVolume(node)[0, 0, 0] += 1
    slicer.util.arrayFromVolumeModified(node)
    assert volume_fingerprint(node) != before


def test_fingerprint_changes_when_the_node_moves(scene):
    node = add_volume(scene, oblique_geometry())
    before = volume_fingerprint(node)
    node.SetOrigin(1.0, 2.0, 3.0)
    assert volume_fingerprint(node) != before


def test_fingerprints_of_two_nodes_with_the_same_voxels_differ(scene):
    geometry = oblique_geometry()
    assert volume_fingerprint(add_volume(scene, geometry, name="a")) != \
        volume_fingerprint(add_volume(scene, geometry, name="b"))


def test_read_volume_refuses_a_colour_volume(scene):
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 3, 2)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node.SetAndObserveImageData(image)
    with pytest.raises(InputError, match="3 components"):
        read_volume(node)


def test_read_volume_refuses_a_node_without_voxels(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        read_volume(node)


def test_write_volume_refuses_an_array_of_another_shape(scene):
    with pytest.raises(InputError, match="does not match"):
        write_volume(scene, np.zeros((2, 2, 2), np.float32), oblique_geometry(), "probabilities")


def test_oriented_image_box_lands_at_its_offset():
    geometry = oblique_geometry(shape=(5, 6, 7))
    box = np.ones((2, 3, 1), np.uint8)
    image = oriented_image(geometry, box, offset=(1, 2, 4))
    full = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        image, oriented_image(geometry), full)
    expected = np.zeros(geometry.shape, np.uint8)
    expected[1:3, 2:5, 4:5] = 1
    np.testing.assert_array_equal(array_from_oriented_image(full), expected)


def test_geometry_of_an_oriented_image_matches_its_source():
    geometry = oblique_geometry()
    image = oriented_image(geometry)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    back = VolumeGeometry.from_ijk_to_ras(np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]),
                                          image.GetDimensions()[::-1])
    assert back.same_grid(geometry)


def test_same_transform_is_required_between_volume_and_segmentation(scene):
    volume = add_volume(scene, oblique_geometry())
    segmentation = add_segmentation(scene, volume)
    check_same_transform(volume, segmentation)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InputError, match="same transform"):
        check_same_transform(volume, segmentation)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 0, -1, 0, 1, 0), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       (0, 0.6, 0.8, 1, 0, 0, 0, 0.8, -0.6)])
def test_lps_direction_is_the_itk_direction_of_the_file_slicer_read(scene, tmp_path, direction):
    """What the module sends the engine to turn a volume: the direction ITK reads from the same file."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    image.SetDirection(direction)
    image.SetSpacing((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "volume.nii.gz"))
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "volume.nii.gz"))
    assert storage.ReadData(node)
    np.testing.assert_allclose(volume_geometry(node).lps_direction(), direction, atol=1e-6)
