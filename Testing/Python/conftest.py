"""Shared test fixtures: the parity fixture folder and its deterministic weight generator (medals.bench.parity)."""
from __future__ import annotations

import pytest

from medals.bench.parity import ParityFixtures, load_fixture  # noqa: F401  (tests import load_fixture from here)


@pytest.fixture(scope="session")
def parity_fixtures() -> ParityFixtures:
    return ParityFixtures.find()


@pytest.fixture(scope="session")
def parity(parity_fixtures):
    return parity_fixtures.folder


@pytest.fixture(scope="session")
def parity_weights(parity_fixtures):
    """`state_dict(manifest_name, seed)` from the fixture folder's own weights.py."""
    return parity_fixtures.state_dict
