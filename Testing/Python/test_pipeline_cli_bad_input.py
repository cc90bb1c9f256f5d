"""`medals segment` refuses bad input with one line on stderr, a non-zero exit, and no output file."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from medals.cli import main
from medals.io import Volume, write_volume
from medals.weights.testing import make_tiny_model

SHAPE = (10, 20, 20)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def good_image(folder):
    array = np.random.default_rng(0).integers(0, 255, SHAPE).astype(np.uint8)
    return write_volume(Volume(array, (2.0, 1.0, 1.0)), folder / "image.nii.gz")


def unreadable(folder):
    path = folder / "image.nii.gz"
    path.write_bytes(b"not an image at all")
    return [path, "-p", "liver"]


def truncated(folder):
    path = good_image(folder)
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    return [path, "-p", "liver"]


def two_dimensional(folder):
    path = folder / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.uint8)), str(path))
    return [path, "-p", "liver"]


def nan_voxels(folder):
    array = np.zeros(SHAPE, np.float32)
    array[2, 3, 4] = np.nan
    return [write_volume(Volume(array, (1.0, 1.0, 1.0)), folder / "nan.nii.gz"), "-p", "liver"]


def zero_spacing(folder):
    image = sitk.GetImageFromArray(np.zeros(SHAPE, np.uint8))
    path = folder / "spacing.nrrd"
    sitk.WriteImage(image, str(path))
    path.write_bytes(path.read_bytes().replace(b"space directions: (1,0,0)", b"space directions: (0,0,0)"))
    return [path, "-p", "liver"]


def negative_spacing(folder):
    path = folder / "case.npz"
    np.savez(path, imgs=np.zeros(SHAPE, np.uint8), spacing=np.array([-1.0, 1.0, 1.0]))
    return [path, "-p", "liver"]


def mask_on_another_grid(folder):
    mask = write_volume(Volume(np.ones((5, 5, 5), np.uint8), (1.0, 1.0, 1.0)), folder / "mask.nii.gz")
    return [good_image(folder), "-p", "liver", "--mask", f"1={mask}"]


def no_prompts(folder):
    return [good_image(folder)]


def blank_prompt(folder):
    return [good_image(folder), "-p", "   "]


def unknown_modality(folder):
    return [good_image(folder), "-p", "liver", "--modality", "xray"]


CASES = {"unreadable file": unreadable, "truncated file": truncated, "2-D image": two_dimensional,
         "NaN voxels": nan_voxels, "zero spacing": zero_spacing, "negative spacing": negative_spacing,
         "mask on another grid": mask_on_another_grid, "empty prompt list": no_prompts,
         "blank prompt": blank_prompt, "unknown modality": unknown_modality}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_one_line_and_a_non_zero_exit(case, tmp_path, tiny_model, capsys):
    arguments = CASES[case](tmp_path)
    output = tmp_path / "out" / "labels.nii.gz"
    code = main(["segment", *map(str, arguments), "--model", str(tiny_model), "--device", "cpu", "-q",
                 "-o", str(output)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(error) == 1 and error[0].startswith("medals: error:"), error
    assert not output.exists()
