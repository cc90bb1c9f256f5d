"""The engine's wheel carries the Slicer module's client package (MedalSLib) from the module's own folder, and the
client imports from it, or from an editable install, without Slicer, VTK or torch."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / "MedalS" / "Logic" / "MedalSLib"
SOURCES = ("pyproject.toml", "README.md", "medals", "MedalS/Logic/MedalSLib")
"""What the wheel is built from (copied: an in-tree build leaves build/ and egg-info behind)."""

IMPORT_WITHOUT_SLICER = textwrap.dedent("""
    import sys

    class Refuse:
        # Neither Slicer, nor VTK, nor torch: the client must import with the standard library and numpy alone.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("slicer", "vtk", "vtkmodules", "qt", "torch"):
                raise ImportError(f"{name} must not be imported by the client")

    sys.meta_path.insert(0, Refuse())
    sys.path[:0] = sys.argv[1:]
    import MedalSLib.client
    print(MedalSLib.client.__file__)
""")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO_ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, timeout=300, capture_output=True)
    return next(out.glob("medals-*.whl"))


def import_client(*path: str, cwd: Path) -> str:
    """The file `import MedalSLib.client` loads in a fresh interpreter with `path` first on sys.path."""
    run = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_SLICER, *path], capture_output=True, text=True,
                         encoding="utf-8", timeout=60, cwd=cwd)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_the_wheel_carries_the_slicer_modules_client_package_unchanged(wheel):
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("MedalSLib/client.py") == (PACKAGE_DIR / "client.py").read_bytes()
        assert archive.read("MedalSLib/__init__.py") == (PACKAGE_DIR / "__init__.py").read_bytes()


def test_the_client_imports_from_the_wheel_without_slicer_or_torch(wheel, tmp_path):
    assert import_client(str(wheel), cwd=tmp_path) == str(wheel / "MedalSLib" / "client.py")


def test_the_client_imports_from_the_installed_medals_without_slicer_or_torch(tmp_path):
    assert import_client(cwd=tmp_path) == str(PACKAGE_DIR / "client.py")
