"""Red-team checks of `medals segment` and the readers: outputs onto inputs, folder runs with a bad case, bombs and
lying headers, unwritable destinations, unknown prompts. Every case also checks that no input file changed.

Files are small and made here; the bombs are bounded (a 512 MiB gzip of zeros is half a megabyte on disk, and the
reader must refuse it from its header without inflating it).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import struct
import time

import numpy as np
import pytest

from medals.cli import main
from medals.errors import InputError
from medals.io import Volume, read_volume, write_volume
from medals.weights.testing import make_tiny_model

SHAPE = (10, 20, 20)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def image(path, seed=0):
    array = np.random.default_rng(seed).integers(0, 255, SHAPE).astype(np.uint8)
    return write_volume(Volume(array, (2.0, 1.0, 1.0)), path)


def fingerprints(*folders) -> dict:
    """Content digest and modification time of every file below the folders."""
    return {path: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for folder in folders for path in sorted(folder.rglob("*")) if path.is_file()}


def segment(tiny_model, *arguments) -> int:
    return main(["segment", *map(str, arguments), "--model", str(tiny_model), "--device", "cpu", "-q"])


def refused(capsys, tiny_model, *arguments) -> str:
    """The one error line of a refused run."""
    assert segment(tiny_model, *arguments) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medals: error:")]
    assert len(errors) == 1, errors
    return errors[0]


# -- outputs never land on inputs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["same", "dotted"])
def test_an_output_equal_to_the_input_is_refused_before_the_run(tmp_path, tiny_model, capsys, spelling):
    """Once: `-o` equal to the input (also spelled ./../dir/same.nii.gz) overwrote it with a label map."""
    source = image(tmp_path / "data" / "ct.nii.gz")
    before = fingerprints(tmp_path)
    output = source if spelling == "same" else tmp_path / "data" / ".." / "data" / "." / "ct.nii.gz"
    line = refused(capsys, tiny_model, source, "-p", "liver", "-o", output)
    assert "would overwrite the input" in line
    assert fingerprints(tmp_path) == before


def test_a_probability_map_name_equal_to_an_input_is_refused(tmp_path, tiny_model, capsys):
    source = image(tmp_path / "b_probability_1.nii.gz")
    before = fingerprints(tmp_path)
    line = refused(capsys, tiny_model, source, "-p", "liver", "-o", tmp_path / "b.nii.gz", "--probabilities")
    assert "the probability map 1" in line and "would overwrite the input" in line
    assert fingerprints(tmp_path) == before


def test_a_report_or_mask_path_is_an_input_too(tmp_path, tiny_model, capsys):
    source, seed = image(tmp_path / "ct.nii.gz"), image(tmp_path / "labels_report.json.nii.gz", seed=1)
    before = fingerprints(tmp_path)
    line = refused(capsys, tiny_model, source, "-p", "liver", "--mask", f"1={seed}", "-o", tmp_path / "out.nii.gz",
                   "--report", seed)
    assert "the report would overwrite the input" in line
    assert fingerprints(tmp_path) == before


def test_an_output_folder_equal_to_the_input_folder_is_refused(tmp_path, tiny_model, capsys):
    """Once: every input of the folder was overwritten by its own label map."""
    folder = tmp_path / "scans"
    for number in range(2):
        image(folder / f"case{number}.nii.gz", seed=number)
    before = fingerprints(tmp_path)
    line = refused(capsys, tiny_model, folder, "-p", "liver", "-o", folder)
    assert "would overwrite the input" in line
    assert fingerprints(tmp_path) == before


def test_two_inputs_that_would_write_one_output_are_refused(tmp_path, tiny_model, capsys):
    """Once: a.nii.gz and a.nrrd in one folder both wrote a.nii.gz, the second over the first."""
    folder = tmp_path / "scans"
    image(folder / "a.nii.gz")
    image(folder / "a.nrrd", seed=1)
    before = fingerprints(tmp_path)
    line = refused(capsys, tiny_model, folder, "-p", "liver", "-o", tmp_path / "out")
    assert "would both be written there" in line
    assert not list((tmp_path / "out").glob("*.nii.gz"))
    assert fingerprints(folder) == before


@pytest.mark.parametrize("where", ["virtual", "under_a_file"])
def test_an_unwritable_output_is_refused_before_the_run(tmp_path, tiny_model, capsys, where):
    """Once: /sys/x.nii.gz, or a path under a regular file, ended in a traceback after the whole run."""
    source = image(tmp_path / "ct.nii.gz")
    before = fingerprints(tmp_path)
    target = "/sys/medals-x.nii.gz" if where == "virtual" else source / "x.nii.gz"
    line = refused(capsys, tiny_model, source, "-p", "liver", "-o", target)
    assert "cannot be written" in line
    assert fingerprints(tmp_path) == before


# -- folder runs --------------------------------------------------------------------------------------------------

def test_a_folder_run_goes_on_past_a_corrupt_case_and_writes_its_report(tmp_path, tiny_model, capsys):
    """Once: one corrupt file stopped the run; later files never ran and no report was written."""
    folder = tmp_path / "scans"
    image(folder / "a.nii.gz")
    (folder / "b.nii.gz").write_bytes(b"not an image")
    image(folder / "c.nii.gz", seed=2)
    before = fingerprints(folder)
    code = segment(tiny_model, folder, "-p", "liver", "-o", tmp_path / "out")
    assert code != 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [entry["image"].rsplit("/", 1)[1] for entry in report] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert "error" in report[1] and "is corrupt or truncated" in report[1]["error"]
    assert (tmp_path / "out" / "a.nii.gz").is_file() and (tmp_path / "out" / "c.nii.gz").is_file()
    assert "1 of 3 images failed" in capsys.readouterr().err
    assert fingerprints(folder) == before


# -- unknown prompts ----------------------------------------------------------------------------------------------

def test_an_unknown_prompt_warns_with_suggestions_and_is_marked_in_the_report(tmp_path, tiny_model, capsys):
    """Once: "flux capacitor" was segmented (14 ml) as if it were an organ, while the README promised an error.
    Now the user is told, with the closest known names, and the report marks the class out of vocabulary."""
    source = image(tmp_path / "ct.nii.gz")
    before = fingerprints(tmp_path)
    code = segment(tiny_model, source, "-p", "liver", "-p", "flux capacitor", "-p", "pancraes", "-o",
                   tmp_path / "out" / "labels.nii.gz")
    err = capsys.readouterr().err
    assert code == 0
    assert "'flux capacitor' is not a structure the vocabulary knows" in err
    assert "did you mean 'pancreas'" in err
    classes = json.loads((tmp_path / "out" / "labels_report.json").read_text())["classes"]
    marks = {label: (entry["in_vocabulary"], entry["suggestions"][:1]) for label, entry in classes.items()}
    assert marks["1"] == (True, []) and marks["3"] == (False, ["pancreas"])
    assert all(fingerprints(tmp_path)[path] == digest for path, digest in before.items())


# -- readers: sizes from headers, before the payload --------------------------------------------------------------

def refused_file(path, message: str) -> None:
    """Reading `path` fails with `message`, and the file is as it was."""
    before = fingerprints(path.parent)
    with pytest.raises(InputError, match=message):
        read_volume(path)
    assert fingerprints(path.parent) == before


def nifti_header(dims, datatype=2, bitpix=8, offset=352.0) -> bytes:
    """A NIfTI-1 header (348 bytes + 4 bytes of empty extension flag) for uint8 voxels of `dims` (i, j, k)."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims), *dims, *[1] * (7 - len(dims)))
    struct.pack_into("<2h", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1.0, 1.0, 1.0, 1.0, *[1.0] * 4)
    struct.pack_into("<f", header, 108, offset)
    header[344:348] = b"n+1\0"
    return bytes(header) + bytes(4)


def test_a_gzip_bomb_is_refused_from_its_header_without_inflating_it(tmp_path):
    """Once: a 1 MB file inflating to 1 GiB was read whole (RSS passed 7 GB for the 8 GiB one)."""
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as stream:
        stream.write(nifti_header((1024, 1024, 512)))
        zeros = bytes(1 << 24)
        for _ in range(32):  # 512 MiB of voxels, half a megabyte on disk
            stream.write(zeros)
    started = time.monotonic()
    refused_file(path, "536870912 voxels is over the limit")
    assert time.monotonic() - started < 2.0, "the payload was inflated before the header was checked"


def test_the_command_line_voxel_limit_is_checked_from_the_header(tmp_path, tiny_model, capsys):
    source = image(tmp_path / "ct.nii.gz")
    before = fingerprints(tmp_path)
    line = refused(capsys, tiny_model, source, "-p", "liver", "-o", tmp_path / "out.nii.gz", "--max-voxels", "1000")
    assert "20 × 20 × 10 = 4000 voxels is over the limit of 1000" in line
    assert fingerprints(tmp_path) == before


@pytest.mark.parametrize("offset", [float("nan"), float("inf"), 1e18, -5.0])
def test_a_nifti_vox_offset_that_no_file_has_is_one_line(tmp_path, offset):
    """Once: vox_offset NaN, inf or 1e18 ended in a traceback (int(nan), or a read of 1e18 bytes)."""
    path = tmp_path / "offset.nii"
    path.write_bytes(nifti_header((4, 4, 4), offset=offset) + bytes(64))
    refused_file(path, "vox_offset")


def test_a_negative_nifti_dimension_is_refused(tmp_path):
    """Once: dim[3] = -32 was read as a 64×64×1 image and segmented with exit 0."""
    path = tmp_path / "negative.nii"
    path.write_bytes(nifti_header((64, 64, -32)) + bytes(64 * 64))
    refused_file(path, r"dim\[3\] = -32 is not a positive size")


def test_a_huge_spacing_is_refused(tmp_path):
    """Once: spacing 1e9 mm was accepted and planned 147 windows over a grid of nothing."""
    path = write_volume(Volume(np.zeros(SHAPE, np.uint8), (1e9, 1.0, 1.0)), tmp_path / "far.nii.gz")
    refused_file(path, "at most 1000 mm")


def test_float64_voxels_beyond_float32_are_refused(tmp_path):
    array = np.zeros(SHAPE, np.float64)
    array[1, 2, 3] = 1e300
    path = write_volume(Volume(array, (1.0, 1.0, 1.0)), tmp_path / "big.nii.gz")
    refused_file(path, "1 of 4000 voxels are NaN, infinite or beyond the float32 range")


def test_an_npz_member_is_refused_from_its_array_header(tmp_path):
    """The challenge npz: a zip bomb member is checked from its .npy header before numpy inflates it."""
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, imgs=np.zeros((257, 1024, 1024), np.uint8), spacing=np.ones(3))  # 2²⁸ + 2²⁰ voxels
    refused_file(path, "'imgs': 257 × 1024 × 1024 = 269484032 voxels is over the limit")
