"""Checkpoints and resume, the exported model folder, fine-tuning from it, and the configuration's checks."""
import copy
import json

import numpy as np
import pytest
import torch

from medals.errors import InputError
from medals.pipeline.api import segment
from medals.pipeline.request import Prompt
from medals.train import parse_config, train
from medals.train.checkpoint import load_checkpoint
from medals.train.initial import initial_model
from medals.weights import load_model
from train_fixtures import tiny_config, toy_image, toy_labels, write_tiny_tower, write_toy_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory, parity):
    root = tmp_path_factory.mktemp("train")
    return write_toy_dataset(root / "data"), write_tiny_tower(parity, root / "tower")


def run(toy, output, **kwargs):
    dataset, tower = toy
    return train(parse_config(tiny_config(dataset, tower, output, steps=4)), device="cpu", log=lambda line: None,
                 **kwargs)


@pytest.fixture(scope="module")
def straight(toy, tmp_path_factory):
    """Four steps in one run."""
    output = tmp_path_factory.mktemp("straight")
    return run(toy, output), output


def test_a_run_ends_with_a_checkpoint_of_its_last_step_and_finite_losses(straight):
    result, output = straight
    assert (result.first_step, result.end_step) == (0, 4)
    assert load_checkpoint(output / "checkpoint.pt")["step"] == 4
    assert len(result.logged_losses) == 4 and all(np.isfinite(result.logged_losses))


def test_resuming_repeats_the_uninterrupted_run_exactly(toy, straight, tmp_path):
    first = run(toy, tmp_path, max_steps=2)
    assert first.end_step == 2
    second = run(toy, tmp_path, resume=True)
    assert (second.first_step, second.end_step) == (2, 4)
    resumed = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    uninterrupted = load_checkpoint(straight[1] / "checkpoint.pt")["model"]
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert second.logged_losses == straight[0].logged_losses[2:]


def test_an_existing_checkpoint_is_not_overwritten_without_resume(toy, straight):
    with pytest.raises(InputError, match="--resume"):
        run(toy, straight[1])


def test_resume_refuses_a_checkpoint_of_another_network(toy, straight, tmp_path):
    dataset, tower = toy
    values = tiny_config(dataset, tower, tmp_path, steps=6)
    values["stages"]["coarse"]["net"] = dict(values["stages"]["coarse"]["net"], features=[4, 8, 8, 16, 32])
    (tmp_path / "checkpoint.pt").write_bytes((straight[1] / "checkpoint.pt").read_bytes())
    with pytest.raises(InputError, match="another 'stages'"):
        train(parse_config(values), resume=True, device="cpu", log=lambda line: None)


def test_the_exported_model_loads_and_segments(straight):
    model = load_model(straight[1] / "model")
    assert set(model.nets) == {"coarse"} and not model.nets["coarse"].config.deep_supervision
    labels = toy_labels()
    result = segment(model, toy_image(labels, 5), (2.0, 1.5, 1.5), [Prompt("ball", 1), Prompt("shell", 2)],
                     modality="mri", device="cpu")
    assert result.labels.shape == labels.shape and set(np.unique(result.labels)) <= {0, 1, 2}


def test_fine_tuning_starts_from_the_model_and_adds_fresh_deep_supervision_heads(toy, straight, tmp_path):
    dataset, tower = toy
    values = tiny_config(dataset, tower, tmp_path)
    del values["text"], values["text_tower"], values["stages"]["coarse"]["net"]
    values["init_from"] = str(straight[1] / "model")
    start = initial_model(parse_config(values))
    stored = load_model(straight[1] / "model")
    state = start.nets["coarse"].state_dict()
    for key, tensor in stored.nets["coarse"].state_dict().items():
        assert torch.equal(state[key], tensor), key
    assert any(key.startswith("mid_mask_embed_proj.") for key in state)
    assert start.stages["coarse"] == stored.config.stages["coarse"]
    assert all(torch.equal(a, b) for a, b in zip(start.text_encoder.state_dict().values(),
                                                 stored.text_encoder.state_dict().values()))


def test_fine_tuning_refuses_a_plan_that_differs_from_the_model(toy, straight, tmp_path):
    dataset, tower = toy
    values = tiny_config(dataset, tower, tmp_path)
    del values["text"], values["text_tower"]
    values["stages"]["coarse"]["net"] = dict(values["stages"]["coarse"]["net"], query_dim=32)
    values["init_from"] = str(straight[1] / "model")
    with pytest.raises(InputError, match="differs from model"):
        initial_model(parse_config(values))


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(learning_rate=1), "unknown field"),
    (lambda c: c["stages"]["coarse"].pop("net"), "missing 'net'"),
    (lambda c: c["stages"].update(middle=c["stages"]["coarse"]), "stage names"),
    (lambda c: c.update(precision="fp8"), "precision"),
    (lambda c: c["optimizer"]["cycles"][0].update(warmup=10), "warmup"),
    (lambda c: c["stages"]["coarse"].update(target_spacing=[1, 1]), "target_spacing"),
])
def test_configuration_mistakes_are_named_in_one_line(toy, tmp_path, change, message):
    values = copy.deepcopy(tiny_config(*toy, tmp_path))
    change(values)
    with pytest.raises(InputError, match=message):
        parse_config(json.loads(json.dumps(values)))
