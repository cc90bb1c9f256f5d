"""The local engine: `medals serve` in its own process on a free loopback port, started and stopped here.

The engine runs in a separate process so that a crash or an out-of-memory there never takes Slicer down,
and the model stays loaded between requests. Its Python is either Slicer's own (after PyTorch Utils
installed torch and pip installed the engine, with the user's consent) or any existing environment that
has `medals` installed. A random token, passed in the environment rather than on the command line (where
other users could read it), keeps other local users from the engine.
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from .errors import EngineStartError

READY_MARKER = "MEDALS_SERVER_READY"
"""The engine prints `MEDALS_SERVER_READY <url>` on stdout once it accepts requests."""
TOKEN_VARIABLE = "MEDALS_SERVER_TOKEN"
ENGINE_MODULE = "medals"
ENGINE_REQUIREMENT = "medals"
"""What pip installs into Slicer's Python; a wheel path or a VCS URL works too."""
TORCH_REQUIREMENT = ">=2.2"
"""Passed to PyTorch Utils, which picks the build (CUDA or CPU) that fits this computer."""
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def engine_command(python: str, device: str | None = None, model: str | None = None) -> list[str]:
    """The command that serves the engine from `python` on a free loopback port, until its stdin closes."""
    command = [python, "-m", "medals.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--exit-with-parent"]
    if device:
        command += ["--device", device]
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
                                   capture_output=True, text=True, errors="replace", timeout=timeout_s,
                                   **_no_console_window())
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
                                             stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
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


@dataclass
class SlicerPythonSetup:
    """Installs the engine into Slicer's own Python, with the user's consent.

    What only Slicer has is passed in: `ask(message) -> bool` (a confirmation dialog), `torch_utils` (PyTorch
    Utils' logic: `torchInstalled()` and `installTorch(askConfirmation, torchVersionRequirement=...)`), and
    `pip_install(requirement)`. Torch comes first, through PyTorch Utils, so that pip never picks a torch
    build that does not fit this computer's GPU driver.
    """

    ask: Callable[[str], bool]
    torch_utils: object
    pip_install: Callable[[str], None]
    engine_requirement: str = ENGINE_REQUIREMENT
    engine_module: str = ENGINE_MODULE

    def engine_installed(self) -> bool:
        return engine_importable(self.engine_module)

    def ensure_engine(self) -> None:
        """Nothing when the engine is importable; otherwise ask, install torch and the engine, and check."""
        if self.engine_installed():
            return
        torch_needed = not self.torch_utils.torchInstalled()
        message = ("MedalS runs its engine in Slicer's own Python. This needs "
                   + ("PyTorch (installed by PyTorch Utils, a few GB) and " if torch_needed else "")
                   + f"the MedalS engine ({self.engine_requirement}) to be downloaded and installed. Continue?")
        if not self.ask(message):
            raise EngineStartError("the local engine was not installed: installation was declined")
        if torch_needed and self.torch_utils.installTorch(False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
            raise EngineStartError("PyTorch Utils did not install PyTorch; install it from the PyTorch Utils module "
                                   "and try again")
        try:
            self.pip_install(self.engine_requirement)
        except Exception as error:  # pip reports through whatever exception Slicer's wrapper raises
            raise EngineStartError(f"installing {self.engine_requirement} failed: {error}") from None
        if not self.engine_installed():
            raise EngineStartError(f"{self.engine_requirement} was installed but Python cannot find the "
                                   f"'{self.engine_module}' package; restart Slicer and try again")


def _no_console_window() -> dict:
    """On Windows, keep a console window from popping up for the engine."""
    return {"creationflags": subprocess.CREATE_NO_WINDOW} if sys.platform == "win32" else {}


def _own_session() -> dict:
    """On POSIX, a Ctrl+C in Slicer's terminal stays with Slicer; the engine is stopped by `stop()`."""
    return {} if sys.platform == "win32" else {"start_new_session": True}
