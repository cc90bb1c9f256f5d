"""The model store ($MEDALS_HOME/models), the engine's model-folder format, and the tiny test model."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from medals.cli import main
from medals.errors import ModelNotFound, WeightsError
from medals.weights import list_models, load_model, medals_home, resolve_model, save_model, store
from medals.weights.testing import make_tiny_model


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDALS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def tiny(home):
    return make_tiny_model(home / "models" / "tiny")


def test_home_defaults_to_the_per_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDALS_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert medals_home() == tmp_path / "cache" / "medals"


def test_installed_models_are_listed_and_partial_installs_are_not(tiny, home):
    (home / "models" / ".official.x1y2").mkdir()
    (home / "models" / "empty").mkdir()
    assert [(m.name, m.path) for m in list_models()] == [("tiny", tiny)]


def test_unknown_model_names_the_installed_ones(tiny):
    with pytest.raises(ModelNotFound,
                       match=r"no model 'official' \(installed in .*/models: tiny; bundled: medals-demo\)"):
        resolve_model("official")


def test_model_resolves_by_name_or_by_folder(tiny):
    assert resolve_model("tiny") == tiny
    assert resolve_model(str(tiny)) == tiny


def test_loaded_model_is_in_eval_mode_on_the_device(tiny):
    model = load_model("tiny", device="cpu")
    assert sorted(model.nets) == ["coarse", "fine"]
    assert not model.text_encoder.training and not any(net.training for net in model.nets.values())
    assert {p.device.type for net in model.nets.values() for p in net.parameters()} == {"cpu"}
    assert model.config.stages["fine"].target_spacing == (1.5, 1.5, 1.5)


def test_tiny_model_runs_end_to_end(tiny):
    model = load_model(tiny)
    queries = model.text_encoder.encode(["left kidney in CT", "liver"], "ct")
    with torch.no_grad():
        logits = model.nets["coarse"](queries, torch.rand(1, 1, 32, 32, 32) * 255)
    assert logits.shape == (1, 2, 32, 32, 32) and torch.isfinite(logits).all()


def test_tiny_model_weights_depend_only_on_the_seed(tmp_path):
    first, again, other = (make_tiny_model(tmp_path / name, seed=seed) for name, seed in
                           (("a", 0), ("b", 0), ("c", 1)))
    def same_weights(a, b, part):
        state_a, state_b = load_file(a / part), load_file(b / part)
        return state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)

    for part in ("coarse.safetensors", "fine.safetensors", "text_encoder.safetensors"):
        assert same_weights(first, again, part) and not same_weights(first, other, part)


def test_stage_files_store_each_tensor_once_and_loading_restores_the_aliases(tiny):
    stored = load_file(tiny / "fine.safetensors")
    assert not any(".all_modules." in key for key in stored)
    net = load_model(tiny).nets["fine"]
    key = "backbone.encoder.stages.0.0.convs.0"
    assert torch.equal(net.state_dict()[f"{key}.all_modules.0.weight"], stored[f"{key}.conv.weight"])


def test_truncated_stage_file_is_reported(tiny):
    path = tiny / "coarse.safetensors"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsError) as caught:
        load_model("tiny")
    assert str(caught.value).startswith(f"{path}: cannot be read, the file is truncated or corrupt")
    assert "\n" not in str(caught.value)


def test_stage_file_of_another_plan_is_reported(tiny):
    path = tiny / "coarse.safetensors"
    state = load_file(path)
    state["mask_embed_proj.2.weight"] = torch.zeros(8, 16)
    save_file(state, str(path))
    with pytest.raises(WeightsError) as caught:
        load_model("tiny")
    assert str(caught.value) == (f"{path}: wrong shape for key 'mask_embed_proj.2.weight': "
                                 "file has [8, 16], the network expects [8, 32]")


def test_missing_stage_file_is_reported(tiny):
    (tiny / "fine.safetensors").unlink()
    with pytest.raises(WeightsError, match=f"^{tiny / 'fine.safetensors'}: file not found$"):
        load_model("tiny")


def test_an_installed_model_named_with_a_damaged_config_reports_the_config(tiny):
    (tiny / "config.json").write_text("{")
    with pytest.raises(WeightsError, match=r"config\.json: invalid model config"):
        load_model("tiny")


def test_config_of_another_format_is_reported(tiny):
    config = json.loads((tiny / "config.json").read_text())
    (tiny / "config.json").write_text(json.dumps({**config, "format": "other/9"}))
    with pytest.raises(WeightsError, match=r"config\.json: invalid model config \(not a MedalS model config"):
        load_model(tiny)


def test_cli_list_shows_stages_tower_and_size(tiny, capsys):
    assert main(["weights", "list"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split() == ["NAME", "SOURCE", "STAGES", "TEXT", "TOWER", "SIZE"]
    assert row.startswith("tiny         installed  coarse 32x32x32 @ 3x3x3 mm, fine 32x32x32 @ 1.5x1.5x1.5 mm  "
                          "tiny-mpnet")
    assert row.endswith(" MB")


def test_cli_list_without_models_says_how_to_install(home, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(store, "BUNDLED_DIR", tmp_path / "no-bundled-models")
    assert main(["weights", "list"]) == 0
    assert "no models installed" in capsys.readouterr().out


def test_cli_path_prints_the_folder(tiny, capsys):
    assert main(["weights", "path", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(tiny)


def test_cli_path_of_unknown_model_fails_in_one_line(tiny, capsys):
    assert main(["weights", "path", "official"]) == ModelNotFound.exit_code
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no model 'official'" in error and "tiny" in error


def test_saving_refuses_a_folder_that_holds_files(tiny):
    with pytest.raises(WeightsError, match="folder exists and is not empty"):
        make_tiny_model(tiny)


def test_saving_refuses_text_queries_of_another_width_than_the_network(tiny, tmp_path):
    config = load_model(tiny).config
    narrow = dataclasses.replace(config, text=dataclasses.replace(config.text, query_dim=16))
    with pytest.raises(WeightsError, match="text query_dim 16 differs from the coarse network's query_dim 48"):
        save_model(tmp_path / "new", narrow, {}, {}, tiny / "text_tower")


def test_a_packaged_text_tower_is_neither_copied_nor_stored_and_loads_from_its_package(tmp_path):
    """Models on a tower that ships in a Python package (the demo's MiniLM) keep only their own weights."""
    from medals.config import ModelConfig, TextConfig
    from medals.modeling import MedalSNet
    from medals.text import TextEncoder
    from medals.text.towers import packaged_tower_folder
    from medals.weights.testing import TINY_PLAN, TINY_STAGES

    tower = packaged_tower_folder("all-MiniLM-L6-v2")
    text = TextConfig(tower="all-MiniLM-L6-v2", hidden_dim=384, query_dim=TINY_PLAN.query_dim, max_length=32,
                      tokenization="native")
    encoder = TextEncoder(text, tower)
    torch.nn.init.normal_(encoder.projection_layer[0].weight)
    folder = save_model(tmp_path / "m", ModelConfig("packaged", text, {"fine": TINY_STAGES["fine"]}),
                        {"fine": MedalSNet(TINY_PLAN).state_dict()}, encoder.state_dict(), tower)
    assert not (folder / "text_tower").exists()
    assert (folder / "text_encoder.safetensors").stat().st_size < 1_000_000  # the tower alone is ~90 MB
    loaded = load_model(folder)
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.text_encoder.state_dict()[key], value), key
