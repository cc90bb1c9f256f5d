"""One persistent worker thread for engine requests, so the GUI never waits on the network or the engine.

The GUI thread submits work and polls the returned `Request` from a timer (its latest progress, then its
result or error); the worker never touches MRML or Qt. One thread for the whole session, reused for every
request, as a thread per request costs start-up time and, in CUDA processes, much more.
"""
from __future__ import annotations

import logging
import queue
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("MedalS")


@dataclass(frozen=True)
class Progress:
    """What a request is doing now: `text` for people, `fraction` in 0–1 (None: unknown, show a busy bar)."""

    text: str
    fraction: float | None = None


class Request:
    """One unit of work on the worker: its progress while it runs, then its result or its error."""

    def __init__(self, work: Callable[["Request"], Any], description: str):
        self.work = work
        self.description = description
        self.progress = Progress(f"{description}: waiting")
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancel_requested = threading.Event()
        self.finished = threading.Event()

    def report(self, progress: Progress) -> None:
        """Called by the work function, from the worker thread."""
        self.progress = progress

    def cancel(self) -> None:
        """Ask the work to stop; it checks `cancel_requested` (the engine client cancels the engine's job)."""
        self.cancel_requested.set()

    def _run(self) -> None:
        try:
            self.result = self.work(self)
        except Exception as error:  # handed to the GUI thread, which decides what to show
            self.error = error
            log.debug("%s failed:\n%s", self.description, traceback.format_exc())
        finally:
            self.finished.set()


class Worker:
    """A single daemon thread running submitted requests one after another, in order."""

    def __init__(self, name: str = "MedalS requests"):
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[Request], Any], description: str) -> Request:
        """Queue `work(request)`; returns the request to poll (and to cancel)."""
        request = Request(work, description)
        self._queue.put(request)
        return request

    def close(self, timeout_s: float = 5.0) -> None:
        """Finish the queued requests and end the thread (waits at most `timeout_s`)."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while (request := self._queue.get()) is not None:
            request._run()
