"""Extracting the official release files from the authors' Docker image as written by `docker save` (+ gzip).

The archive (`teamx_alldata.tar.gz`) is a tar holding `manifest.json` and one tar per filesystem layer, either
`<id>/layer.tar` (classic layout) or `blobs/sha256/<digest>` (OCI layout, possibly gzip'd). The image's file
system is the layers applied in manifest order: a later layer's file replaces an earlier one, `.wh.<name>`
deletes `<name>` (file or folder) from the layers below, `.wh..wh..opq` empties its folder below.

The archive is read in one streaming pass (it is never held in memory and never seekable, being gzip'd): the
candidate files of every layer — stage checkpoints, `text_encoder.pth`, the top-level files of a `BioLORD*`
folder except weights — are copied into a per-layer staging folder inside the destination; once the manifest
has been read, the layers are composed and the winning files are moved into an official checkpoint folder.
"""
from __future__ import annotations

import json
import posixpath
import shutil
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import WeightsError
from .official import TEXT_ENCODER_FILE, TOWER_FOLDER_PREFIX, TOWER_WEIGHT_SUFFIXES, is_stage_file

MAX_MANIFEST_BYTES = 1 << 20
"""`manifest.json` of a one-image archive: a few hundred bytes per layer."""
MAX_RELEASE_FILE_BYTES = 1 << 30
"""A stage checkpoint or the text encoder (the official ones are a few hundred MB each)."""
MAX_TOWER_FILE_BYTES = 64 << 20
"""A tower folder's configuration or tokenizer file (weights are not taken from it)."""
STAGING_DIR = ".layers"
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
PREFERRED_HOME = "workspace/checkpoints"  # WORKDIR /workspace + the official default ./checkpoints


def image_path(name: str) -> str:
    """A tar member name as a normalized path in the image ('./a/b' → 'a/b'); '' for the root."""
    path = posixpath.normpath("/" + name.replace("\\", "/")).lstrip("/")
    return "" if path == "." else path


def is_candidate(path: str) -> bool:
    """Whether an image path is a release file: a stage checkpoint, the text encoder, a tower file."""
    parts = PurePosixPath(path).parts
    if not parts:
        return False
    name = parts[-1]
    if is_stage_file(name) or name == TEXT_ENCODER_FILE:
        return True
    return len(parts) >= 2 and parts[-2].startswith(TOWER_FOLDER_PREFIX) and not name.endswith(TOWER_WEIGHT_SUFFIXES)


def size_limit(path: str) -> int:
    """The most bytes a release file at this image path may hold (checked before it is copied)."""
    name = posixpath.basename(path)
    return MAX_RELEASE_FILE_BYTES if is_stage_file(name) or name == TEXT_ENCODER_FILE else MAX_TOWER_FILE_BYTES


@dataclass
class LayerFiles:
    """What one layer contributes: staged candidate files (image path → staged copy) and deletions."""

    files: dict = field(default_factory=dict)
    whiteouts: list = field(default_factory=list)
    opaque_dirs: list = field(default_factory=list)


def _safe_relative(name: str, archive: Path) -> PurePosixPath:
    """A member name as a relative path with no '..' or absolute part (refused, never resolved away)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    parts = [p for p in parts if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts:
        raise WeightsError(f"{archive}: refusing layer member {name!r} (path outside the image root)")
    return PurePosixPath(*parts)


def _scan_layer(layer: tarfile.TarFile, staging: Path, archive: Path) -> LayerFiles:
    """Copy a layer's candidate files into `staging` (streamed) and record its whiteouts."""
    record = LayerFiles()
    for member in layer:
        path = image_path(member.name)
        folder, name = posixpath.split(path)
        if name == OPAQUE_WHITEOUT:
            record.opaque_dirs.append(folder)
        elif name.startswith(WHITEOUT_PREFIX):
            record.whiteouts.append(posixpath.join(folder, name[len(WHITEOUT_PREFIX):]))
        elif is_candidate(path):
            relative = _safe_relative(member.name, archive)
            if not member.isfile():
                record.whiteouts.append(path)  # a link or folder where a release file was: not usable
                continue
            limit = size_limit(path)
            if member.size > limit:
                raise WeightsError(f"{archive}: layer member {member.name!r} holds {member.size} bytes, over the "
                                   f"{limit} a release file of its kind can have")
            target = staging.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with layer.extractfile(member) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            record.files[path] = target
    return record


def _scan_archive(archive: Path, staging_root: Path, log: Callable[[str], None]) -> tuple[list, dict]:
    """One pass over the archive → (manifest layer names, {layer member name: LayerFiles})."""
    manifest, layers = None, {}
    with tarfile.open(archive, mode="r|*") as outer:
        for member in outer:
            if not member.isfile():
                continue
            name = image_path(member.name)
            if name == "manifest.json":
                if member.size > MAX_MANIFEST_BYTES:
                    raise WeightsError(f"{archive}: manifest.json holds {member.size} bytes, over the "
                                       f"{MAX_MANIFEST_BYTES} of a one-image manifest")
                manifest = json.load(outer.extractfile(member))
                continue
            try:
                layer = tarfile.open(fileobj=outer.extractfile(member), mode="r|*")
            except tarfile.ReadError:
                continue  # image config, index.json, ...: not a layer
            log(f"reading layer {name} ({member.size / 1e6:.0f} MB)")
            with layer:
                layers[name] = _scan_layer(layer, staging_root / str(len(layers)), archive)
    if manifest is None:
        raise WeightsError(f"{archive}: no manifest.json (not an archive written by `docker save`)")
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict) \
            or "Layers" not in manifest[0]:
        raise WeightsError(f"{archive}: manifest.json must describe exactly one image")
    order = manifest[0]["Layers"]
    if not isinstance(order, list) or not all(isinstance(name, str) for name in order):
        raise WeightsError(f"{archive}: manifest.json's Layers must be a list of layer file names, found "
                           f"{order!r:.200}")
    return [image_path(name) for name in order], layers


def compose_layers(order: list, layers: dict, archive: Path) -> dict:
    """Image path → staged file of the image's final file system (later layers win, whiteouts delete)."""
    visible: dict = {}

    def delete_below(path: str, keep_self: bool) -> None:
        for key in [k for k in visible if k.startswith(path + "/") or (not keep_self and k == path)]:
            del visible[key]

    for name in order:
        if name not in layers:
            raise WeightsError(f"{archive}: manifest lists layer {name!r}, which the archive does not hold")
        record = layers[name]
        for folder in record.opaque_dirs:
            delete_below(folder, keep_self=True)
        for path in record.whiteouts:
            delete_below(path, keep_self=False)
        visible.update(record.files)
    return visible


def _pick_one(options: list[str], is_preferred: Callable[[str], bool], what: str, archive: Path) -> str:
    """The only option, or the only preferred one when there are several."""
    preferred = [p for p in options if is_preferred(p)]
    if len(options) == 1 or len(preferred) == 1:
        return (preferred or options)[0]
    found = ", ".join(sorted(options)) or "none"
    raise WeightsError(f"{archive}: expected one {what} in the image, found: {found}")


def arrange_official_folder(visible: dict, destination: Path, archive: Path) -> None:
    """Move the image's release files into `destination` in the official checkpoint-folder layout."""
    stage_paths = [p for p in visible if is_stage_file(posixpath.basename(p))]
    homes = sorted({posixpath.dirname(p) for p in stage_paths})
    if not homes:
        raise WeightsError(f"{archive}: no stage checkpoint (crop_size_..._spacing_..._step_N.pth) in the image")
    home = _pick_one(homes, lambda folder: folder == PREFERRED_HOME, "checkpoint folder", archive)

    def in_home(path: str) -> bool:
        return posixpath.dirname(path) == home

    text_path = _pick_one([p for p in visible if posixpath.basename(p) == TEXT_ENCODER_FILE], in_home,
                          TEXT_ENCODER_FILE, archive)
    tower_dirs = sorted({posixpath.dirname(p) for p in visible
                         if posixpath.basename(posixpath.dirname(p)).startswith(TOWER_FOLDER_PREFIX)})
    tower_dir = _pick_one(tower_dirs, in_home, f"{TOWER_FOLDER_PREFIX}* text tower folder", archive)

    moves = {p: destination / posixpath.basename(p) for p in stage_paths if posixpath.dirname(p) == home}
    moves[text_path] = destination / TEXT_ENCODER_FILE
    tower_target = destination / posixpath.basename(tower_dir)
    moves.update({p: tower_target / posixpath.basename(p) for p in visible if posixpath.dirname(p) == tower_dir})
    tower_target.mkdir(parents=True, exist_ok=True)
    for path, target in moves.items():
        Path(visible[path]).replace(target)


def extract_official_files(archive, destination, log: Callable[[str], None] = lambda message: None) -> Path:
    """Stream the release files out of a `docker save` archive into `destination` (an empty or new folder),
    laid out as an official checkpoint folder; returns `destination`. Nothing is written outside it."""
    archive, destination = Path(archive), Path(destination)
    if not archive.is_file():
        raise WeightsError(f"{archive}: file not found")
    destination.mkdir(parents=True, exist_ok=True)
    staging = destination / STAGING_DIR
    try:
        order, layers = _scan_archive(archive, staging, log)
        arrange_official_folder(compose_layers(order, layers, archive), destination, archive)
    except (tarfile.TarError, EOFError, zlib.error, OSError, json.JSONDecodeError) as error:
        raise WeightsError(f"{archive}: cannot be read, the archive is truncated or corrupt ({error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination
