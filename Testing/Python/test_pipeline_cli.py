"""`medals segment` end to end with the tiny test model: files in, label maps and JSON reports out."""
from __future__ import annotations

import json

import numpy as np
import pytest

from medals.cli import main
from medals.io import Volume, read_volume, write_volume
from medals.weights.testing import make_tiny_model

SHAPE = (12, 24, 24)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def write_image(path, seed=0):
    array = np.random.default_rng(seed).integers(0, 255, SHAPE).astype(np.uint8)
    return write_volume(Volume(array, (2.0, 1.5, 1.5), origin=(10.0, -5.0, 3.0)), path)


def segment_cli(*arguments):
    return main(["segment", *map(str, arguments), "--device", "cpu", "-q"])


def test_segment_writes_labels_on_the_image_grid_and_a_report(tmp_path, tiny_model):
    image = write_image(tmp_path / "ct.nii.gz")
    output = tmp_path / "out" / "labels.nrrd"
    assert segment_cli(image, "-p", "liver", "-p", "spleen", "--label", "3", "--label", "7", "--model", tiny_model,
                       "-o", output) == 0
    labels, source = read_volume(output), read_volume(image)
    assert labels.same_grid(source)
    assert set(np.unique(labels.array)) <= {0, 3, 7}
    report = json.loads((tmp_path / "out" / "labels_report.json").read_text())
    assert set(report["classes"]) == {"3", "7"}
    assert report["classes"]["7"]["name"] == "spleen"
    assert report["classes"]["3"]["voxels"] == int((labels.array == 3).sum())


def test_challenge_npz_takes_prompts_from_the_file_and_writes_segs(tmp_path, tiny_model):
    case = tmp_path / "case.npz"
    np.savez(case, imgs=np.random.default_rng(1).integers(0, 255, SHAPE).astype(np.uint8),
             spacing=np.array([1.5, 1.5, 2.0]),
             text_prompts=np.array({"1": "liver in CT", "4": "kidney in CT", "instance_label": 0}, dtype=object))
    output = tmp_path / "out.npz"
    assert segment_cli(case, "--model", tiny_model, "-o", output) == 0
    with np.load(output, allow_pickle=True) as written:
        assert written["segs"].shape == SHAPE and written["segs"].dtype == np.int16
        assert set(np.unique(written["segs"])) <= {0, 1, 4}
        np.testing.assert_array_equal(written["spacing"], [1.5, 1.5, 2.0])
        assert written["text_prompts"].item()["4"] == "kidney in CT"


def test_folder_of_images_gives_one_output_per_image_and_one_report(tmp_path, tiny_model):
    folder = tmp_path / "in"
    for name in ("a", "b"):
        write_image(folder / f"{name}.mha")
    assert segment_cli(folder, "-p", "liver", "--model", tiny_model, "-o", tmp_path / "results") == 0
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["a.nii.gz", "b.nii.gz", "report.json"]
    assert len(json.loads((tmp_path / "results" / "report.json").read_text())) == 2


def test_probability_maps_are_written_per_class(tmp_path, tiny_model):
    image = write_image(tmp_path / "ct.nii.gz")
    assert segment_cli(image, "-p", "liver", "--probabilities", "--model", tiny_model, "-o",
                       tmp_path / "labels.nii.gz") == 0
    probability = read_volume(tmp_path / "labels_probability_1.nii.gz")
    assert probability.shape == SHAPE and probability.array.dtype == np.float32


def test_mask_on_another_grid_is_a_one_line_error(tmp_path, tiny_model, capsys):
    image = write_image(tmp_path / "ct.nii.gz")
    write_volume(Volume(np.ones((4, 4, 4), np.uint8), (1.0, 1.0, 1.0)), tmp_path / "seed.nii.gz")
    code = segment_cli(image, "-p", "liver", "--mask", f"1={tmp_path / 'seed.nii.gz'}", "--model", tiny_model,
                       "-o", tmp_path / "labels.nii.gz")
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error and "shape" in error
    assert not (tmp_path / "labels.nii.gz").exists()


def test_prompt_count_and_label_count_must_match(tmp_path, tiny_model, capsys):
    image = write_image(tmp_path / "ct.nii.gz")
    code = segment_cli(image, "-p", "liver", "-p", "spleen", "--label", "2", "--model", tiny_model, "-o",
                       tmp_path / "labels.nii.gz")
    assert code == 2 and "--label" in capsys.readouterr().err
