"""Round trips through every supported format: voxels, (k, j, i) spacing and oblique ITK geometry survive."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import load_fixture, parity_cases
from medals.errors import InputError
from medals.io import (Volume, case_name, kji_spacing_to_npz, list_volume_files, npz_spacing_to_kji, read_labels,
                       read_volume, write_labels, write_volume)


def oblique_direction() -> np.ndarray:
    """A proper rotation (about z by 30°, then about x by 20°), as an ITK row-major direction matrix."""
    a, b = np.deg2rad(30), np.deg2rad(20)
    about_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return about_x @ about_z


def sample_volume() -> Volume:
    """An int16 (k, j, i) = (6, 9, 11) image whose every voxel differs, with anisotropic spacing."""
    array = (np.arange(6 * 9 * 11, dtype=np.int16).reshape(6, 9, 11) - 200)
    return Volume(array, spacing=(3.0, 0.8, 0.6), origin=(-12.5, 40.0, 7.25), direction=oblique_direction())


def assert_same_geometry(read: Volume, expected: Volume) -> None:
    assert read.shape == expected.shape
    np.testing.assert_allclose(read.spacing, expected.spacing, atol=1e-5)
    np.testing.assert_allclose(read.origin, expected.origin, atol=1e-4)
    np.testing.assert_allclose(read.direction, expected.direction, atol=1e-5)


@pytest.mark.parametrize("name", ["image.nii", "image.nii.gz", "image.nrrd", "image.nhdr", "image.mha", "image.mhd"])
def test_itk_formats_round_trip_voxels_and_oblique_geometry(tmp_path, name):
    original = sample_volume()
    write_volume(original, tmp_path / name)
    read = read_volume(tmp_path / name)
    np.testing.assert_array_equal(read.array, original.array)
    assert_same_geometry(read, original)


def test_spacing_is_read_in_kji_order_from_itk_xyz(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))  # (k, j, i)
    image.SetSpacing((0.5, 0.7, 2.5))  # (x, y, z) = (i, j, k)
    sitk.WriteImage(image, str(tmp_path / "a.nrrd"))
    assert read_volume(tmp_path / "a.nrrd").spacing == (2.5, 0.7, 0.5)


@pytest.mark.parametrize("name", ["labels.nii.gz", "labels.nrrd", "labels.mha", "labels.mhd"])
def test_written_label_map_has_the_input_geometry(tmp_path, name):
    image = sample_volume()
    labels = (image.array > 0).astype(np.uint8) * 3
    write_labels(labels, image, tmp_path / name)
    written = sitk.ReadImage(str(tmp_path / name))
    assert written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(written.GetSpacing(), image.spacing[::-1], atol=1e-5)
    np.testing.assert_allclose(written.GetOrigin(), image.origin, atol=1e-4)
    np.testing.assert_allclose(np.reshape(written.GetDirection(), (3, 3)), image.direction, atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)


def test_labels_above_255_are_written_as_uint16(tmp_path):
    image = sample_volume()
    labels = np.zeros(image.shape, np.int32)
    labels[0, 0, 0] = 300
    write_labels(labels, image, tmp_path / "big.nrrd")
    assert read_volume(tmp_path / "big.nrrd").array.dtype == np.uint16


def write_dicom_series(volume: Volume, folder, series_uid: str, instance_offset: int = 0) -> None:
    """Write `volume` as one CT DICOM file per k slice, geometry carried by the per-slice position tags."""
    image = sitk.GetImageFromArray(volume.array.astype(np.int16))
    image.SetSpacing(volume.spacing[::-1])
    image.SetOrigin(volume.origin)
    image.SetDirection(np.asarray(volume.direction).ravel())
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {"0008|0060": "CT", "0020|000e": series_uid, "0020|0037": orientation,
                           "0020|0032": "\\".join(f"{p:.6f}" for p in position),
                           "0020|0013": str(k + 1), "0018|0050": str(volume.spacing[0]),
                           "0008|0018": f"{series_uid}.{instance_offset + k + 1}"}.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{instance_offset + k:04d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_series_reads_voxels_and_oblique_geometry(tmp_path):
    original = sample_volume()
    write_dicom_series(original, tmp_path, "1.2.826.0.1.3680043.2.1125.1.1")
    read = read_volume(tmp_path)
    np.testing.assert_array_equal(read.array, original.array)
    assert_same_geometry(read, original)
    assert read.extras["format"] == "dicom"


def test_dicom_folder_with_two_series_reads_the_larger(tmp_path):
    large, small = sample_volume(), sample_volume()
    small.array = small.array[:3]
    write_dicom_series(large, tmp_path, "1.2.826.0.1.3680043.2.1125.1.2")
    write_dicom_series(small, tmp_path, "1.2.826.0.1.3680043.2.1125.1.3", instance_offset=100)
    assert read_volume(tmp_path).shape == large.shape


@pytest.mark.parametrize("name", parity_cases("pipeline_", holding="imgs"))
def test_npz_spacing_order_matches_the_parity_case(parity, name):
    meta, arrays = load_fixture(parity, name)
    read = read_volume(parity / f"{name}.npz")
    assert read.shape == arrays["imgs"].shape
    # stored in (H, W, D) order: spacing[0] belongs to H = j, spacing[2] to D = k.
    h, w, d = arrays["spacing"].tolist()
    assert read.spacing == (d, h, w)
    # The official code's (D, H, W) spacing after its repair, back in npz order, is the stored repaired spacing.
    assert kji_spacing_to_npz(meta["roi_spacing_dhw"]) == tuple(meta["repaired_spacing"])


def test_npz_spacing_conversions_are_inverse():
    assert kji_spacing_to_npz(npz_spacing_to_kji((1.0, 2.0, 3.0))) == (1.0, 2.0, 3.0)


def test_npz_round_trip_keeps_prompts_and_writes_segs(tmp_path):
    prompts = {"1": "liver in CT", "2": "spleen in CT", "instance_label": 0}
    np.savez_compressed(tmp_path / "case.npz", imgs=np.arange(60, dtype=np.uint8).reshape(3, 4, 5),
                        spacing=np.array([0.7, 0.8, 2.5]), text_prompts=np.array(prompts, dtype=object))
    case = read_volume(tmp_path / "case.npz")
    assert case.extras["text_prompts"] == prompts
    assert case.spacing == (2.5, 0.7, 0.8)
    labels = (case.array % 3).astype(np.uint8)
    write_labels(labels, case, tmp_path / "out" / "case.npz")
    with np.load(tmp_path / "out" / "case.npz", allow_pickle=True) as written:
        assert written["segs"].dtype == np.int16
        np.testing.assert_array_equal(written["segs"], labels)
        np.testing.assert_array_equal(written["spacing"], [0.7, 0.8, 2.5])
        assert written["text_prompts"].item() == prompts


def test_npz_prompts_with_numpy_scalars_become_python_values(tmp_path):
    prompts = {"1": "tumor in PET", "instance_label": np.int64(1)}
    np.savez(tmp_path / "c.npz", imgs=np.zeros((2, 3, 4), np.uint8), spacing=np.ones(3),
             text_prompts=np.array(prompts, dtype=object))
    read = read_volume(tmp_path / "c.npz").extras["text_prompts"]
    assert read == {"1": "tumor in PET", "instance_label": 1} and type(read["instance_label"]) is int


def test_case_name_strips_double_extensions():
    assert case_name("/x/case_01.nii.gz") == "case_01"
    assert case_name("case.02.nrrd") == "case.02"


def test_list_volume_files_skips_unsupported_and_detached_data(tmp_path):
    write_volume(sample_volume(), tmp_path / "b.mhd")
    write_volume(sample_volume(), tmp_path / "a.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_volume_files(tmp_path)] == ["a.nii.gz", "b.mhd"]


def test_read_labels_takes_segs_or_gts_from_npz(tmp_path):
    gts = np.arange(24, dtype=np.int16).reshape(2, 3, 4) % 3
    np.savez(tmp_path / "gt.npz", imgs=np.zeros((2, 3, 4), np.uint8), gts=gts, spacing=np.ones(3))
    np.savez(tmp_path / "pred.npz", segs=gts + 1, spacing=np.ones(3))
    np.testing.assert_array_equal(read_labels(tmp_path / "gt.npz").array, gts)
    np.testing.assert_array_equal(read_labels(tmp_path / "pred.npz").array, gts + 1)


def test_read_labels_accepts_integral_floats_and_refuses_fractions(tmp_path):
    write_volume(Volume(np.array([[[0.0, 1.0, 2.0]]], np.float32), (1.0, 1.0, 1.0)), tmp_path / "ok.nrrd")
    assert read_labels(tmp_path / "ok.nrrd").array.tolist() == [[[0, 1, 2]]]
    write_volume(Volume(np.array([[[0.0, 0.5]]], np.float32), (1.0, 1.0, 1.0)), tmp_path / "prob.nrrd")
    with pytest.raises(InputError, match="not a label map"):
        read_labels(tmp_path / "prob.nrrd")
