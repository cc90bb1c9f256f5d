"""`medals segment --server URL`: the command line through a real engine server gives the in-process result."""
from __future__ import annotations

import numpy as np
import pytest

from medals.cli import main
from medals.io import Volume, read_volume, write_volume
from server_fixtures import TOKEN, medals_home, server_process  # noqa: F401


@pytest.fixture(scope="module")
def server(medals_home):  # noqa: F811
    with server_process(medals_home, "--token", TOKEN) as process:
        yield process


def test_segment_through_the_server_equals_the_in_process_run(tmp_path, server, medals_home, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MEDALS_HOME", str(medals_home))
    array = np.random.default_rng(3).integers(0, 255, (12, 24, 24)).astype(np.uint8)
    image = write_volume(Volume(array, (2.0, 1.5, 1.5)), tmp_path / "mr.nii.gz")
    common = [str(image), "-p", "brain", "-p", "cerebellum", "--modality", "mri", "-q"]
    assert main(["segment", *common, "--model", "tiny", "--device", "cpu", "-o", str(tmp_path / "local.nii.gz")]) == 0
    assert main(["segment", *common, "--server", server.url, "--token", TOKEN,
                 "-o", str(tmp_path / "remote.nii.gz")]) == 0
    local, remote = read_volume(tmp_path / "local.nii.gz"), read_volume(tmp_path / "remote.nii.gz")
    assert remote.same_grid(read_volume(image))
    np.testing.assert_array_equal(remote.array, local.array)


def test_probability_maps_through_the_server_match_the_in_process_ones(tmp_path, server, medals_home,  # noqa: F811
                                                                       monkeypatch):
    monkeypatch.setenv("MEDALS_HOME", str(medals_home))
    array = np.random.default_rng(4).integers(0, 255, (12, 24, 24)).astype(np.uint8)
    image = write_volume(Volume(array, (2.0, 1.5, 1.5)), tmp_path / "mr.nii.gz")
    common = [str(image), "-p", "brain", "--modality", "mri", "--probabilities", "-q"]
    assert main(["segment", *common, "--model", "tiny", "--device", "cpu", "-o", str(tmp_path / "local.nii.gz")]) == 0
    assert main(["segment", *common, "--server", server.url, "--token", TOKEN,
                 "-o", str(tmp_path / "remote.nii.gz")]) == 0
    local = read_volume(tmp_path / "local_probability_1.nii.gz")
    remote = read_volume(tmp_path / "remote_probability_1.nii.gz")
    assert remote.same_grid(local)
    np.testing.assert_allclose(remote.array, local.array, rtol=0, atol=0.5 / 255 + 1e-6)


def test_a_wrong_token_is_a_one_line_error(tmp_path, server, capsys):
    image = write_volume(Volume(np.zeros((8, 16, 16), np.uint8), (1.0, 1.0, 1.0)), tmp_path / "ct.nii.gz")
    code = main(["segment", str(image), "-p", "liver", "--server", server.url, "--token", "wrong", "-q",
                 "-o", str(tmp_path / "out.nii.gz")])
    error = capsys.readouterr().err.strip()
    assert code != 0 and error.startswith("medals: error:") and "\n" not in error
    assert not (tmp_path / "out.nii.gz").exists()
