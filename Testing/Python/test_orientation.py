"""Turning images to a model's training orientation: the arithmetic against SimpleITK's DICOMOrient, then the
pipeline, the CLI and a real `medals serve` segmenting one brain stored two ways alike."""
from __future__ import annotations

import itertools
import json
import zlib

import numpy as np
import pytest
import SimpleITK as sitk
from server_fixtures import client, raw_request, server_process  # noqa: F401

from medals.cli import main
from medals.config import ModelConfig
from medals.errors import InputError
from medals.io import Volume, read_volume, write_volume
from medals.orientation import Reorientation, check_code, orientation_code, reorientation
from medals.pipeline import Prompt, SegmentOptions, segment
from medals.server.remote import segment_remote
from medals.weights import load_model
from medals.weights.testing import make_tiny_model

AXIS_ALIGNED = [np.array([[sign if row == column_world else 0.0 for sign, column_world in zip(signs, worlds)]
                          for row in range(3)])
                for worlds in itertools.permutations(range(3)) for signs in itertools.product((1.0, -1.0), repeat=3)]
"""All 48 axis-aligned ITK direction matrices (column c = the LPS direction of axis c)."""

RAS = np.diag([-1.0, -1.0, 1.0])
LSA = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # coronal slices, as the ITK KmeansTest T1 is stored
PROMPTS = [Prompt("liver", 1), Prompt("spleen", 2)]


@pytest.mark.parametrize("direction", AXIS_ALIGNED, ids=[orientation_code(d) for d in AXIS_ALIGNED])
def test_codes_and_turns_agree_with_simpleitk(direction):
    assert orientation_code(direction.ravel()) == \
        sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction.ravel().tolist())
    array = np.random.default_rng(0).random((4, 5, 6))
    image = sitk.GetImageFromArray(array)
    image.SetDirection(direction.ravel().tolist())
    image.SetSpacing((1.0, 2.0, 3.0))
    for target in ("RAS", "LPS", "ASL"):
        turn = reorientation(direction, target)
        turned = sitk.DICOMOrient(image, target)
        assert np.array_equal(turn.apply(array), sitk.GetArrayFromImage(turned))
        assert turn.permute((3.0, 2.0, 1.0)) == tuple(turned.GetSpacing()[::-1])
        assert np.array_equal(turn.undo(turn.apply(array)), array)


def test_oblique_directions_take_the_nearest_axes():
    angle = np.radians(30)
    tilted = RAS @ np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    assert orientation_code(tilted) == "RAS"
    diagonal = np.radians(45)  # a tie: each world axis must still be named once
    assert sorted(orientation_code(np.array([[np.cos(diagonal), -np.sin(diagonal), 0],
                                             [np.sin(diagonal), np.cos(diagonal), 0], [0, 0, 1]]))) == ["L", "P", "S"]


def test_boxes_follow_the_turn_and_come_back():
    turn = reorientation(LSA, "RAS")
    shape = (6, 7, 8)
    box = (1, 3, 0, 6, 2, 5)
    mask = np.zeros(shape, bool)
    mask[1:4, 0:7, 2:6] = True
    turned = turn.apply(mask)
    found = np.argwhere(turned)
    assert turn.box(box, shape) == tuple(v for a in range(3) for v in (found[:, a].min(), found[:, a].max()))
    assert turn.unbox(turn.box(box, shape), shape) == box


def test_bad_codes_and_matrices_are_refused_in_one_line():
    assert check_code("ras") == "RAS"
    for code in ("RAA", "RA", "XYZ", "RASL"):
        with pytest.raises(InputError, match="three letters"):
            check_code(code)
    with pytest.raises(InputError, match="not a rotation"):
        orientation_code(np.zeros(9))
    with pytest.raises(InputError, match="not a rotation"):
        orientation_code([1, 0, 0, 0, np.nan, 0, 0, 0, 1])


def test_a_model_config_keeps_its_orientation_and_official_configs_have_none():
    config = ModelConfig("m", orientation="RAS")
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))).orientation == "RAS"
    assert "orientation" not in ModelConfig("official").to_dict()
    with pytest.raises(InputError):
        ModelConfig.from_dict({**config.to_dict(), "orientation": "up"})


@pytest.fixture(scope="module")
def oriented_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("oriented_home")
    make_tiny_model(home / "models" / "tiny", orientation="RAS")
    return home


@pytest.fixture(scope="module")
def brain_two_ways():
    """One random 'brain' stored axially (RAS) and coronally (LSA): the same voxels in space."""
    ras = (np.random.default_rng(3).random((20, 36, 28)) * 255).astype(np.float32)
    spacing = (2.0, 1.0, 1.5)
    turn = reorientation(RAS, "LSA")
    return (ras, spacing), (turn.apply(ras), turn.permute(spacing)), turn


def test_the_pipeline_segments_a_coronal_copy_like_the_axial_original(oriented_home, brain_two_ways):
    model = load_model(oriented_home / "models" / "tiny")
    (axial, axial_spacing), (coronal, coronal_spacing), turn = brain_two_ways
    options = SegmentOptions(probabilities=True)
    reference = segment(model, axial, axial_spacing, PROMPTS, direction=RAS, modality="ct", options=options,
                        device="cpu")
    turned = segment(model, coronal, coronal_spacing, PROMPTS, direction=LSA, modality="ct", options=options,
                     device="cpu")
    assert np.array_equal(turned.labels, turn.apply(reference.labels)) and reference.labels.any()
    assert np.array_equal(turned.probabilities[2], turn.apply(reference.probabilities[2]))
    assert turned.box == turn.box(reference.box, axial.shape)
    with pytest.warns(RuntimeWarning, match="taken as RAS already"):  # direction unknown
        as_stored = segment(model, coronal, coronal_spacing, PROMPTS, modality="ct", device="cpu")
    assert not np.array_equal(as_stored.labels, turned.labels)  # the turn is what made them agree


def test_masks_and_boxes_are_given_and_returned_on_the_callers_grid(oriented_home, brain_two_ways):
    model = load_model(oriented_home / "models" / "tiny")
    (axial, axial_spacing), (coronal, coronal_spacing), turn = brain_two_ways
    mask = np.zeros(axial.shape, bool)
    mask[8:12, 10:20, 8:16] = True
    box = (4, 15, 5, 30, 3, 24)
    reference = segment(model, axial, axial_spacing, PROMPTS, direction=RAS, modality="ct", masks={1: mask},
                        options=SegmentOptions(box=box), device="cpu")
    turned = segment(model, coronal, coronal_spacing, PROMPTS, direction=LSA, modality="ct",
                     masks={1: turn.apply(mask)}, options=SegmentOptions(box=turn.box(box, axial.shape)),
                     device="cpu")
    assert np.array_equal(turned.labels, turn.apply(reference.labels))
    assert turned.box == turn.box(box, axial.shape) and reference.box == box


def test_medals_segment_turns_a_coronal_file(oriented_home, brain_two_ways, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDALS_HOME", str(oriented_home))
    (axial, axial_spacing), (coronal, coronal_spacing), turn = brain_two_ways
    write_volume(Volume(axial, axial_spacing, direction=RAS), tmp_path / "axial.nii.gz")
    write_volume(Volume(coronal, coronal_spacing, direction=LSA), tmp_path / "coronal.nii.gz")
    for name in ("axial", "coronal"):
        assert main(["segment", str(tmp_path / f"{name}.nii.gz"), "-p", "liver", "-p", "spleen", "--modality", "ct",
                     "--device", "cpu", "-q", "-o", str(tmp_path / f"{name}-labels.nii.gz")]) == 0
    axial_labels = read_volume(tmp_path / "axial-labels.nii.gz")
    coronal_labels = read_volume(tmp_path / "coronal-labels.nii.gz")
    assert np.allclose(coronal_labels.direction, LSA)
    assert np.array_equal(coronal_labels.array, turn.apply(axial_labels.array)) and axial_labels.array.any()


def test_a_real_server_turns_images_uploaded_with_their_direction(oriented_home, brain_two_ways):
    (axial, axial_spacing), (coronal, coronal_spacing), turn = brain_two_ways
    with server_process(oriented_home) as server:
        local = segment(load_model(oriented_home / "models" / "tiny"), axial, axial_spacing, PROMPTS, direction=RAS,
                        modality="ct", device="cpu")
        remote = segment_remote(server.url, coronal, coronal_spacing, PROMPTS, direction=LSA.ravel(), modality="ct")
        assert np.array_equal(remote.labels, turn.apply(local.labels))
        engine = client.EngineClient(server.url)
        engine.connect()
        with_direction = client.ImageRef.of(coronal, coronal_spacing, LSA)
        without = client.ImageRef.of(coronal, coronal_spacing)
        assert with_direction.image_id != without.image_id  # same voxels, different image
        assert engine.upload(with_direction)["direction"] == LSA.ravel().tolist()
        assert engine.upload(without)["direction"] is None
        status, body, _ = raw_request(server.url, "POST", "/v1/images", zlib.compress(bytes(8)), {
            "Content-Type": "application/octet-stream", "X-Medals-Dtype": "uint8", "X-Medals-Shape": "2,2,2",
            "X-Medals-Spacing": "1,1,1", "X-Medals-Direction": "1,0,0,0,0,0,0,0,1"})
        assert status == 400 and "invertible" in body["detail"]


def test_identity_turns_touch_nothing():
    array = np.arange(24.0).reshape(2, 3, 4)
    turn = Reorientation()
    assert turn.is_identity and turn.apply(array) is array and turn.undo(array) is array
    assert reorientation(LSA, None).is_identity and reorientation(None, "RAS").is_identity
