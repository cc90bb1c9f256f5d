"""Shared by the weights tests: small official-layout release folders and `docker save`-style archives.

The official layout is reproduced with a narrow network plan (so files are small and checks fast): stage
checkpoints as the trainer writes them (`{'model_state_dict': {'module.' + key: ...}, 'step', ...}` with the
deep-supervision heads), `text_encoder.pth` with the parity text weights, and the parity tiny MPNet folder as
`BioLORD-2023-C/`. The text weights are 768 wide, so the plan's query width is 768 too.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import torch

from medals.config import NetConfig
from medals.modeling import MedalSNet

SMALL_PLAN = NetConfig(features=(8, 8, 16, 16, 32, 32), query_dim=768, heads=8, ffn_dim=64, decoder_layers=1,
                       mask_hidden=32)
COARSE_NAME = "nano_UNet_CVPR2025_crop_size_32_32_64_spacing_1.5_1.5_3.0_step_358600.pth"
FINE_NAME = "nano_UNet_CVPR2025_crop_size_32_32_32_spacing_1.0_1.0_1.0_step_341300.pth"
STAGE_CROPS = {COARSE_NAME: (32, 32, 64), FINE_NAME: (32, 32, 32)}


def training_state(crop_size, seed: int) -> dict[str, torch.Tensor]:
    """A stage's state dict as the official trainer saves it: deep-supervision layout, DDP `module.` keys."""
    torch.manual_seed(seed)
    net = MedalSNet(dataclasses.replace(SMALL_PLAN, crop_size=tuple(crop_size), deep_supervision=True))
    return {f"module.{k}": v for k, v in net.state_dict().items()}


def save_checkpoint(path: Path, state: dict, **extra) -> Path:
    torch.save({"model_state_dict": state, **extra}, path)
    return path


def write_official_folder(folder: Path, parity: Path, text_state: dict) -> Path:
    """An official checkpoint folder: two stage checkpoints, text_encoder.pth, BioLORD-2023-C/."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (name, crop) in enumerate(STAGE_CROPS.items()):
        save_checkpoint(folder / name, training_state(crop, seed), step=seed, optimizer_state_dict={})
    text = {f"module.{k}": v for k, v in text_state.items()}
    text["module.atlas_tower.weight"] = torch.zeros(3)  # a SAT artefact the official load ignores
    save_checkpoint(folder / "text_encoder.pth", text)
    shutil.copytree(parity / "tiny_mpnet", folder / "BioLORD-2023-C")
    return folder


def layer_tar(files: dict[str, bytes], compress: bool = False) -> bytes:
    """A layer tar (optionally gzip'd) holding `files` (member name → content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as layer:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            layer.addfile(info, io.BytesIO(content))
    data = buffer.getvalue()
    return gzip.compress(data, compresslevel=1) if compress else data


def write_docker_archive(path: Path, layers: list[dict[str, bytes]], oci: bool = False) -> Path:
    """A gzip'd `docker save` archive: config blob, the layers, and manifest.json written last (as docker does).

    Classic layout stores layers as `<id>/layer.tar`; the OCI layout as gzip'd `blobs/sha256/<digest>`.
    """
    members = {"config.json" if not oci else "blobs/sha256/c0nf1g": b'{"architecture": "amd64"}'}
    layer_names = []
    for number, files in enumerate(layers):
        name = f"blobs/sha256/{number:064x}" if oci else f"{number:064x}/layer.tar"
        members[name] = layer_tar(files, compress=oci)
        layer_names.append(name)
    members["manifest.json"] = json.dumps(
        [{"Config": next(iter(members)), "RepoTags": ["teamx:latest"], "Layers": layer_names}]).encode()
    with tarfile.open(path, mode="w:gz", compresslevel=1) as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return path


def folder_files(folder: Path, prefix: str) -> dict[str, bytes]:
    """Every file below `folder` as `prefix/<relative path>` → bytes (the content of a layer)."""
    return {f"{prefix}/{p.relative_to(folder).as_posix()}": p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}
