"""Red-team checks of `medals weights import` on hostile `docker save` archives, made here and bounded.

Sizes are declared in tar headers rather than written out: a member that claims 2 GiB is refused from its header
before a byte of it is read, which is the point (the archive itself stays a few kB).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import tarfile

import pytest

from medals.errors import WeightsError
from medals.weights.docker import extract_official_files

LAYER = "0" * 64 + "/layer.tar"


def member(name: str, content: bytes, declared: int | None = None) -> bytes:
    """One tar member (header + content padded to 512 bytes); `declared` overrides the size in its header."""
    info = tarfile.TarInfo(name)
    info.size = len(content) if declared is None else declared
    padding = (-len(content)) % 512
    return info.tobuf(format=tarfile.GNU_FORMAT) + content + bytes(padding)


def archive(path, *members: bytes, end: bool = True) -> str:
    """A gzip'd tar of the given members (ended by two zero blocks unless `end` is false: a cut-off archive)."""
    path.write_bytes(gzip.compress(b"".join(members) + (bytes(1024) if end else b""), 1))
    return path


def refused(path, destination, message: str) -> None:
    """The import of `path` fails with `message` and leaves the archive as it was."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(WeightsError, match=message):
        extract_official_files(path, destination)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def layer_with(name: str, content: bytes = b"x", declared: int | None = None) -> bytes:
    return member(LAYER, member(name, content, declared) + bytes(1024))


def manifest(layers) -> bytes:
    return member("manifest.json", json.dumps([{"Config": "config.json", "Layers": layers}]).encode())


@pytest.mark.parametrize("layers", [[1, 2], [None], "0/layer.tar", [["nested"]]])
def test_a_manifest_whose_layers_are_not_names_is_refused_in_one_line(tmp_path, layers):
    """Once: `Layers: [1, 2]` or `[null]` ended in a traceback (AttributeError in the path normalisation)."""
    path = archive(tmp_path / "image.tar.gz", layer_with("etc/hostname"), manifest(layers))
    refused(path, tmp_path / "out", "Layers must be a list of layer file names")


def test_a_huge_manifest_is_refused_from_its_header(tmp_path):
    """Once: a 1 GiB whitespace manifest.json (1 MB compressed) was read whole: 2.5 GB."""
    path = archive(tmp_path / "image.tar.gz", member("manifest.json", b" " * 4096, declared=1 << 30), end=False)
    refused(path, tmp_path / "out", "manifest.json holds 1073741824 bytes, over the")


@pytest.mark.parametrize("name", ["workspace/checkpoints/text_encoder.pth",
                                  "workspace/checkpoints/BioLORD-2023-C/tokenizer.json"])
def test_a_release_file_over_its_size_cap_is_not_staged(tmp_path, name):
    """Once: a 2 GiB member was copied into the staging folder with no cap."""
    path = archive(tmp_path / "image.tar.gz", layer_with(name, b"\0" * 4096, declared=2 << 30), manifest([LAYER]),
                   end=False)
    destination = tmp_path / "out"
    refused(path, destination, "holds 2147483648 bytes, over the")
    assert not any(path.is_file() for path in destination.rglob("*")), "a capped member was staged anyway"
