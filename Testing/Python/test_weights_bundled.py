"""The bundled demo model (medals/models/medals-demo, package data) is a model like any other.

Listed by `medals info` and `medals weights list` (marked as bundled) and used by `medals segment`, `medals serve`
and the Slicer module's local engine when no model is named and none is installed. An installed model still comes
first, and two installed models still need `--model`. Every test has its own empty MEDALS_HOME.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from MedalSLib.client import EngineClient
from MedalSLib.errors import EngineStartError
from MedalSLib.launcher import LocalEngine, engine_command
from medals.cli import main
from medals.demo import DEMO_MODEL, SAMPLES
from medals.errors import ModelNotFound
from medals.io import Volume, read_volume, write_volume
from medals.metrics import dice
from medals.weights import available_models, default_model, resolve_model, store
from medals.weights.testing import make_tiny_model


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDALS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def install_tiny(home, name: str = "tiny"):
    return make_tiny_model(home / "models" / name, name=name)


def test_with_nothing_installed_the_default_is_the_bundled_model(home):
    assert resolve_model(None) == DEMO_MODEL
    assert default_model().bundled and default_model().name == "medals-demo"


def test_an_installed_model_comes_before_the_bundled_one(home):
    tiny = install_tiny(home)
    assert resolve_model(None) == tiny


def test_two_installed_models_still_need_a_name(home):
    install_tiny(home, "tiny")
    install_tiny(home, "other")
    with pytest.raises(ModelNotFound, match=r"name the model with --model \(installed in .*: other, tiny; "
                                            r"bundled: medals-demo\)"):
        resolve_model(None)


def test_the_bundled_model_resolves_by_name_unless_an_installed_one_takes_it(home):
    assert resolve_model("medals-demo") == DEMO_MODEL
    installed = install_tiny(home, "medals-demo")
    assert resolve_model("medals-demo") == installed
    assert [(m.name, m.bundled) for m in available_models()] == [("medals-demo", False)]


def test_without_any_model_the_error_says_none_is_installed(home, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "BUNDLED_DIR", tmp_path / "no-bundled-models")
    with pytest.raises(ModelNotFound, match=r"installed in .*: none\)$"):
        resolve_model(None)


def test_weights_list_marks_the_bundled_model_and_names_the_default(home, capsys):
    install_tiny(home)
    assert main(["weights", "list"]) == 0
    header, tiny, demo, default = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "SOURCE", "STAGES", "TEXT", "TOWER", "SIZE"]
    assert tiny.split()[:2] == ["tiny", "installed"] and demo.split()[:2] == ["medals-demo", "bundled"]
    assert default == "default (no --model): tiny"


def test_weights_list_with_nothing_installed_lists_the_bundled_default(home, capsys):
    assert main(["weights", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["medals-demo", "bundled"]
    assert lines[-1] == "default (no --model): medals-demo"


def test_weights_list_with_two_installed_says_to_name_one(home, capsys):
    install_tiny(home, "tiny")
    install_tiny(home, "other")
    assert main(["weights", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "several models installed: name one with --model"


def test_info_lists_installed_and_bundled_models_and_the_default(home, capsys):
    assert main(["info", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["installed_models"], report["bundled_models"], report["default_model"]) == \
        ([], ["medals-demo"], "medals-demo")
    install_tiny(home)
    assert main(["info", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["installed_models"], report["bundled_models"], report["default_model"]) == \
        (["tiny"], ["medals-demo"], "tiny")


@pytest.fixture(scope="module")
def small_head(tmp_path_factory):
    """A quarter of the bundled MNI152 T1 (its upper back part, so the test takes seconds) at 2 mm, and its brain
    reference there (gray or white matter)."""
    folder = tmp_path_factory.mktemp("head")
    image = read_volume(SAMPLES / "mni152_t1.nii.gz")
    quarter = (slice(100, None, 2), slice(110, None, 2), slice(None, None, 2))
    write_volume(Volume(image.array[quarter], tuple(2 * s for s in image.spacing), image.origin, image.direction),
                 folder / "head.nii.gz")
    return folder / "head.nii.gz", read_volume(SAMPLES / "mni152_tissue_reference.nii.gz").array[quarter] > 0


def test_segment_without_a_model_uses_the_bundled_one(home, small_head, tmp_path):
    """`medals segment head.nii.gz -p brain -o out.nii.gz` with nothing installed: the demo model's brain, not
    an error (a random model would not come near the reference)."""
    image, brain = small_head
    assert main(["segment", str(image), "-p", "brain", "-o", str(tmp_path / "out.nii.gz"), "--device", "cpu",
                 "-q"]) == 0
    labels = read_volume(tmp_path / "out.nii.gz").array
    assert dice(brain, labels == 1) >= 0.8


def engine_model(command: list[str], home) -> str:
    """Start an engine with `command` and MEDALS_HOME=home as the Slicer module does; the model it serves."""
    engine = LocalEngine(command, env={**os.environ, "MEDALS_HOME": str(home)},
                         startup_timeout_s=300)
    try:
        url = engine.start()
        return EngineClient(url, engine.token, timeout=30).info()["model"]
    finally:
        engine.stop()


def test_slicer_local_engine_without_a_model_serves_the_bundled_one(home):
    assert engine_model(engine_command(sys.executable, device="cpu"), home) == "medals-demo"


def test_serve_without_a_model_serves_the_installed_one(home):
    install_tiny(home)
    assert engine_model(engine_command(sys.executable, device="cpu"), home) == "tiny"


def test_serve_among_two_installed_models_stops_asking_for_a_name(home):
    install_tiny(home, "tiny")
    install_tiny(home, "other")
    with pytest.raises(EngineStartError, match="name the model with --model"):
        engine_model(engine_command(sys.executable, device="cpu"), home)
