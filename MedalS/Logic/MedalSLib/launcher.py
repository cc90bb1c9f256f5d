"""The local engine: `medals serve` in its own process on a free loopback port, started and stopped here.

The engine runs in a separate process so that a crash or an out-of-memory there never takes Slicer down,
and the model stays loaded between requests. Its Python is either Slicer's own (after `SlicerPythonSetup`
installed the engine that ships with the extension, and what it needs, with the user's consent) or any existing
environment that has `medals` installed. A random token, passed in the environment rather than on the command
line (where other users could read it), keeps other local users from the engine.
"""
from __future__ import annotations

import atexit
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from .errors import EngineStartError

READY_MARKER = "MEDALS_SERVER_READY"
"""The engine prints `MEDALS_SERVER_READY <url>` on stdout once it accepts requests."""
TOKEN_VARIABLE = "MEDALS_SERVER_TOKEN"
ENGINE_MODULE = "medals"
ENGINE_DISTRIBUTION = "medals"
ENGINE_FOLDER = "MedalSEngine"
"""Where the extension installs the engine's source, beside MedalS.py (see the top-level CMakeLists.txt)."""
ENGINE_FILES = ("pyproject.toml", "README.md", "LICENSE", "medals", "MedalS/Logic/MedalSLib")
"""The engine's source as pip builds it (the package with its data and demo model, and the client package)."""
MINIMUM_SLICER = (5, 10)
"""Slicer 5.10 is the first with Python 3.12 (5.6 and 5.8 ship 3.9, older than the engine's 3.10), and the
Extensions Index's 5.6 and 5.8 branches take no new extensions."""
SLICER_PACKAGES = ("numpy", "scipy", "SimpleITK", "vtk", "packaging", "pyparsing", "six", "pillow", "pydicom",
                   "requests", "urllib3", "certifi", "idna", "charset-normalizer", "pip", "setuptools", "wheel")
"""What Slicer's Python ships (Slicer 5.10: SuperBuild/External_python-*.cmake, External_SimpleITK.cmake, VTK):
the engine's set-up never installs or replaces them."""
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


PRECISIONS = ("fp32", "bf16")
"""The engine's `--precision` choices besides its default (`medals serve --help`)."""


def device_choice(text: str) -> tuple[str | None, str | None]:
    """(device, precision) from the panel's device field: "auto", "cuda", "cuda:1", "cpu", "cpu bf16" (bfloat16 on
    the CPU: about 2× faster at a small accuracy cost; see the README's "Faster on the CPU"). None: the engine's
    default."""
    words = text.split()
    precision = words.pop() if words and words[-1] in PRECISIONS else None
    device = " ".join(words)
    return (None if device in ("", "auto") else device), precision


def engine_command(python: str, device: str | None = None, model: str | None = None,
                   precision: str | None = None) -> list[str]:
    """The command that serves the engine from `python` on a free loopback port, until its stdin closes."""
    command = [python, "-m", "medals.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--exit-with-parent"]
    if device:
        command += ["--device", device]
    if precision:
        command += ["--precision", precision]
    if model:
        command += ["--model", model]
    return command


def engine_importable(module: str = ENGINE_MODULE) -> bool:
    """Whether this Python finds the engine package (found, not imported: importing would load torch)."""
    importlib.invalidate_caches()
    return importlib.util.find_spec(module) is not None


def engine_version(python: str, env: dict | None = None, timeout_s: float = 120.0) -> str:
    """The `medals` version that `python` imports; EngineStartError with the interpreter's own words otherwise."""
    try:
        completed = subprocess.run([python, "-c", "import medals; print(medals.__version__)"], env=env,
                                   capture_output=True, text=True, encoding="utf-8", errors="replace",
                                   timeout=timeout_s, **_no_console_window())
    except FileNotFoundError:
        raise EngineStartError(f"no Python interpreter at {python}") from None
    except (PermissionError, OSError) as error:
        raise EngineStartError(f"cannot run {python}: {error}") from None
    except subprocess.TimeoutExpired:
        raise EngineStartError(f"{python} took over {timeout_s:g} s to import medals") from None
    if completed.returncode != 0:
        lines = (completed.stderr or completed.stdout).strip().splitlines()
        raise EngineStartError(f"{python} cannot import the MedalS engine: {lines[-1] if lines else 'no message'}")
    return completed.stdout.strip()


class LocalEngine:
    """One engine process: `start()` runs `command` and returns its URL, `stop()` ends it.

    The process's output is read on a thread all along (a full pipe would block it) and its last lines
    are kept for error messages. The process is stopped when Python exits if nobody stopped it before
    (Slicer's widget also stops it when the application quits). Its stdin is a pipe that this process holds
    open and never writes: if Slicer dies without stopping it, the system closes the pipe, and an engine
    started with `--exit-with-parent` (see `engine_command`) shuts itself down.
    """

    def __init__(self, command: list[str], env: dict | None = None, startup_timeout_s: float = 600.0,
                 output_lines: int = 200):
        self.command = list(command)
        self.env = dict(os.environ if env is None else env)
        self.startup_timeout_s = startup_timeout_s
        self.token = secrets.token_urlsafe(32)
        self.url: str | None = None
        self._lines: deque[str] = deque(maxlen=output_lines)
        self._ready = threading.Event()
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        atexit.register(self.stop)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def output(self, lines: int = 20) -> str:
        """The engine's last `lines` lines of output (stdout and stderr together)."""
        return "\n".join(list(self._lines)[-lines:])

    def start(self, cancel: threading.Event | None = None) -> str:
        """Start the engine and wait for its ready line; returns its URL (http://127.0.0.1:PORT).

        Blocks up to `startup_timeout_s` (the model loads first): call it off the GUI thread. Setting
        `cancel`, or `stop()` from another thread, ends the wait at once and leaves no process behind.
        """
        if self.running:
            raise EngineStartError(f"the local engine is already running at {self.url}")
        self.url = None
        self._ready.clear()
        self._lines.clear()
        try:
            self._process = subprocess.Popen(self.command, env={**self.env, TOKEN_VARIABLE: self.token},
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
                                             bufsize=1,
                                             **_no_console_window(), **_own_session())
        except OSError as error:
            raise EngineStartError(f"cannot run {self.command[0]}: {error.strerror or error}") from None
        self._reader = threading.Thread(target=self._read, args=(self._process,), name="medals-engine-output",
                                        daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._ready.wait(0.1):
            if cancel is not None and cancel.is_set():
                self.stop()
                raise EngineStartError("starting the local engine was cancelled")
            if self._process.poll() is not None:
                self._reader.join(2.0)
                self._process.stdin.close()
                last = self.output(5) or "no output"
                raise EngineStartError(f"the local engine stopped (exit code {self._process.returncode}) before it "
                                       f"was ready: {last}")
            if time.monotonic() > deadline:
                self.stop()
                raise EngineStartError(f"the local engine was not ready within {self.startup_timeout_s:g} s; its last "
                                       f"output: {self.output(5) or 'none'}")
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the engine: ask politely (terminate), then kill it if it is still there after `timeout_s`."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if self._reader is not None:
                self._reader.join(2.0)
        process.stdin.close()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            line = line.rstrip("\r\n")
            self._lines.append(line)
            if not self._ready.is_set() and line.startswith(READY_MARKER + " "):
                url = line.split(" ", 1)[1].strip()
                if urlsplit(url).hostname not in LOOPBACK_HOSTS:
                    self._lines.append(f"(ignored a ready line for {url}: the local engine must listen on loopback)")
                    continue
                self.url = url
                self._ready.set()
        process.stdout.close()


def check_slicer_version(version: tuple[int, int]) -> None:
    """EngineStartError unless this Slicer is new enough for the module and its engine (see MINIMUM_SLICER)."""
    if tuple(version[:2]) < MINIMUM_SLICER:
        raise EngineStartError(
            f"MedalS needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or newer (Python 3.12); this is Slicer "
            f"{version[0]}.{version[1]} with Python {sys.version_info[0]}.{sys.version_info[1]}: install the current "
            "Slicer from https://download.slicer.org")


def read_project(folder: Path) -> dict:
    """The `[project]` table of the pyproject.toml in `folder` (name, version, dependencies); {} without one."""
    import tomllib  # Python 3.11+: imported here so that an older Slicer still gets check_slicer_version's message

    try:
        return tomllib.loads((Path(folder) / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def shipped_engine(module_dir: Path) -> Path:
    """The engine's source that came with the module: ENGINE_FOLDER beside MedalS.py in an installed extension,
    the repository itself when Slicer loads the module from a clone."""
    for folder in (Path(module_dir) / ENGINE_FOLDER, Path(module_dir).parent):
        if read_project(folder).get("name") == ENGINE_DISTRIBUTION:
            missing = [name for name in ENGINE_FILES if not (folder / name).exists()]
            if missing:
                raise EngineStartError(f"the MedalS engine's files in {folder} are incomplete (missing: "
                                       f"{', '.join(missing)}): reinstall the MedalS extension")
            return folder
    raise EngineStartError(f"the MedalS engine's files are missing (no {ENGINE_FOLDER} folder in {module_dir}): "
                           "reinstall the MedalS extension")


def installed_distribution(name: str, path: list[str] | None = None):
    """The metadata of distribution `name` installed on `path` (sys.path when None), or None; read without
    importing the package (an imported package could not be replaced without restarting Slicer)."""
    importlib.invalidate_caches()
    found = importlib.metadata.distributions(name=name, **({} if path is None else {"path": path}))
    return next(iter(found), None)


def installed_version(name: str, path: list[str] | None = None) -> str | None:
    distribution = installed_distribution(name, path)
    return None if distribution is None else distribution.version


def installed_requirements(name: str, path: list[str] | None = None) -> list[str]:
    """The requirements that installed distribution `name` declares (its Requires-Dist lines)."""
    distribution = installed_distribution(name, path)
    return [] if distribution is None else distribution.requires or []


def satisfied(requirement, path: list[str] | None = None) -> bool:
    """Whether `requirement` (a packaging Requirement) is met by what is installed on `path`."""
    version = installed_version(requirement.name, path)
    return version is not None and requirement.specifier.contains(version, prereleases=True)


def install_from_source(source: Path, pip_install: Callable[[list[str]], None]) -> None:
    """Install the engine from its source folder (ENGINE_FILES in `source`) with `pip_install`, without a package
    index and without its dependencies. From a copy, because pip builds in the folder it is given (the extension's
    folder may be read-only); without build isolation, because Slicer's Python has the build backend
    (setuptools) and isolation would download it."""
    with tempfile.TemporaryDirectory(prefix="medals-engine-") as folder:
        copy = Path(folder) / "medals"
        for name in ENGINE_FILES:
            if (source / name).is_dir():
                shutil.copytree(source / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source / name, copy / name)
        pip_install([str(copy), "--no-index", "--no-deps", "--no-build-isolation"])


@dataclass
class SlicerPythonSetup:
    """Installs the engine into Slicer's own Python, with the user's consent, from the files shipped with the module.

    What only Slicer has is passed in: `ask(message) -> bool` (a confirmation dialog), `torch_utils` (PyTorch
    Utils' logic, None when the PyTorch extension is missing) and `pip_install(arguments)` (slicer.util.pip_install,
    always given a list: it splits a string shell-style, which drops a Windows path's backslashes). The engine
    itself is installed without a package index; torch only through PyTorch Utils, which picks the build that
    fits this computer's GPU driver; the engine's other dependencies that Slicer's Python lacks (transformers,
    fastapi, ...) with pip from PyPI, pinned so that nothing Slicer ships (SLICER_PACKAGES) or torch is replaced.
    """

    ask: Callable[[str], bool]
    torch_utils: object | None
    pip_install: Callable[[list[str]], None]
    module_dir: Path
    """The folder of MedalS.py, beside which the extension installs the engine (see `shipped_engine`)."""
    slicer_version: tuple[int, int]
    engine_package: str = ""
    """Installed instead of the shipped engine when set: a wheel, a source folder or a requirement."""
    path: list[str] | None = None
    """Where installed packages are looked up: sys.path when None (Slicer's Python)."""

    def ensure_engine(self) -> None:
        """Nothing when the engine and all it needs are installed; otherwise ask once, then install the engine
        and whatever of its dependencies is missing, and check the result."""
        check_slicer_version(self.slicer_version)
        shipped = {} if self.engine_package else read_project(shipped_engine(self.module_dir))
        installed = installed_version(ENGINE_DISTRIBUTION, self.path)
        engine_needed = installed is None or (installed != shipped["version"] if shipped
                                              else not self._installed_from_engine_package())
        # What the engine about to be installed declares (unknown for an engine package until it is installed).
        requirements = (shipped.get("dependencies", []) if engine_needed
                        else installed_requirements(ENGINE_DISTRIBUTION, self.path))
        torch, missing = self._missing(requirements)
        if not (engine_needed or torch or missing):
            return
        if not self.ask(self._consent_message(engine_needed, installed, torch, missing)):
            raise EngineStartError("the local engine was not installed: installation was declined")
        if engine_needed:
            self._install_engine()
        torch, missing = self._missing(installed_requirements(ENGINE_DISTRIBUTION, self.path))
        if torch is not None:
            self._install_torch(torch)
        if missing:
            self._install_dependencies(missing)
        self._check_installed()

    def _installed_from_engine_package(self) -> bool:
        """Whether the installed engine is the one `engine_package` names: installed from that file or folder
        (pip records where from, in direct_url.json), or of a version that meets that requirement."""
        from packaging.requirements import InvalidRequirement, Requirement

        if os.path.exists(self.engine_package):
            record = installed_distribution(ENGINE_DISTRIBUTION, self.path).read_text("direct_url.json")
            return json.loads(record or "{}").get("url") == Path(self.engine_package).resolve().as_uri()
        try:
            return satisfied(Requirement(self.engine_package), self.path)
        except InvalidRequirement:
            return False

    def _missing(self, requirements: list[str]) -> tuple[object | None, list]:
        """torch's requirement if unmet, and the other unmet requirements; EngineStartError when one of them can
        only be met by replacing what Slicer ships or by the PyTorch extension that is missing."""
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name

        slicer_packages = {canonicalize_name(name) for name in SLICER_PACKAGES}
        torch, missing = None, []
        for requirement in map(Requirement, requirements):
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue  # for another platform, or an optional extra
            if satisfied(requirement, self.path):
                continue
            name = canonicalize_name(requirement.name)
            if name == "torch":
                torch = requirement
            elif name in slicer_packages:
                have = installed_version(requirement.name, self.path)
                raise EngineStartError(
                    f"the engine needs {requirement}, but Slicer's Python has "
                    f"{f'{requirement.name} {have}' if have else f'no {requirement.name}'}, and MedalS never replaces "
                    "what Slicer ships: install the current Slicer from https://download.slicer.org")
            else:
                missing.append(requirement)
        if torch is not None:
            self._check_torch_installable(torch)
        return torch, missing

    def _check_torch_installable(self, requirement) -> None:
        if self.torch_utils is None:
            raise EngineStartError(f"the local engine needs PyTorch ({requirement}), which the PyTorch extension "
                                   "installs, and that extension is missing: install 'PyTorch' from the Extensions "
                                   "Manager and restart Slicer")
        loaded = sys.modules.get("torch")
        if loaded is not None and not requirement.specifier.contains(getattr(loaded, "__version__", "0"),
                                                                     prereleases=True):
            raise EngineStartError(f"PyTorch {loaded.__version__} is loaded in Slicer and is older than the engine "
                                   f"needs ({requirement}); it cannot be replaced while loaded: restart Slicer and "
                                   "start the engine before anything else uses PyTorch")

    def _consent_message(self, engine_needed: bool, installed: str | None, torch, missing: list) -> str:
        parts = []
        if engine_needed:
            source = self.engine_package or "the files that came with this extension"
            parts.append(f"the MedalS engine ({'replacing version ' + installed + ', ' if installed else ''}from "
                         f"{source})")
        if torch is not None:
            parts.append(f"PyTorch ({torch}) through PyTorch Utils, which picks the build for this computer's GPU "
                         "(a download of up to a few GB)")
        if missing:
            parts.append("the engine's other dependencies from the Python Package Index ("
                         + ", ".join(map(str, missing)) + ")")
        elif engine_needed and self.engine_package:  # its requirements are known once it is installed
            parts.append("what it needs that Slicer's Python lacks (from the Python Package Index)")
        return ("MedalS runs its engine in Slicer's own Python. This installs " + "; ".join(parts)
                + ". Nothing that Slicer ships is replaced. Continue?")

    def _install_engine(self) -> None:
        if self.engine_package:
            with _installing(f"the engine package {self.engine_package}",
                             "check the Engine package setting and try again"):
                self.pip_install([self.engine_package, "--no-deps"])
            return
        source = shipped_engine(self.module_dir)
        with _installing(f"the MedalS engine from {source}", "reinstall the MedalS extension and try again"):
            install_from_source(source, self.pip_install)

    def _install_torch(self, requirement) -> None:
        try:
            torch = self.torch_utils.installTorch(askConfirmation=False,
                                                  torchVersionRequirement=str(requirement.specifier))
        except Exception as error:  # PyTorch Utils raises whatever its installer or pip raised
            raise EngineStartError(f"PyTorch Utils could not install PyTorch ({_failure(error)}): install "
                                   f"{requirement} in the PyTorch Utils module, which shows the details, and try "
                                   "again") from None
        if torch is None or not satisfied(requirement, self.path):
            raise EngineStartError(f"PyTorch Utils did not install {requirement}: install it in the PyTorch Utils "
                                   f"module with the version requirement '{requirement.specifier}' and try again")

    def _install_dependencies(self, missing: list) -> None:
        names = ", ".join(requirement.name for requirement in missing)
        with tempfile.TemporaryDirectory(prefix="medals-constraints-") as folder:
            constraints = Path(folder) / "slicer-packages.txt"
            constraints.write_text("".join(f"{name}=={version}\n" for name in (*SLICER_PACKAGES, "torch")
                                           if (version := installed_version(name, self.path))))
            with _installing(f"the engine's dependencies ({names})", "check the internet connection (pip "
                             "downloads them from the Python Package Index) and try again"):
                self.pip_install([*map(str, missing), "--constraint", str(constraints)])

    def _check_installed(self) -> None:
        if (installed_version(ENGINE_DISTRIBUTION, self.path) is None
                or importlib.machinery.PathFinder.find_spec(ENGINE_MODULE, self.path) is None):
            raise EngineStartError("the MedalS engine was installed but Python cannot find it: restart Slicer and "
                                   "try again")
        torch, missing = self._missing(installed_requirements(ENGINE_DISTRIBUTION, self.path))
        unmet = [str(requirement) for requirement in (torch, *missing) if requirement is not None]
        if unmet:
            raise EngineStartError(f"after installation the engine still lacks {', '.join(unmet)}: restart Slicer "
                                   "and try again")


@contextmanager
def _installing(what: str, action: str):
    """Any failure of an installer inside becomes an EngineStartError that says what failed and what to do."""
    try:
        yield
    except Exception as error:  # CalledProcessError from pip, or whatever Slicer's wrapper raises
        raise EngineStartError(f"installing {what} failed ({_failure(error)}): {action}") from None


def _failure(error: BaseException) -> str:
    """A failed installer in a few words: its exit code (its output went to Slicer's Python console)."""
    if isinstance(error, subprocess.CalledProcessError):
        return f"the installer exited with code {error.returncode}; its output is in the Python console"
    return f"{type(error).__name__}: {error}"


def _no_console_window() -> dict:
    """On Windows, keep a console window from popping up for the engine."""
    return {"creationflags": subprocess.CREATE_NO_WINDOW} if sys.platform == "win32" else {}


def _own_session() -> dict:
    """On POSIX, a Ctrl+C in Slicer's terminal stays with Slicer; the engine is stopped by `stop()`."""
    return {} if sys.platform == "win32" else {"start_new_session": True}
