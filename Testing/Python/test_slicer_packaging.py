"""Extension packaging: the CMake files list exactly the module's files, and the metadata is complete and agrees
with the Extensions Index entry (MedalS.json), the icons and the licence."""
import json
import re
import struct
from pathlib import Path

from slicer_fixtures import MODULE_DIR, REPO_ROOT

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
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(MedalS)",
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
