"""The engine's models, seen from Slicer: which ones it has, and importing the authors' official weights.

Both run the engine's own command line in the engine's Python (`medals weights list --json`, `medals weights
import`), as a child process: Slicer's process never imports torch, and an import that fails or is cancelled
leaves the model store as it was (the engine writes beside the store and renames into place).
"""
from __future__ import annotations

import json
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .errors import ModuleError
from .launcher import _no_console_window

LIST_TIMEOUT_S = 120.0
"""Listing imports the engine package (and torch) in a fresh process: seconds, more on a cold disk."""
OFFICIAL_NAME = "official"
"""The store name official weights are imported under, unless the user picks another."""


class ModelsError(ModuleError):
    """The engine could not list or import models; the message carries the engine's own last words."""


@dataclass(frozen=True)
class EngineModel:
    """One model the engine can serve."""

    name: str
    path: str
    bundled: bool
    """Shipped inside the engine package (the demo model), not in the model store."""
    stages: str
    """E.g. "coarse 224x224x128 @ 1.5x1.5x3 mm, fine 192x192x192 @ 1x1x1 mm"."""
    text_tower: str
    size_bytes: int

    @property
    def label(self) -> str:
        origin = "bundled demo" if self.bundled else f"{self.size_bytes / 1e9:.1f} GB"
        return f"{self.name} ({origin}; {self.stages})"


def list_command(python: str) -> list[str]:
    return [python, "-m", "medals.cli", "weights", "list", "--json"]


def import_command(python: str, source: str, name: str = OFFICIAL_NAME, replace: bool = False,
                   plan: str | None = None) -> list[str]:
    """`plan`: a JSON file of network widths, for checkpoints trained with another plan than the official one."""
    return [python, "-m", "medals.cli", "weights", "import", str(source), "--name", name] + (
        ["--replace"] if replace else []) + (["--plan", str(plan)] if plan else [])


def parse_model_list(text: str) -> list[EngineModel]:
    """The models in `medals weights list --json` output, bundled ones first."""
    try:
        records = json.loads(text)["models"]
        models = [EngineModel(str(r["name"]), str(r["path"]), bool(r["bundled"]), str(r["stages"]),
                              str(r["text_tower"]), int(r["size_bytes"])) for r in records]
    except (ValueError, KeyError, TypeError) as error:
        raise ModelsError(f"the engine's model list is not readable ({error}); is the engine up to date?") from None
    return sorted(models, key=lambda model: not model.bundled)  # stable: the engine's order within each group


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def list_models(python: str, env: dict | None = None, timeout_s: float = LIST_TIMEOUT_S) -> list[EngineModel]:
    """The models that the engine in `python` has: its bundled ones, then those in its model store."""
    try:
        completed = subprocess.run(list_command(python), env=env, capture_output=True, text=True, encoding="utf-8",
                                   errors="replace", timeout=timeout_s, **_no_console_window())
    except OSError as error:
        raise ModelsError(f"cannot run {python}: {error.strerror or error}") from None
    except subprocess.TimeoutExpired:
        raise ModelsError(f"listing the engine's models took over {timeout_s:g} s") from None
    if completed.returncode != 0:
        raise ModelsError(f"listing the engine's models failed: {last_line(completed.stderr or completed.stdout)}")
    return parse_model_list(completed.stdout)


def import_weights(python: str, source: str, name: str = OFFICIAL_NAME, replace: bool = False,
                   plan: str | None = None, env: dict | None = None, report=lambda line: None,
                   cancel: threading.Event | None = None) -> str:
    """Run `medals weights import` in the engine's Python; returns its summary (worker thread).

    Each line the import logs goes to `report`; setting `cancel` ends the child process, and the store keeps
    what it had.
    """
    try:
        process = subprocess.Popen(import_command(python, source, name, replace, plan), env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1,
                                   **_no_console_window())
    except OSError as error:
        raise ModelsError(f"cannot run {python}: {error.strerror or error}") from None
    lines: deque[str] = deque(maxlen=50)
    watcher = threading.Thread(target=_stop_on_cancel, args=(process, cancel), daemon=True) if cancel else None
    if watcher is not None:
        watcher.start()
    for line in process.stdout:
        line = line.rstrip()
        lines.append(line)
        report(line)
    process.wait()
    if cancel is not None and cancel.is_set():
        raise ModelsError("the import was cancelled; the installed models are unchanged")
    if process.returncode != 0:
        raise ModelsError(f"importing {Path(source).name} failed: {last_line(chr(10).join(lines))}")
    return "\n".join(line for line in lines if line.startswith(("installed", "  ")))


def _stop_on_cancel(process: subprocess.Popen, cancel: threading.Event) -> None:
    while process.poll() is None:
        if cancel.wait(0.2):
            process.terminate()
            return
