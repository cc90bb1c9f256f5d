"""Extension packaging: the CMake files list exactly the module's files and carry the engine (with the bundled demo
model) beside it; the metadata is complete, agrees with the Extensions Index entry (MedalS.json), the icons and
the licence, and passes the index's own checks.

No Slicer build exists here, so the install rules run for real with cmake against a stand-in for the few entry
points of Slicer's CMake package that the extension uses (`STAND_IN_SLICER`), and the engine is then installed
with the real pip, without a package index, from what those rules installed.
"""
import json
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from slicer_fixtures import MODULE_DIR, REPO_ROOT

from MedalSLib.launcher import (ENGINE_FILES, ENGINE_FOLDER, SlicerPythonSetup, install_from_source,
                                installed_requirements, installed_version, shipped_engine)

REQUIRED_METADATA = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS")
# slicer-extension-catalog-entry-schema-v1.0.1: required and allowed properties.
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_ALLOWED = CATALOG_REQUIRED | {"scm_revision", "scm_type", "build_dependencies", "build_subdirectory",
                                      "enabled", "tier"}


def cmake_sets(path: Path) -> dict[str, list[str]]:
    """`set(NAME values...)` of a CMake file: quoted strings stay whole, other values split on white space."""
    text = re.sub(r"#[^\n\"]*\n", "\n", path.read_text())
    sets = {}
    for name, body in re.findall(r'\bset\(\s*(\w+)((?:\s+(?:"[^"]*"|[^\s)"]+))*)\s*\)', text):
        sets[name] = [quoted or bare for quoted, bare in re.findall(r'"([^"]*)"|(\S+)', body)]
    return sets


def module_list(name: str) -> set[str]:
    sets = cmake_sets(MODULE_DIR / "CMakeLists.txt")
    return {entry.replace("${MODULE_NAME}", sets["MODULE_NAME"][0]) for entry in sets[name]}


def files_under(folder: Path, pattern: str) -> set[str]:
    return {path.relative_to(MODULE_DIR).as_posix() for path in folder.rglob(pattern)
            if path.is_file() and "__pycache__" not in path.parts}


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_module_scripts_are_exactly_the_python_files_of_the_module():
    assert module_list("MODULE_PYTHON_SCRIPTS") == files_under(MODULE_DIR, "*.py")


def test_module_resources_are_exactly_the_files_under_resources():
    assert module_list("MODULE_PYTHON_RESOURCES") == files_under(MODULE_DIR / "Resources", "*")


def test_module_builds_with_slicers_scripted_module_macro_and_its_self_test():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}\s*SCRIPTS \$\{MODULE_PYTHON_SCRIPTS\}"
                     r"\s*RESOURCES \$\{MODULE_PYTHON_RESOURCES\}\s*WITH_GENERIC_TESTS", text)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_extension_metadata_is_complete():
    sets = cmake_sets(REPO_ROOT / "CMakeLists.txt")
    empty = [name for name in REQUIRED_METADATA if not sets.get(name) or not sets[name][0].strip()]
    assert not empty, f"empty extension metadata: {empty}"
    assert sets["EXTENSION_CATEGORY"] == ["Segmentation"]


def test_top_level_cmake_builds_the_module_as_an_extension():
    text = (REPO_ROOT / "CMakeLists.txt").read_text()
    for line in ("find_package(Slicer 5.10 REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(MedalS)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, line


def test_icon_and_screenshot_urls_name_files_in_this_repository():
    sets = cmake_sets(REPO_ROOT / "CMakeLists.txt")
    for url in (sets["EXTENSION_ICONURL"][0], *sets["EXTENSION_SCREENSHOTURLS"]):
        relative = re.sub(r"^https://raw\.githubusercontent\.com/[^/]+/[^/]+/[^/]+/", "", url)
        assert relative != url and (REPO_ROOT / relative).is_file(), url


def test_icons_are_128_pixel_squares():
    assert png_size(REPO_ROOT / "MedalS.png") == (128, 128)
    assert png_size(MODULE_DIR / "Resources" / "Icons" / "MedalS.png") == (128, 128)


def test_index_entry_follows_the_catalog_schema():
    entry = json.loads((REPO_ROOT / "MedalS.json").read_text())
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_ALLOWED
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert 1 <= entry["tier"] <= 5


def test_index_entry_agrees_with_the_cmake_metadata():
    entry = json.loads((REPO_ROOT / "MedalS.json").read_text())
    sets = cmake_sets(REPO_ROOT / "CMakeLists.txt")
    assert entry["category"] == sets["EXTENSION_CATEGORY"][0]
    assert entry["build_dependencies"] == sets["EXTENSION_DEPENDS"][0].split(";")
    repository = entry["scm_url"].removesuffix(".git")
    assert sets["EXTENSION_HOMEPAGE"][0].startswith(repository)
    owner_and_name = repository.removeprefix("https://github.com/")
    assert all(f"githubusercontent.com/{owner_and_name}/" in url
               for url in (sets["EXTENSION_ICONURL"][0], *sets["EXTENSION_SCREENSHOTURLS"]))


def test_licence_is_apache_2():
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


# -- the engine ships with the module -----------------------------------------------------------------------------

DEMO_MODEL = ("medals/models/medals-demo/config.json", "medals/models/medals-demo/coarse.safetensors",
              "medals/models/medals-demo/fine.safetensors", "medals/models/medals-demo/text_encoder.safetensors",
              "medals/models/medals-demo/MODEL_CARD.md")


def engine_files(root: Path) -> set[str]:
    """The files of ENGINE_FILES under `root`, relative to it (compiled caches aside)."""
    files = set()
    for name in ENGINE_FILES:
        path = root / name
        for file in (path.rglob("*") if path.is_dir() else [path]):
            if file.is_file() and "__pycache__" not in file.parts:
                files.add(file.relative_to(root).as_posix())
    return files


def install_rules(text: str) -> list[tuple[str, list[str], str]]:
    """`install(FILES|DIRECTORY sources... DESTINATION dir ...)` of a CMake file: (kind, sources, destination)."""
    return [(kind, sources.split(), destination) for kind, sources, destination in
            re.findall(r"\binstall\(\s*(FILES|DIRECTORY)\s+(.*?)\s+DESTINATION\s+(\S+)", text, re.S)]


def test_engine_install_rules_name_only_what_exists_and_carry_every_engine_file():
    text = (REPO_ROOT / "CMakeLists.txt").read_text()
    assert f"${{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}}/{ENGINE_FOLDER})" in text
    carried = set()
    for kind, sources, _ in install_rules(text):
        for source in sources:
            path = REPO_ROOT / source
            assert (path.is_file() if kind == "FILES" else path.is_dir()), f"install({kind} {source}) does not exist"
            carried |= {file.relative_to(REPO_ROOT).as_posix()
                        for file in (path.rglob("*") if path.is_dir() else [path])
                        if file.is_file() and "__pycache__" not in file.parts}
    assert carried == engine_files(REPO_ROOT)
    assert set(DEMO_MODEL) <= carried


def test_the_engine_files_are_what_the_engine_package_is_built_from():
    """ENGINE_FILES hold pyproject.toml, what it names (readme, package folders) and the package data."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["readme"] in ENGINE_FILES
    for where in pyproject["tool"]["setuptools"]["packages"]["find"]["where"]:
        for include in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
            for package in (REPO_ROOT / where).glob(include):
                if (package / "__init__.py").is_file():
                    relative = package.relative_to(REPO_ROOT).as_posix()
                    assert any(relative == name or relative.startswith(name + "/") for name in ENGINE_FILES), relative


STAND_IN_SLICER = {
    "SlicerConfig.cmake": """
        # Stand-in for Slicer's SlicerConfig.cmake: the variables an extension's CMakeLists.txt reads.
        set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
        set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake)
        set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake)
        set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)
    """,
    "SlicerConfigVersion.cmake": """
        # As Slicer's: compatible with any requested version up to its own.
        set(PACKAGE_VERSION "@VERSION@")
        if(PACKAGE_VERSION VERSION_LESS PACKAGE_FIND_VERSION)
          set(PACKAGE_VERSION_COMPATIBLE FALSE)
        else()
          set(PACKAGE_VERSION_COMPATIBLE TRUE)
        endif()
    """,
    "UseSlicer.cmake": """
        # slicerMacroBuildScriptedModule as Slicer's (CMake/SlicerMacroBuildScriptedModule.cmake with CTK's
        # ctkMacroCompilePythonScript): scripts and resources must exist and are installed with their relative
        # paths in the scripted-modules folder.
        macro(slicerMacroBuildScriptedModule)
          cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
          foreach(file IN LISTS MY_SLICER_SCRIPTS MY_SLICER_RESOURCES)
            if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${file})
              message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file ${file}")
            endif()
            get_filename_component(subdir ${file} DIRECTORY)
            install(FILES ${file} DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${subdir})
          endforeach()
        endmacro()
        function(slicer_add_python_unittest)
        endfunction()
    """,
    "Nothing.cmake": "",
}


def configure(tmp_path: Path, slicer_version: str) -> subprocess.CompletedProcess:
    """cmake configures the extension against a stand-in Slicer of `slicer_version` in tmp_path/build."""
    slicer_dir = tmp_path / "Slicer-build"
    slicer_dir.mkdir()
    for name, text in STAND_IN_SLICER.items():
        (slicer_dir / name).write_text(textwrap.dedent(text).replace("@VERSION@", slicer_version))
    return subprocess.run(["cmake", "-S", str(REPO_ROOT), "-B", str(tmp_path / "build"),
                           f"-DSlicer_DIR={slicer_dir}"], capture_output=True, text=True, encoding="utf-8", timeout=300)


needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed (the static check "
                                 "of the install rules above still runs)")


@pytest.fixture(scope="module")
def installed_extension(tmp_path_factory) -> Path:
    """The extension as its install rules lay it out (what the Extensions Manager unpacks)."""
    tmp_path = tmp_path_factory.mktemp("extension")
    configured = configure(tmp_path, "5.10.0")
    assert configured.returncode == 0, configured.stderr
    prefix = tmp_path / "install"
    subprocess.run(["cmake", "--install", str(tmp_path / "build"), "--prefix", str(prefix)], check=True,
                   capture_output=True, timeout=300)
    return prefix / "lib" / "Slicer-5.10" / "qt-scripted-modules"


def files_of(folder: Path) -> set[str]:
    return {file.relative_to(folder).as_posix() for file in folder.rglob("*") if file.is_file()}


@needs_cmake
def test_cmake_installs_the_module_and_the_engine_with_its_demo_model_beside_it(installed_extension):
    module_files = module_list("MODULE_PYTHON_SCRIPTS") | module_list("MODULE_PYTHON_RESOURCES")
    engine = installed_extension / ENGINE_FOLDER
    assert files_of(installed_extension) == module_files | {f"{ENGINE_FOLDER}/{name}" for name in files_of(engine)}
    assert files_of(engine) == engine_files(REPO_ROOT)
    for name in DEMO_MODEL:
        assert (engine / name).read_bytes() == (REPO_ROOT / name).read_bytes(), name


@needs_cmake
def test_the_installed_module_finds_the_engine_that_came_with_it(installed_extension):
    assert shipped_engine(installed_extension) == installed_extension / ENGINE_FOLDER


@needs_cmake
def test_the_engine_installs_from_the_extension_with_pip_and_no_package_index(installed_extension, tmp_path):
    target = tmp_path / "site-packages"

    def pip_install(arguments: list[str]) -> None:  # slicer.util.pip_install: `python -m pip install`, raising
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), *arguments],
                       check=True, timeout=600, cwd=tmp_path)

    install_from_source(shipped_engine(installed_extension), pip_install)
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert installed_version("medals", [str(target)]) == project["version"]
    assert "torch>=2.3" in installed_requirements("medals", [str(target)])
    for name in DEMO_MODEL:
        assert (target / name).read_bytes() == (REPO_ROOT / name).read_bytes(), name
    assert (target / "MedalSLib" / "client.py").read_bytes() == (MODULE_DIR / "Logic/MedalSLib/client.py").read_bytes()


@needs_cmake
def test_an_extension_update_replaces_the_engine_offline_with_the_real_pip(installed_extension, tmp_path):
    """SlicerPythonSetup end to end with the real pip: Slicer's Python is played by this environment (which has
    torch and every dependency, and medals at the repository's version) with a folder of its own in front, and
    the extension carries a newer engine. Nothing is downloaded: no package index is reachable here."""
    module_dir = tmp_path / "qt-scripted-modules"
    shutil.copytree(installed_extension, module_dir)
    pyproject = module_dir / ENGINE_FOLDER / "pyproject.toml"
    version = tomllib.loads(pyproject.read_text())["project"]["version"]
    pyproject.write_text(pyproject.read_text().replace(f'version = "{version}"', f'version = "{version}.post1"'))
    target = tmp_path / "site-packages"
    asked = []

    def pip_install(arguments: list[str]) -> None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), *arguments],
                       check=True, timeout=600, cwd=tmp_path)

    setup = SlicerPythonSetup(ask=lambda message: asked.append(message) or True, torch_utils=None,
                              pip_install=pip_install, module_dir=module_dir, slicer_version=(5, 10),
                              path=[str(target), *sys.path])
    setup.ensure_engine()
    assert f"replacing version {version}" in asked[0] and "Python Package Index" not in asked[0]
    assert installed_version("medals", [str(target)]) == f"{version}.post1"
    setup.ensure_engine()  # now in place: nothing more is asked
    assert len(asked) == 1


@needs_cmake
def test_cmake_refuses_a_slicer_older_than_5_10(tmp_path):
    configured = configure(tmp_path, "5.8.1")
    assert configured.returncode != 0
    assert re.search(r"compatible\s+with\s+requested\s+version\s+\"5\.10\"", configured.stderr), configured.stderr


# -- the Extensions Index's checks (Slicer/ExtensionsIndex scripts/check_description_files.py, reimplemented) -------

INDEX_CATEGORY = "Segmentation"
"""One of the categories the index accepts (ACCEPTED_EXTENSION_CATEGORIES in its checker)."""
REPOSITORY_SIZE_LIMIT = 100 * 2**20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif")


def test_index_entry_passes_the_index_checks_on_the_description_file():
    path = REPO_ROOT / "MedalS.json"
    raw = path.read_bytes()
    entry = json.loads(raw)
    assert b"\r" not in raw, "the index wants LF line endings only"
    # The file name is the extension's name, which must not start with "Slicer"...
    extension_name = path.stem
    assert not extension_name.lower().startswith("slicer")
    # ... while the repository's name must.
    url = urlsplit(entry["scm_url"].strip().strip("/"))
    assert "://" in entry["scm_url"] and url.scheme in ("git", "https")
    repository = Path(url.path).stem
    assert repository.startswith("Slicer"), repository
    assert repository == "SlicerMedalS"
    assert entry["category"] == INDEX_CATEGORY
    # The schema's types (the required and allowed keys are checked above).
    assert all(isinstance(entry[key], str) for key in ("$schema", "category", "scm_url", "scm_revision",
                                                       "build_subdirectory"))
    assert isinstance(entry["build_dependencies"], list) and all(isinstance(name, str)
                                                                 for name in entry["build_dependencies"])
    assert entry.get("scm_type", "git") in ("git", "local")
    assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5


def test_index_entry_passes_the_index_checks_on_the_repository():
    text = (REPO_ROOT / "CMakeLists.txt").read_text()
    # The CMake project is named as the description file.
    assert re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", text, re.I)[0] == "MedalS"
    # The icon and screenshot URLs, found as the checker finds them (quoted, closing parenthesis right after).
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', text, re.I)
    screenshots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', text, re.I)
    assert icon and screenshots
    for url in (icon[0], *screenshots[0].split()):
        assert url.startswith("http") and url.lower().endswith(IMAGE_SUFFIXES), url
        assert "/SlicerMedalS/" in url, url
    assert (REPO_ROOT / "LICENSE").is_file()
    # The homepage (the pull-request checklist): the extension's name, an image, and the licence's name.
    homepage = cmake_sets(REPO_ROOT / "CMakeLists.txt")["EXTENSION_HOMEPAGE"][0]
    page = (REPO_ROOT / re.sub(r"^https://github\.com/[^/]+/[^/]+/blob/[^/]+/", "", homepage)).read_text(
        encoding="utf-8")
    assert "MedalS" in page and re.search(r"!\[[^\]]*\]\([^)]+\.png\)", page) and "Apache License 2.0" in page
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    size = sum((REPO_ROOT / name).stat().st_size for name in tracked.decode().split("\0")
               if name and (REPO_ROOT / name).is_file())
    assert size < REPOSITORY_SIZE_LIMIT, f"the repository holds {size / 2**20:.1f} MB; the index takes up to 100 MB"
