"""The model store: installed models live in `$MEDALS_HOME/models/<name>/`, one model folder each.

`$MEDALS_HOME` defaults to the per-user cache (`$XDG_CACHE_HOME/medals`, i.e. `~/.cache/medals`, on Linux and
macOS; `%LOCALAPPDATA%\\medals` on Windows). Folders whose name starts with "." are installs in progress.
Models shipped inside the package (`medals/models/`, the demo model) are found by name like installed ones; an
installed model of the same name, or any installed model when none is named, comes first.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig
from ..errors import InputError, ModelNotFound, WeightsError

CONFIG_FILE = "config.json"
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "models"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def medals_home() -> Path:
    """Root of the engine's per-user data: `$MEDALS_HOME`, else the platform's per-user cache folder."""
    if os.environ.get("MEDALS_HOME"):
        return Path(os.environ["MEDALS_HOME"]).expanduser()
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "medals"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "medals"


def models_dir(home: Path | None = None) -> Path:
    return Path(home or medals_home()) / "models"


def check_model_name(name: str) -> str:
    """A store name is a single path component: letters, digits, '.', '_', '-', not starting with a dot."""
    if not MODEL_NAME.fullmatch(name):
        raise InputError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def read_model_config(folder: Path) -> ModelConfig:
    """The ModelConfig of a model folder, or a one-line WeightsError naming what is wrong with it."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: file not found (not a MedalS model folder)")
    try:
        return ModelConfig.load(path)
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{path}: invalid model config ({error})") from None


def folder_size(folder: Path) -> int:
    """Bytes of all regular files below `folder`."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


@dataclass(frozen=True)
class InstalledModel:
    """A model in the store, or bundled with the package: its name, folder and configuration."""

    name: str
    path: Path
    config: ModelConfig
    bundled: bool = False

    @property
    def size_bytes(self) -> int:
        return folder_size(self.path)


def models_in(root: Path, bundled: bool = False) -> list[InstalledModel]:
    """The model folders directly below `root`, sorted by name (folders without a readable config.json and
    installs in progress are left out)."""
    if not root.is_dir():
        return []
    models = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        try:
            models.append(InstalledModel(folder.name, folder, read_model_config(folder), bundled))
        except WeightsError:
            continue
    return models


def list_models(home: Path | None = None) -> list[InstalledModel]:
    """Installed models, sorted by name."""
    return models_in(models_dir(home))


def available_models(home: Path | None = None) -> list[InstalledModel]:
    """Installed models, then the bundled ones whose name no installed model takes."""
    installed = list_models(home)
    taken = {model.name for model in installed}
    return installed + [model for model in models_in(BUNDLED_DIR, bundled=True) if model.name not in taken]


def default_model(home: Path | None = None) -> InstalledModel:
    """The model used when none is named: the only installed one, else (none installed) the only bundled one.
    ModelNotFound, listing the installed models, when that does not decide."""
    models = available_models(home)
    candidates = [model for model in models if not model.bundled] or models
    if len(candidates) != 1:
        raise ModelNotFound(f"name the model with --model ({describe_models(models, home)})")
    return candidates[0]


def default_model_name(home: Path | None = None) -> str | None:
    """The default model's name, or None when a model must be named."""
    try:
        return default_model(home).name
    except ModelNotFound:
        return None


def resolve_model(name_or_path, home: Path | None = None) -> Path:
    """Folder of a model given its name (installed, else bundled), or a path to a model folder (a folder with
    config.json); None means the default model (`default_model`)."""
    if name_or_path is None:
        return default_model(home).path
    candidate = Path(name_or_path).expanduser()
    if (candidate / CONFIG_FILE).is_file():
        return candidate
    name = str(name_or_path)
    for root in (models_dir(home), BUNDLED_DIR):
        if MODEL_NAME.fullmatch(name) and (root / name / CONFIG_FILE).is_file():
            return root / name
    raise ModelNotFound(f"no model {name!r} ({describe_models(available_models(home), home)}); "
                        "install one with `medals weights import SOURCE`")


def describe_models(models: list[InstalledModel], home: Path | None = None) -> str:
    """E.g. 'installed in ~/.cache/medals/models: official, mine; bundled: medals-demo'."""
    installed = ", ".join(model.name for model in models if not model.bundled) or "none"
    bundled = ", ".join(model.name for model in models if model.bundled)
    return f"installed in {models_dir(home)}: {installed}" + (f"; bundled: {bundled}" if bundled else "")
