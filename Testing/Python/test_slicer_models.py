"""The Models section's logic (MedalSLib.models): the engine's model list and the official weights import, run
as child processes of the engine's Python exactly as the panel runs them, with a tiny model and a small
official-format release (weights_fixtures)."""
import dataclasses
import json
import os
import sys
import threading

import pytest
from weights_fixtures import SMALL_PLAN, folder_files, write_docker_archive, write_official_folder

from MedalSLib.models import ModelsError, import_command, import_weights, list_models, parse_model_list

from medals.weights.store import BUNDLED_DIR, resolve_model
from medals.weights.testing import make_tiny_model

CHECKPOINTS = "workspace/checkpoints"


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def env(home):
    return {**os.environ, "MEDALS_HOME": str(home)}


@pytest.fixture
def archive(tmp_path, parity, parity_weights):
    """The authors' `docker save` archive, in miniature: the release folder in one image layer."""
    release = write_official_folder(tmp_path / "release", parity, parity_weights("text_encoder_keys.json", 0))
    return write_docker_archive(tmp_path / "teamx_alldata.tar.gz", [folder_files(release, CHECKPOINTS)])


@pytest.fixture
def small_plan(tmp_path):
    """The release's network widths (not the official ones), as `medals weights import --plan` reads them."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(dataclasses.asdict(SMALL_PLAN)))
    return path


def test_list_has_the_bundled_demo_model_then_the_installed_ones(home, env):
    make_tiny_model(home / "models" / "tiny")
    models = list_models(sys.executable, env)
    assert [(m.name, m.bundled) for m in models] == [("medals-demo", True), ("tiny", False)]
    assert models[0].path == str(BUNDLED_DIR / "medals-demo")
    assert models[1].stages.startswith("coarse 32x32x32 @ 3x3x3 mm") and models[1].size_bytes > 0
    assert "bundled demo" in models[0].label and "GB" in models[1].label


def test_bundled_model_is_served_by_name_and_an_installed_one_of_that_name_wins(home):
    assert resolve_model("medals-demo", home) == BUNDLED_DIR / "medals-demo"
    make_tiny_model(home / "models" / "medals-demo")
    assert resolve_model("medals-demo", home) == home / "models" / "medals-demo"


def test_listing_errors_are_one_clear_line(tmp_path):
    with pytest.raises(ModelsError, match="cannot run"):
        list_models(str(tmp_path / "no-python"))
    with pytest.raises(ModelsError, match="not readable"):
        parse_model_list('{"models": [{"name": "x"}]}')


@pytest.mark.slow  # about 30 s: each engine command imports torch in a fresh process
def test_import_installs_the_official_release_with_progress(archive, small_plan, env):
    lines = []
    summary = import_weights(sys.executable, str(archive), plan=str(small_plan), env=env, report=lines.append)
    assert summary.startswith("installed 'official'")
    assert any(line.startswith("extracting the release files") for line in lines)
    assert [m.name for m in list_models(sys.executable, env)] == ["medals-demo", "official"]
    with pytest.raises(ModelsError, match="already installed"):  # the store keeps it; replacing is asked for
        import_weights(sys.executable, str(archive), plan=str(small_plan), env=env)
    assert import_command("python", "a.tar.gz", replace=True)[-1] == "--replace"


@pytest.mark.slow  # about 30 s: the failing import reads every checkpoint first
def test_import_failure_and_cancel_leave_the_store_as_it_was(archive, env):
    with pytest.raises(ModelsError, match="importing teamx_alldata.tar.gz failed"):  # official widths: no fit
        import_weights(sys.executable, str(archive), env=env)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ModelsError, match="cancelled"):
        import_weights(sys.executable, str(archive), env=env, cancel=cancel)
    assert [m.name for m in list_models(sys.executable, env)] == ["medals-demo"]
