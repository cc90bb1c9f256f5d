"""Shared test fixtures: the parity fixture folder and its deterministic weight generator."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def parity_dir() -> Path:
    """Fixture folder: $MEDALS_PARITY_DIR, else the set the repository carries (Testing/Data/parity)."""
    return Path(os.environ.get("MEDALS_PARITY_DIR", REPO_ROOT / "Testing" / "Data" / "parity")).resolve()


@pytest.fixture(scope="session")
def parity() -> Path:
    folder = parity_dir()
    if not (folder / "weights.py").is_file():
        raise FileNotFoundError(f"parity fixtures not found in {folder}; set MEDALS_PARITY_DIR")
    return folder


def weight_rule(folder: Path):
    """`state_dict(manifest_name, seed)`: `deterministic_state_dict` from the fixture folder's own weights.py."""
    spec = importlib.util.spec_from_file_location("parity_weights", folder / "weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def state_dict(manifest: str, seed: int):
        return module.deterministic_state_dict(json.loads((folder / manifest).read_text()), seed)

    return state_dict


@pytest.fixture(scope="session")
def parity_weights(parity):
    return weight_rule(parity)


@pytest.fixture(scope="session")
def parity_text_state(parity, parity_weights):
    """The text encoder's weights at the seed the text fixture was recorded with."""
    meta, _ = load_fixture(parity, "text")
    return parity_weights("text_encoder_keys.json", meta["weights_seed"])


def load_fixture(folder: Path, name: str):
    """(json metadata, npz arrays) of one fixture."""
    return json.loads((folder / f"{name}.json").read_text()), np.load(folder / f"{name}.npz", allow_pickle=False)


def parity_cases(prefix: str, holding: str) -> list[str]:
    """Names of the fixtures `<prefix>*` whose arrays include `holding`, found when tests are collected, so a
    fixture set with other shapes (and so other names) is tested whole."""
    folder = parity_dir()
    names = sorted(path.stem for path in folder.glob(f"{prefix}*.npz")
                   if holding in np.load(path, allow_pickle=False).files)
    if not names:
        raise FileNotFoundError(f"no {prefix}* fixture holding '{holding}' in {folder}; set MEDALS_PARITY_DIR")
    return names
