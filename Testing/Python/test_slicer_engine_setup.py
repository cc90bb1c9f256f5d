"""Installing the engine into Slicer's own Python (`SlicerPythonSetup`), with stand-ins for what exists only inside
Slicer, each modelled on its source:

- `slicer.util.pip_install` (Slicer v5.10.0, Base/Python/slicer/util.py): a string is split shell-style
  (`shlex.split`), a list is passed on as it is, anything else is a ValueError; a failing pip raises
  CalledProcessError (`logProcessOutput`). Behind it, a small pip that installs into the test's own folder.
- PyTorch Utils' logic (fepegar/SlicerPyTorch, PyTorchUtils/PyTorchUtils.py): `installTorch(askConfirmation,
  forceComputationBackend, torchVersionRequirement, torchvisionVersionRequirement)` runs light-the-torch, which
  raises CalledProcessError when it fails, and returns the torch module.

Installed packages are looked up only in that folder (`path`), so that the test environment's own torch and
medals stay out of it. A real install, with the real pip and without a package index, from the files the
extension's CMake rules install, is in test_slicer_packaging.py.
"""
import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path, PureWindowsPath
from types import SimpleNamespace

import pytest
from packaging.requirements import Requirement
from slicer_fixtures import MODULE_DIR, REPO_ROOT

from MedalSLib.errors import EngineStartError, ModuleError
from MedalSLib.launcher import ENGINE_FOLDER, SlicerPythonSetup, shipped_engine

SLICER_SHIPS = {"numpy": "2.0.2", "scipy": "1.13.1", "SimpleITK": "2.4.1", "packaging": "25.0"}
"""Part of what Slicer 5.10's Python has before any extension installs anything."""
ENGINE_DEPENDENCIES = ["torch>=2.3", "numpy>=1.26", "SimpleITK>=2.3", "transformers>=4.51", "fastapi>=0.110"]
INDEX = {"transformers": "4.57.1", "fastapi": "0.121.0", "safetensors": "0.6.2", "uvicorn": "0.38.0", "tqdm": "4.67.1",
         "matplotlib": "3.10.7", "numpy": "2.3.4", "SimpleITK": "2.5.2"}
"""What the stand-in pip finds on the Python Package Index (newest versions)."""


def install(site: Path, name: str, version: str, requires=(), source: Path | None = None) -> None:
    """A distribution as pip leaves it: its package folder and its metadata, with where it came from when that
    was a file or a folder (direct_url.json, PEP 610)."""
    (site / name).mkdir(exist_ok=True)
    (site / name / "__init__.py").write_text(f"__version__ = {version!r}\n")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *(f"Requires-Dist: {requirement}" for requirement in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    if source is not None:
        (info / "direct_url.json").write_text(json.dumps({"url": source.resolve().as_uri()}))


def uninstall(site: Path, name: str) -> None:
    for info in site.glob(f"{name}-*.dist-info"):
        for file in info.iterdir():
            file.unlink()
        info.rmdir()


class StandInPip:
    """`slicer.util.pip_install` in front of a pip that installs into `site` (see the module docstring)."""

    def __init__(self, site: Path, fails: bool = False):
        self.site, self.fails = site, fails
        self.calls: list[list[str]] = []
        self.constraints: list[str] = []

    def __call__(self, requirements):
        if type(requirements) == str:  # noqa: E721  (Slicer checks the exact type)
            args = shlex.split(requirements)
        elif type(requirements) == list:  # noqa: E721
            args = list(requirements)
        else:
            raise ValueError("pip_install requirement input must be string or list")
        self.calls.append(args)
        if self.fails:
            raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", *args])
        flags = {arg for arg in args if arg.startswith("--")}
        pins = {}
        if "--constraint" in args:
            self.constraints = Path(args[args.index("--constraint") + 1]).read_text().splitlines()
            pins = dict(line.split("==") for line in self.constraints)
        for arg in (arg for i, arg in enumerate(args) if not arg.startswith("--") and args[i - 1] != "--constraint"):
            self._install_one(arg, flags, pins)

    def _install_one(self, arg: str, flags: set, pins: dict) -> None:
        if Path(arg).is_dir():
            project = tomllib.loads((Path(arg) / "pyproject.toml").read_text())["project"]
            uninstall(self.site, project["name"])
            install(self.site, project["name"], project["version"], project.get("dependencies", []), Path(arg))
        elif arg.endswith(".whl"):
            if not Path(arg).is_file():
                raise subprocess.CalledProcessError(1, ["pip", "install", arg])  # "not a valid wheel filename"
            name, version = PureWindowsPath(arg).name.split("-")[:2]  # the name as pip on Windows reads it
            uninstall(self.site, name)
            install(self.site, name, version, ENGINE_DEPENDENCIES, Path(arg))
        else:
            requirement = Requirement(arg)
            version = INDEX.get(requirement.name)
            if "--no-index" in flags or version is None or requirement.name in pins:
                raise subprocess.CalledProcessError(1, ["pip", "install", arg])  # no such version / conflict
            install(self.site, requirement.name, version)


class StandInTorchUtils:
    """PyTorch Utils' logic: light-the-torch installs the newest torch the requirement allows, or fails."""

    def __init__(self, site: Path, newest: str = "2.9.1", fails: bool = False):
        self.site, self.newest, self.fails = site, newest, fails
        self.calls = []

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                     torchvisionVersionRequirement=None):
        self.calls.append({"askConfirmation": askConfirmation, "torchVersionRequirement": torchVersionRequirement})
        if self.fails or not Requirement("torch" + (torchVersionRequirement or "")).specifier.contains(self.newest):
            raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "light_the_torch", "install", "torch"])
        uninstall(self.site, "torch")
        install(self.site, "torch", self.newest)
        return SimpleNamespace(__version__=self.newest)


@pytest.fixture
def site(tmp_path) -> Path:
    """Slicer's site-packages as Slicer ships it: numpy, scipy, SimpleITK, packaging; no torch, no engine."""
    folder = tmp_path / "site-packages"
    folder.mkdir()
    for name, version in SLICER_SHIPS.items():
        install(folder, name, version)
    return folder


def extension(tmp_path, version: str = "0.2.0", dependencies=ENGINE_DEPENDENCIES) -> Path:
    """An installed extension's module folder with the engine's files beside MedalS.py."""
    module_dir = tmp_path / "MedalS" / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    engine = module_dir / ENGINE_FOLDER
    (engine / "medals").mkdir(parents=True)
    (engine / "MedalS" / "Logic" / "MedalSLib").mkdir(parents=True)
    (engine / "medals" / "__init__.py").write_text("")
    (engine / "MedalS" / "Logic" / "MedalSLib" / "__init__.py").write_text("")
    (engine / "README.md").write_text("MedalS\n")
    (engine / "LICENSE").write_text("Apache License\n")
    dependency_lines = "".join(f'    "{line}",\n' for line in dependencies)
    (engine / "pyproject.toml").write_text(f'[project]\nname = "medals"\nversion = "{version}"\n'
                                           f'dependencies = [\n{dependency_lines}]\n')
    return module_dir


def setup_for(site, module_dir, answer=True, torch_utils=None, pip=None, slicer_version=(5, 10), **kwargs):
    asked = []

    def ask(message):
        asked.append(message)
        return answer

    torch_utils = StandInTorchUtils(site) if torch_utils is None else torch_utils
    pip = StandInPip(site) if pip is None else pip
    setup = SlicerPythonSetup(ask=ask, torch_utils=torch_utils, pip_install=pip, module_dir=module_dir,
                              slicer_version=slicer_version, path=[str(site)], **kwargs)
    return setup, asked, torch_utils, pip


def installed(site: Path) -> dict[str, str]:
    return {info.name.split("-")[0]: info.name.removesuffix(".dist-info").split("-")[1]
            for info in site.glob("*.dist-info") if any(info.iterdir())}


def test_a_slicer_older_than_5_10_is_refused_up_front_with_what_to_install(site, tmp_path):
    setup, asked, torch_utils, pip = setup_for(site, extension(tmp_path), slicer_version=(5, 8))
    with pytest.raises(EngineStartError, match=r"needs 3D Slicer 5\.10 or newer \(Python 3\.12\); this is Slicer 5\.8"
                                               r".*install the current Slicer"):
        setup.ensure_engine()
    assert asked == [] and pip.calls == [] and torch_utils.calls == []


def test_the_engine_is_installed_from_the_shipped_files_without_a_package_index(site, tmp_path):
    setup, asked, _, pip = setup_for(site, extension(tmp_path))
    setup.ensure_engine()
    engine_call = pip.calls[0]
    assert engine_call[1:] == ["--no-index", "--no-deps", "--no-build-isolation"]
    assert installed(site)["medals"] == "0.2.0"
    assert "files that came with this extension" in asked[0]


def test_only_the_missing_dependencies_are_downloaded_and_slicers_own_are_pinned(site, tmp_path):
    setup, asked, _, pip = setup_for(site, extension(tmp_path))
    setup.ensure_engine()
    downloaded = [arg for call in pip.calls[1:] for arg in call if not arg.startswith("--") and "==" not in arg
                  and not arg.endswith(".txt")]
    assert downloaded == ["transformers>=4.51", "fastapi>=0.110"]
    assert "transformers>=4.51, fastapi>=0.110" in asked[0]
    # Whatever pip resolves for them, it may not replace what Slicer ships, nor torch.
    assert {"numpy==2.0.2", "scipy==1.13.1", "SimpleITK==2.4.1", "packaging==25.0", "torch==2.9.1"} <= set(
        pip.constraints)
    assert {name: installed(site)[name] for name in SLICER_SHIPS} == SLICER_SHIPS


def test_an_engine_needing_a_newer_package_than_slicer_ships_is_refused_not_upgraded(site, tmp_path):
    module_dir = extension(tmp_path, dependencies=["numpy>=2.1", "transformers>=4.51"])
    setup, asked, _, pip = setup_for(site, module_dir)
    with pytest.raises(EngineStartError, match=r"needs numpy>=2\.1, but Slicer's Python has numpy 2\.0\.2.*never "
                                               r"replaces what Slicer ships"):
        setup.ensure_engine()
    assert asked == [] and pip.calls == []
    assert installed(site)["numpy"] == "2.0.2"


def test_torch_comes_only_through_pytorch_utils_with_the_engines_own_minimum(site, tmp_path):
    setup, _, torch_utils, pip = setup_for(site, extension(tmp_path))
    setup.ensure_engine()
    assert torch_utils.calls == [{"askConfirmation": False, "torchVersionRequirement": ">=2.3"}]
    assert not any(arg.startswith("torch") and "==" not in arg for call in pip.calls for arg in call)
    assert installed(site)["torch"] == "2.9.1"


def test_the_real_engine_asks_pytorch_utils_for_torch_2_3_as_its_pyproject_says(site):
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch>=2.3" in dependencies
    # The module running from a clone: the repository itself is the engine's source.
    setup, _, torch_utils, _ = setup_for(site, MODULE_DIR)
    setup.ensure_engine()
    assert torch_utils.calls[0]["torchVersionRequirement"] == ">=2.3"
    assert installed(site)["medals"] == tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_an_old_torch_is_updated_through_pytorch_utils(site, tmp_path):
    install(site, "torch", "2.2.2")
    setup, asked, torch_utils, _ = setup_for(site, extension(tmp_path))
    setup.ensure_engine()
    assert "PyTorch (torch>=2.3)" in asked[0]
    assert torch_utils.calls[0]["torchVersionRequirement"] == ">=2.3"
    assert installed(site)["torch"] == "2.9.1"


def test_an_old_torch_already_loaded_in_slicer_asks_for_a_restart(site, tmp_path, monkeypatch):
    install(site, "torch", "2.2.2")
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(__version__="2.2.2"))
    setup, asked, torch_utils, pip = setup_for(site, extension(tmp_path))
    with pytest.raises(EngineStartError, match=r"PyTorch 2\.2\.2 is loaded.*restart Slicer"):
        setup.ensure_engine()
    assert asked == [] and torch_utils.calls == [] and pip.calls == []


def test_a_missing_pytorch_extension_is_reported_with_the_one_action_to_take(site, tmp_path):
    setup, asked, _, pip = setup_for(site, extension(tmp_path))
    setup.torch_utils = None
    with pytest.raises(EngineStartError, match="install 'PyTorch' from the Extensions Manager and restart Slicer"):
        setup.ensure_engine()
    assert asked == [] and pip.calls == []


def test_without_the_pytorch_extension_an_installed_torch_is_enough(site, tmp_path):
    install(site, "torch", "2.5.1")
    setup, _, _, _ = setup_for(site, extension(tmp_path))
    setup.torch_utils = None
    setup.ensure_engine()
    assert installed(site)["medals"] == "0.2.0"


def test_a_failing_pytorch_install_becomes_an_engine_start_error(site, tmp_path):
    setup, _, _, _ = setup_for(site, extension(tmp_path), torch_utils=StandInTorchUtils(site, fails=True))
    with pytest.raises(ModuleError, match=r"PyTorch Utils could not install PyTorch \(the installer exited with "
                                          r"code 1.*install torch>=2\.3 in the PyTorch Utils module"):
        setup.ensure_engine()


def test_pytorch_utils_that_installs_nothing_says_where_to_install_torch(site, tmp_path):
    torch_utils = StandInTorchUtils(site)
    torch_utils.installTorch = lambda **kwargs: None  # PyTorch Utils returns None when its own dialog is declined
    setup, _, _, _ = setup_for(site, extension(tmp_path), torch_utils=torch_utils)
    with pytest.raises(EngineStartError, match=r"did not install torch>=2\.3: install it in the PyTorch Utils module "
                                               r"with the version requirement '>=2\.3'"):
        setup.ensure_engine()


def test_an_engine_that_pip_did_not_make_importable_is_reported(site, tmp_path):
    install(site, "torch", "2.5.1")
    pip = StandInPip(site)
    pip._install_one = lambda arg, flags, pins: None  # pip "succeeds" and installs nothing
    setup, _, _, _ = setup_for(site, extension(tmp_path), pip=pip)
    with pytest.raises(EngineStartError, match="installed but Python cannot find it: restart Slicer"):
        setup.ensure_engine()


def test_a_failing_pip_becomes_an_engine_start_error(site, tmp_path):
    install(site, "torch", "2.5.1")
    setup, _, _, _ = setup_for(site, extension(tmp_path), pip=StandInPip(site, fails=True))
    with pytest.raises(ModuleError, match=r"installing the MedalS engine from .* failed \(the installer exited with "
                                          r"code 1; its output is in the Python console\): reinstall"):
        setup.ensure_engine()


def test_a_failing_download_of_dependencies_says_to_check_the_connection(site, tmp_path):
    install(site, "torch", "2.5.1")
    module_dir = extension(tmp_path, dependencies=["torch>=2.3", "not-on-the-index>=1"])
    setup, _, _, _ = setup_for(site, module_dir)
    with pytest.raises(EngineStartError, match=r"installing the engine's dependencies \(not-on-the-index\) failed.*"
                                               r"check the internet connection"):
        setup.ensure_engine()


def test_pip_is_given_a_list_so_a_windows_wheel_path_keeps_its_backslashes(site, tmp_path):
    install(site, "torch", "2.5.1")
    wheel = tmp_path / "C:\\Users\\me\\Downloads\\medals-0.3.0-py3-none-any.whl"  # one file name, backslashes in it
    wheel.write_bytes(b"PK")
    setup, asked, _, pip = setup_for(site, tmp_path / "no-extension", engine_package=str(wheel))
    setup.ensure_engine()
    assert pip.calls[0] == [str(wheel), "--no-deps"]
    assert installed(site)["medals"] == "0.3.0"
    assert str(wheel) in asked[0]


def test_an_engine_package_is_installed_once_and_a_different_one_replaces_it(site, tmp_path):
    install(site, "torch", "2.5.1")
    first, second = tmp_path / "medals-0.3.0-py3-none-any.whl", tmp_path / "medals-0.3.1-py3-none-any.whl"
    for wheel in (first, second):
        wheel.write_bytes(b"PK")
    setup, asked, _, pip = setup_for(site, tmp_path / "no-extension", engine_package=str(first))
    setup.ensure_engine()
    setup.ensure_engine()
    assert [call[0] for call in pip.calls if call[0].endswith(".whl")] == [str(first)]
    setup.engine_package = str(second)
    setup.ensure_engine()
    assert "replacing version 0.3.0" in asked[-1]
    assert installed(site)["medals"] == "0.3.1"


def test_nothing_is_asked_or_installed_when_everything_is_in_place(site, tmp_path):
    install(site, "torch", "2.5.1")
    for name in ("transformers", "fastapi"):
        install(site, name, INDEX[name])
    # Requirements of an optional extra, or for another platform, are not the engine's to install.
    install(site, "medals", "0.2.0", [*ENGINE_DEPENDENCIES, 'nilearn>=0.10; extra == "demo"',
                                      f'pywin32>=300; sys_platform != "{sys.platform}"'])
    setup, asked, torch_utils, pip = setup_for(site, extension(tmp_path))
    setup.ensure_engine()
    assert asked == [] and pip.calls == [] and torch_utils.calls == []


def test_an_older_installed_engine_is_replaced_by_the_shipped_one(site, tmp_path):
    install(site, "torch", "2.5.1")
    install(site, "medals", "0.1.0", ["torch>=2.2"])
    setup, asked, _, pip = setup_for(site, extension(tmp_path, version="0.2.0"))
    setup.ensure_engine()
    assert "replacing version 0.1.0" in asked[0]
    assert installed(site)["medals"] == "0.2.0"


def test_declining_installs_nothing(site, tmp_path):
    setup, asked, torch_utils, pip = setup_for(site, extension(tmp_path), answer=False)
    with pytest.raises(EngineStartError, match="declined"):
        setup.ensure_engine()
    assert len(asked) == 1 and pip.calls == [] and torch_utils.calls == []
    assert "medals" not in installed(site)


def test_missing_engine_files_say_to_reinstall_the_extension(site, tmp_path):
    setup, asked, _, _ = setup_for(site, tmp_path / "qt-scripted-modules")
    with pytest.raises(EngineStartError, match=f"no {ENGINE_FOLDER} folder in .*reinstall the MedalS extension"):
        setup.ensure_engine()
    assert asked == []


def test_incomplete_engine_files_say_to_reinstall_the_extension(site, tmp_path):
    module_dir = extension(tmp_path)
    (module_dir / ENGINE_FOLDER / "README.md").unlink()
    with pytest.raises(EngineStartError, match=r"incomplete \(missing: README\.md\): reinstall"):
        shipped_engine(module_dir)


def test_a_module_loaded_from_a_clone_uses_the_repository_as_the_engine():
    assert shipped_engine(MODULE_DIR) == REPO_ROOT
