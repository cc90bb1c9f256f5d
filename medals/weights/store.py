"""The model store: installed models live in `$MEDALS_HOME/models/<name>/`, one model folder each.

`$MEDALS_HOME` defaults to the per-user cache (`$XDG_CACHE_HOME/medals`, i.e. `~/.cache/medals`, on Linux and
macOS; `%LOCALAPPDATA%\\medals` on Windows). Folders whose name starts with "." are installs in progress.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig
from ..errors import InputError, ModelNotFound, WeightsError

CONFIG_FILE = "config.json"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
BUNDLED_MODELS = Path(__file__).resolve().parents[1] / "models"
"""Models shipped inside the package (the demo model): served by name like installed ones, never in the store."""


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
    """A model in the store: its name, folder and configuration."""

    name: str
    path: Path
    config: ModelConfig

    @property
    def size_bytes(self) -> int:
        return folder_size(self.path)


def list_models(home: Path | None = None, folder: Path | None = None) -> list[InstalledModel]:
    """Installed models, sorted by name (folders without a readable config.json are left out); `folder` lists
    another folder of model folders than the store's."""
    root = folder or models_dir(home)
    if not root.is_dir():
        return []
    models = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        try:
            models.append(InstalledModel(folder.name, folder, read_model_config(folder)))
        except WeightsError:
            continue
    return models


def bundled_models() -> list[InstalledModel]:
    """The models shipped inside the package, sorted by name."""
    return list_models(folder=BUNDLED_MODELS)


def resolve_model(name_or_path, home: Path | None = None) -> Path:
    """Folder of a model given its store name (or a bundled model's name), or a path to a model folder (a folder
    with config.json); None
    means the only installed model (ModelNotFound, listing them, when there is not exactly one)."""
    if name_or_path is None:
        installed = list_models(home)
        if len(installed) != 1:
            names = ", ".join(m.name for m in installed) or "none"
            raise ModelNotFound(f"name the model with --model (installed in {models_dir(home)}: {names})")
        return models_dir(home) / installed[0].name
    candidate = Path(name_or_path).expanduser()
    if (candidate / CONFIG_FILE).is_file():
        return candidate
    name = str(name_or_path)
    if MODEL_NAME.fullmatch(name):
        for root in (models_dir(home), BUNDLED_MODELS):  # an installed model of a bundled one's name wins
            if (root / name / CONFIG_FILE).is_file():
                return root / name
    installed = ", ".join(m.name for m in list_models(home)) or "none"
    raise ModelNotFound(f"no model {name!r} (installed in {models_dir(home)}: {installed}); "
                        "install one with `medals weights import SOURCE`")
