"""Importing the official weights from a `docker save` archive of the authors' image (spec §9)."""
from __future__ import annotations

import tarfile

import pytest
import torch

from medals.errors import WeightsError
from medals.weights import install_official, load_model
from medals.weights.docker import LayerFiles, compose_layers, extract_official_files
from weights_fixtures import (COARSE_NAME, FINE_NAME, SMALL_PLAN, folder_files, write_docker_archive,
                              write_official_folder)

STALE_STAGE = "nano_UNet_CVPR2025_crop_size_32_32_32_spacing_2.0_2.0_2.0_step_100.pth"
CHECKPOINTS = "workspace/checkpoints"


@pytest.fixture
def official(tmp_path, parity, parity_text_state):
    return write_official_folder(tmp_path / "release", parity, parity_text_state)


@pytest.fixture
def fake_release(tmp_path):
    """Release files with placeholder contents, for checks of extraction alone."""
    folder = tmp_path / "fake_release"
    (folder / "BioLORD-2023-C").mkdir(parents=True)
    for name in (COARSE_NAME, FINE_NAME, "text_encoder.pth", "BioLORD-2023-C/config.json",
                 "BioLORD-2023-C/vocab.txt"):
        (folder / name).write_bytes(name.encode())
    return folder


def image_layers(release) -> list[dict[str, bytes]]:
    """Two layers: the first has a damaged coarse checkpoint, a stale third stage and the tower's weights; the
    second replaces the coarse checkpoint and whites out the stale one. Only the composed image is importable."""
    base = folder_files(release, CHECKPOINTS)
    good_coarse = base[f"{CHECKPOINTS}/{COARSE_NAME}"]
    base[f"{CHECKPOINTS}/{COARSE_NAME}"] = good_coarse[:10]
    base[f"{CHECKPOINTS}/{STALE_STAGE}"] = b"stale"
    base[f"{CHECKPOINTS}/BioLORD-2023-C/model.safetensors"] = b"tower weights, not needed"
    base["workspace/predict.sh"] = b"python inference.py\n"
    update = {f"{CHECKPOINTS}/{COARSE_NAME}": good_coarse, f"{CHECKPOINTS}/.wh.{STALE_STAGE}": b""}
    return [base, update]


@pytest.mark.parametrize("oci", [False, True], ids=["classic-layout", "oci-layout"])
def test_archive_import_applies_layer_overrides_and_whiteouts(official, tmp_path, monkeypatch, oci):
    monkeypatch.setenv("MEDALS_HOME", str(tmp_path / "home"))
    archive = write_docker_archive(tmp_path / "teamx_alldata.tar.gz", image_layers(official), oci=oci)
    install_official(archive, "official", plan=SMALL_PLAN)
    model = load_model("official")
    assert sorted(model.nets) == ["coarse", "fine"]
    source = torch.load(official / COARSE_NAME, weights_only=True)["model_state_dict"]
    loaded = model.nets["coarse"].state_dict()
    assert all(torch.equal(loaded[k], source[f"module.{k}"]) for k in loaded)


def test_extraction_writes_the_composed_release_files_and_nothing_else(fake_release, tmp_path):
    archive = write_docker_archive(tmp_path / "image.tar.gz", image_layers(fake_release))
    folder = extract_official_files(archive, tmp_path / "out")
    found = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert found == {p.relative_to(fake_release).as_posix(): p.read_bytes()
                     for p in fake_release.rglob("*") if p.is_file()}


def test_whiteout_of_a_folder_deletes_everything_below_it():
    layers = {"a": LayerFiles(files={"x/y/f.pth": 1, "x/g.pth": 2}), "b": LayerFiles(whiteouts=["x/y"])}
    assert compose_layers(["a", "b"], layers, "archive") == {"x/g.pth": 2}


def test_opaque_whiteout_empties_the_folder_below_but_keeps_the_layers_own_files():
    layers = {"a": LayerFiles(files={"x/f.pth": 1, "z.pth": 2}),
              "b": LayerFiles(files={"x/h.pth": 3}, opaque_dirs=["x"])}
    assert compose_layers(["a", "b"], layers, "archive") == {"z.pth": 2, "x/h.pth": 3}


def test_path_traversal_member_is_refused(fake_release, tmp_path):
    layer = folder_files(fake_release, CHECKPOINTS)
    layer[f"../escape/{FINE_NAME}"] = b"not written"
    archive = write_docker_archive(tmp_path / "image.tar.gz", [layer])
    with pytest.raises(WeightsError, match=r"refusing layer member '\.\./escape/.*' \(path outside the image root\)"):
        extract_official_files(archive, tmp_path / "out" / "inside")
    assert not (tmp_path / "out" / "escape").exists() and not (tmp_path / "escape").exists()


def test_archive_without_manifest_is_reported(tmp_path):
    archive = tmp_path / "not_docker.tar.gz"
    with tarfile.open(archive, "w:gz"):
        pass
    with pytest.raises(WeightsError, match=r"no manifest\.json \(not an archive written by `docker save`\)"):
        extract_official_files(archive, tmp_path / "out")


def test_truncated_archive_is_reported(fake_release, tmp_path):
    archive = write_docker_archive(tmp_path / "image.tar.gz", image_layers(fake_release))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(WeightsError) as caught:
        extract_official_files(archive, tmp_path / "out")
    assert str(caught.value).startswith(f"{archive}: cannot be read, the archive is truncated or corrupt")
    assert "\n" not in str(caught.value)


def test_image_without_text_encoder_is_reported(fake_release, tmp_path):
    layer = {k: v for k, v in folder_files(fake_release, CHECKPOINTS).items() if not k.endswith("text_encoder.pth")}
    archive = write_docker_archive(tmp_path / "image.tar.gz", [layer])
    with pytest.raises(WeightsError, match="expected one text_encoder.pth in the image, found: none"):
        extract_official_files(archive, tmp_path / "out")
