"""Shared test fixtures: the parity fixture folder (Testing/Data/parity, or $MEDALS_PARITY_DIR) and its
deterministic weight generator, through the engine's own loader (medals.bench.parity)."""
from __future__ import annotations

from pathlib import Path

import pytest

from medals.bench.parity import ParityFixtures, load_fixture  # noqa: F401  (tests import load_fixture from here)

REPO_ROOT = Path(__file__).resolve().parents[2]


def parity_cases(prefix: str, holding: str) -> list[str]:
    """Names of the fixtures `<prefix>*` whose arrays include `holding`, found when tests are collected, so a
    fixture set with other shapes (and so other names) is tested whole."""
    return ParityFixtures.find().cases(prefix, holding)


@pytest.fixture(scope="session")
def parity_fixtures() -> ParityFixtures:
    return ParityFixtures.find()


@pytest.fixture(scope="session")
def parity(parity_fixtures):
    """The fixture folder."""
    return parity_fixtures.folder


@pytest.fixture(scope="session")
def parity_weights(parity_fixtures):
    """`state_dict(manifest_name, seed)` from the fixture folder's own weights.py."""
    return parity_fixtures.state_dict


@pytest.fixture(scope="session")
def parity_text_state(parity, parity_weights):
    """The text encoder's weights at the seed the text fixture was recorded with."""
    meta, _ = load_fixture(parity, "text")
    return parity_weights("text_encoder_keys.json", meta["weights_seed"])
