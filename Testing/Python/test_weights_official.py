"""Importing official Medal S checkpoint folders into the model store (spec §1.3, §4.4)."""
from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch

from medals.config import NetConfig
from medals.errors import WeightsError
from medals.modeling import MedalSNet
from medals.weights import install_official, list_models, load_model
from medals.weights.official import StageFile, assign_stages, read_stage_state
from medals.weights.state import load_strict, restore_aliases
from weights_fixtures import COARSE_NAME, FINE_NAME, SMALL_PLAN, save_checkpoint, write_official_folder


@pytest.fixture
def official(tmp_path, parity, parity_text_state):
    return write_official_folder(tmp_path / "checkpoints", parity, parity_text_state)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDALS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def import_error(official, **kwargs) -> str:
    with pytest.raises(WeightsError) as caught:
        install_official(official, "official", plan=SMALL_PLAN, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def edit_checkpoint(path, edit):
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint["model_state_dict"])
    torch.save(checkpoint, path)


def test_stage_file_name_gives_crop_spacing_and_step(tmp_path):
    stage = StageFile.parse(tmp_path / "nano_UNet_CVPR2025_crop_size_224_224_128_spacing_1.5_1.5_3.0_step_358600.pth")
    assert (stage.crop_size, stage.spacing, stage.step) == ((224, 224, 128), (1.5, 1.5, 3.0), 358600)
    assert StageFile.parse(tmp_path / "text_encoder.pth") is None


def test_larger_spacing_is_the_coarse_stage(tmp_path):
    fine = StageFile.parse(tmp_path / "x_crop_size_192_192_192_spacing_1.0_1.0_1.0_step_1.pth")
    coarse = StageFile.parse(tmp_path / "x_crop_size_224_224_128_spacing_1.5_1.5_3.0_step_2.pth")
    assert assign_stages([fine, coarse]) == {"coarse": coarse, "fine": fine}


def test_folder_import_round_trips_every_tensor(official, home, parity_text_state):
    installed = install_official(official, "official", plan=SMALL_PLAN)
    model = load_model("official")
    assert installed.path == home / "models" / "official"
    assert model.config.stages["coarse"].crop_size == (32, 32, 64)
    assert model.config.stages["coarse"].target_spacing == (1.5, 1.5, 3.0)
    assert model.config.stages["fine"].target_spacing == (1.0, 1.0, 1.0)
    for role, name in (("coarse", COARSE_NAME), ("fine", FINE_NAME)):
        source = torch.load(official / name, weights_only=True)["model_state_dict"]
        loaded = model.nets[role].state_dict()
        assert set(loaded) == {k.removeprefix("module.") for k in source if "mid_mask_embed_proj" not in k}
        assert all(torch.equal(loaded[k], source[f"module.{k}"]) for k in loaded)
    loaded_text = model.text_encoder.state_dict()
    assert set(loaded_text) == set(parity_text_state)
    assert all(torch.equal(loaded_text[k], parity_text_state[k]) for k in parity_text_state)


def test_imported_model_is_ready_for_inference(official, home):
    install_official(official, "official", plan=SMALL_PLAN)
    model = load_model("official")
    assert not model.text_encoder.training and not any(net.training for net in model.nets.values())
    queries = model.text_encoder.encode(["liver in CT"], "ct")
    with torch.no_grad():
        logits = model.nets["fine"](queries, torch.rand(1, 1, 32, 32, 32) * 255)
    assert logits.shape == (1, 1, 32, 32, 32) and torch.isfinite(logits).all()


def test_lone_stage_is_fine_up_to_one_cubic_millimetre_voxels(tmp_path):
    fine = StageFile.parse(tmp_path / "x_crop_size_192_192_192_spacing_1.0_1.0_1.0_step_1.pth")
    coarse = StageFile.parse(tmp_path / "x_crop_size_224_224_128_spacing_1.5_1.5_3.0_step_2.pth")
    assert assign_stages([fine]) == {"fine": fine}
    assert assign_stages([coarse]) == {"coarse": coarse}


def test_two_stages_of_equal_spacing_are_refused(tmp_path):
    first = StageFile.parse(tmp_path / "x_crop_size_192_192_192_spacing_1.0_1.0_1.0_step_1.pth")
    second = StageFile.parse(tmp_path / "x_crop_size_192_192_192_spacing_1.0_1.0_1.0_step_2.pth")
    with pytest.raises(WeightsError, match="expected one coarse and one fine stage checkpoint with different spacings"):
        assign_stages([first, second])


def test_truncated_checkpoint_is_reported(official, home):
    path = official / COARSE_NAME
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = import_error(official)
    assert message.startswith(f"{path}: cannot be read, the file is truncated or corrupt")


def test_wrong_shape_is_reported_with_its_key(official, home):
    key = "module.backbone.encoder.stages.0.0.convs.0.conv.weight"
    edit_checkpoint(official / FINE_NAME, lambda state: state.__setitem__(key, torch.zeros(8, 2, 3, 3, 1)))
    message = import_error(official)
    assert message.startswith(
        f"{official / FINE_NAME}: wrong shape for key 'backbone.encoder.stages.0.0.convs.0.conv.weight'")
    assert "file has [8, 2, 3, 3, 1], the network expects [8, 2, 3, 3, 3]" in message


def test_missing_key_is_reported(official, home):
    edit_checkpoint(official / FINE_NAME, lambda state: state.pop("module.fusion_conv.convs.0.all_modules.1.bias"))
    assert import_error(official) == (f"{official / FINE_NAME}: missing key 'fusion_conv.convs.0.all_modules.1.bias'; "
                                      "the file does not match the network configuration")


def test_unexpected_key_is_reported(official, home):
    edit_checkpoint(official / COARSE_NAME, lambda state: state.__setitem__("module.extra_head.weight", torch.ones(2)))
    assert import_error(official) == (f"{official / COARSE_NAME}: unexpected key 'extra_head.weight'; "
                                      "the file does not match the network configuration")


def test_missing_text_encoder_is_reported(official, home):
    (official / "text_encoder.pth").unlink()
    assert import_error(official) == f"{official / 'text_encoder.pth'}: file not found"


def test_text_encoder_missing_a_key_is_reported(official, home):
    edit_checkpoint(official / "text_encoder.pth", lambda state: state.pop("module.modality_embed.weight"))
    message = import_error(official)
    assert message.startswith(f"{official / 'text_encoder.pth'}: ") and "modality_embed.weight" in message


def test_missing_source_is_reported(tmp_path, home):
    assert import_error(tmp_path / "nowhere") == f"{tmp_path / 'nowhere'}: file not found"


def test_checkpoint_needing_pickle_is_refused_unless_allowed(official, home):
    path = official / FINE_NAME
    checkpoint = torch.load(path, weights_only=True)
    torch.save({**checkpoint, "args": argparse.Namespace(lr=1e-4)}, path)
    message = import_error(official)
    assert message.startswith(f"{path}: needs full pickle loading") and "argparse.Namespace" in message
    assert "--allow-pickle" in message
    install_official(official, "official", plan=SMALL_PLAN, allow_pickle=True)
    assert [m.name for m in list_models()] == ["official"]


def test_failed_import_leaves_the_store_untouched(official, home):
    install_official(official, "official", plan=SMALL_PLAN)
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    (official / "text_encoder.pth").unlink()
    import_error(official, replace=True)
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before


def test_existing_model_is_not_replaced_without_asking(official, home):
    install_official(official, "official", plan=SMALL_PLAN)
    assert "already installed" in import_error(official)


def test_cli_import_prints_what_was_installed(official, home, tmp_path, capsys):
    from medals.cli import main

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(SMALL_PLAN.to_dict()))
    assert main(["weights", "import", str(official), "--name", "mine", "--plan", str(plan)]) == 0
    out = capsys.readouterr().out
    assert f"installed 'mine' in {home / 'models' / 'mine'}" in out
    assert "coarse 32x32x64 @ 1.5x1.5x3 mm, fine 32x32x32 @ 1x1x1 mm" in out
    assert "text tower: BioLORD-2023-C (official tokenization)" in out


def test_official_288_key_layout_loads_strictly(tmp_path, parity, parity_weights):
    """The real-size training layout (DDP prefix + deep-supervision heads) → strict load (construction only)."""
    reference = parity_weights("medals_net_keys.json", 0)
    state = {f"module.{k}": v for k, v in reference.items()}
    heads = {0: (256, 64), 1: (384, 128), 2: (512, 256)}
    for head, (hidden, out) in heads.items():
        state.update({f"module.mid_mask_embed_proj.{head}.0.weight": torch.zeros(hidden, 768),
                      f"module.mid_mask_embed_proj.{head}.0.bias": torch.zeros(hidden),
                      f"module.mid_mask_embed_proj.{head}.2.weight": torch.zeros(out, hidden),
                      f"module.mid_mask_embed_proj.{head}.2.bias": torch.zeros(out)})
    assert len(state) == 288 + 12
    path = save_checkpoint(tmp_path / "nano_UNet_CVPR2025_crop_size_224_224_128_spacing_1.5_1.5_3.0_step_358600.pth",
                           state)
    stage = StageFile.parse(path)
    canonical = read_stage_state(stage, NetConfig(crop_size=stage.crop_size))
    net = MedalSNet(NetConfig(crop_size=stage.crop_size))
    load_strict(net, restore_aliases(canonical, net.state_dict().keys()), path)
    loaded = net.state_dict()
    assert len(loaded) == 288
    assert torch.equal(loaded["backbone.encoder.stages.0.0.convs.0.all_modules.0.weight"],
                       reference["backbone.encoder.stages.0.0.convs.0.conv.weight"])
    assert torch.equal(loaded["transformer_decoder.norm.weight"], reference["transformer_decoder.norm.weight"])
