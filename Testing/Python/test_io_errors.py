"""Files that cannot be segmented fail with one InputError line that names the file; nothing half-written."""
from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from medals.errors import InputError
from medals.io import Volume, read_volume, write_labels


def write_itk(array, path, spacing=None, vector=False):
    image = sitk.GetImageFromArray(array, isVector=vector)
    if spacing is not None:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def assert_input_error(path, *fragments):
    with pytest.raises(InputError) as caught:
        read_volume(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_missing_file(tmp_path):
    assert_input_error(tmp_path / "nope.nii.gz", "no such file")


def test_unsupported_extension(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    assert_input_error(tmp_path / "scan.png", "unsupported file type", ".nii.gz")


@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nii"])
def test_truncated_nifti_is_refused(tmp_path, name):
    # ITK itself reads a truncated NIfTI payload as zeros without complaint.
    path = write_itk(np.random.default_rng(0).random((20, 30, 40), dtype=np.float32), tmp_path / name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    assert_input_error(path, "truncated")


@pytest.mark.parametrize("name", ["scan.nrrd", "scan.mha"])
def test_truncated_nrrd_and_meta_are_refused(tmp_path, name):
    path = write_itk(np.random.default_rng(0).random((20, 30, 40), dtype=np.float32), tmp_path / name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    assert_input_error(path, "cannot be read")


def test_garbage_with_a_known_extension_is_refused(tmp_path):
    (tmp_path / "scan.nrrd").write_text("not an image")
    assert_input_error(tmp_path / "scan.nrrd", "cannot be read")


def test_corrupt_npz_is_refused(tmp_path):
    (tmp_path / "case.npz").write_bytes(b"PK\x03\x04garbage")
    assert_input_error(tmp_path / "case.npz", "corrupt")


def test_two_dimensional_image(tmp_path):
    assert_input_error(write_itk(np.zeros((8, 9), np.uint8), tmp_path / "slice.nrrd"), "2-D")


def test_four_dimensional_image_names_the_volume_count(tmp_path):
    series = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))] * 3)
    sitk.WriteImage(series, str(tmp_path / "dynamic.nii.gz"))
    assert_input_error(tmp_path / "dynamic.nii.gz", "4-D", "3 volumes")


def test_four_dimensional_file_with_one_volume_reads_as_3d(tmp_path):
    series = sitk.JoinSeries([sitk.GetImageFromArray(np.ones((3, 4, 5), np.float32))])
    sitk.WriteImage(series, str(tmp_path / "single.nii.gz"))
    assert read_volume(tmp_path / "single.nii.gz").shape == (3, 4, 5)


def test_multi_component_image_names_the_component_count(tmp_path):
    path = write_itk(np.zeros((3, 4, 5, 3), np.uint8), tmp_path / "rgb.nrrd", vector=True)
    assert_input_error(path, "3 components")


@pytest.mark.parametrize("name", ["bad.nhdr", "bad.mhd"])
def test_zero_spacing_in_an_itk_header(tmp_path, name):
    # ITK cannot write such a file (and reads a negative spacing as a flip), so the header is edited by hand.
    path = write_itk(np.zeros((3, 4, 5), np.float32), tmp_path / name)
    text = path.read_text()
    path.write_text(text.replace("(0,1,0)", "(0,0,0)").replace("ElementSpacing = 1 1 1", "ElementSpacing = 1 0 1"))
    assert_input_error(path, "invalid voxel spacing")


@pytest.mark.parametrize("spacing", [(1.0, np.nan, 1.0), (1.0, -2.0, 1.0), (np.inf, 1.0, 1.0)])
def test_negative_or_non_finite_npz_spacing(tmp_path, spacing):
    np.savez(tmp_path / "c.npz", imgs=np.zeros((2, 3, 4), np.uint8), spacing=np.array(spacing))
    assert_input_error(tmp_path / "c.npz", "invalid voxel spacing")


def test_zero_npz_spacing_is_left_to_the_challenge_repair(tmp_path):
    np.savez(tmp_path / "c.npz", imgs=np.zeros((2, 3, 4), np.uint8), spacing=np.array([0.0, 1.0, 1.0]))
    assert read_volume(tmp_path / "c.npz").spacing == (1.0, 0.0, 1.0)


def test_nan_and_inf_voxels_are_counted(tmp_path):
    array = np.zeros((3, 4, 5), np.float32)
    array[0, 0, :2] = np.nan
    array[1, 1, 1] = np.inf
    assert_input_error(write_itk(array, tmp_path / "nan.mha"), "3 of 60 voxels")


def test_npz_without_imgs(tmp_path):
    np.savez(tmp_path / "c.npz", gts=np.zeros((2, 3, 4), np.uint8))
    assert_input_error(tmp_path / "c.npz", "no 'imgs'", "gts")


class CallsAFunctionWhenUnpickled:
    def __reduce__(self):
        return os.getcwd, ()  # harmless stand-in for what a crafted file could call


def test_npz_prompts_refuse_pickled_calls(tmp_path):
    # Only the numpy globals an object array of plain values needs may be loaded; anything else is refused
    # before it is called, which keeps a crafted file from running code through pickle.
    np.savez(tmp_path / "c.npz", imgs=np.zeros((2, 3, 4), np.uint8), spacing=np.ones(3),
             text_prompts=np.array(CallsAFunctionWhenUnpickled(), dtype=object))
    assert_input_error(tmp_path / "c.npz", "text_prompts", "refusing to load", "getcwd")


def test_empty_dicom_folder(tmp_path):
    assert_input_error(tmp_path, "no DICOM series")


def test_label_map_of_another_shape_is_refused_and_nothing_written(tmp_path):
    reference = Volume(np.zeros((3, 4, 5), np.int16), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="differs"):
        write_labels(np.zeros((3, 4, 6), np.uint8), reference, tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_negative_labels_are_refused(tmp_path):
    reference = Volume(np.zeros((3, 4, 5), np.int16), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="negative"):
        write_labels(np.full((3, 4, 5), -1, np.int16), reference, tmp_path / "out.nrrd")


def test_writing_dicom_is_refused(tmp_path):
    reference = Volume(np.zeros((3, 4, 5), np.int16), (1.0, 1.0, 1.0))
    (tmp_path / "series").mkdir()
    with pytest.raises(InputError, match="DICOM"):
        write_labels(np.zeros((3, 4, 5), np.uint8), reference, tmp_path / "series")
