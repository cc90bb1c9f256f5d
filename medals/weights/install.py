"""Installing official Medal S weights into the model store, from a checkpoint folder or the Docker archive."""
from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..config import NetConfig
from ..errors import WeightsError
from .docker import extract_official_files
from .model_folder import save_model
from .official import read_official_model
from .store import InstalledModel, check_model_name, models_dir


def install_official(source, name: str = "official", home: Path | None = None, plan: NetConfig | None = None,
                     allow_pickle: bool = False, replace: bool = False,
                     log: Callable[[str], None] = lambda message: None) -> InstalledModel:
    """Convert the official release at `source` into the store as model `name`; returns the installed model.

    `source` is an official checkpoint folder (stage checkpoints + text_encoder.pth + BioLORD-2023-C/) or the
    `docker save` archive of the authors' image. Every tensor is verified before anything is installed; the
    model folder is written beside the store's models and renamed into place, so a failed import leaves the
    store as it was. `plan` overrides the official network widths (crops and spacings still come from the
    file names).
    """
    source = Path(source).expanduser()
    check_model_name(name)
    root = models_dir(home)
    target = root / name
    if target.exists() and not replace:
        raise WeightsError(f"a model named {name!r} is already installed at {target} (use --replace)")
    if not source.exists():
        raise WeightsError(f"{source}: file not found")
    if source.is_file() and not tarfile.is_tarfile(source):
        raise WeightsError(f"{source}: not a Docker image archive; give the archive written by `docker save` "
                           "(teamx_alldata.tar.gz) or an official checkpoint folder")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=root) as work:
        folder = source
        if source.is_file():
            log(f"extracting the release files from {source}")
            folder = extract_official_files(source, Path(work) / "image", log)
        description = f"Official Medal S weights imported from {source.resolve()}"
        config, stage_states, text_state, tower = read_official_model(folder, name, plan, allow_pickle, description,
                                                                      log)
        log(f"writing model {name!r}")
        staged = save_model(Path(work) / "model", config, stage_states, text_state, tower)
        if target.exists():
            shutil.rmtree(target)
        staged.replace(target)
    return InstalledModel(name, target, config)
