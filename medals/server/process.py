"""`medals serve` as a child process on a free loopback port, for tests and `medals bench server`."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import deque

from ..cli.serve import READY_MARKER
from ..errors import MedalSError


class ServerProcess:
    """A running `medals serve --port PORT ARGS...`; `url` is known once it printed its ready line.

    `port` 0 (the default) lets the server pick a free port. `stdin` is passed to Popen (subprocess.PIPE, with
    `--exit-with-parent` among the args, makes closing `process.stdin` end the server).

    Its stdout and stderr are read on a thread (so the pipe never fills) and the last lines kept for errors.
    """

    def __init__(self, args: list[str], port: int = 0, startup_timeout: float = 180.0, env: dict | None = None,
                 stdin=None):
        self.command = [sys.executable, "-m", "medals.cli", "serve", "--port", str(port), *args]
        self.startup_timeout = startup_timeout
        self.env = env
        self.stdin = stdin
        self.url: str | None = None
        self.lines: deque[str] = deque(maxlen=200)
        self._ready = threading.Event()
        self.process: subprocess.Popen | None = None

    def start(self) -> str:
        self.process = subprocess.Popen(self.command, stdin=self.stdin, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, encoding="utf-8", env=self.env)
        threading.Thread(target=self._read, name="medals-server-output", daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise MedalSError(f"`{' '.join(self.command[2:])}` did not start: " + " | ".join(list(self.lines)[-5:]))
        return self.url

    def _read(self) -> None:
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith(READY_MARKER + " "):
                self.url = line.split(" ", 1)[1]
                self._ready.set()

    def kill(self) -> None:
        """End the server at once (SIGKILL), as a crash would."""
        self.process.kill()
        self.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to shut down (SIGTERM), killing it if it has not ended within `timeout` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
