"""The job queue: one worker thread per model replica (one per device), each running one job at a time, so no
replica is ever used concurrently; all workers take jobs from the one first-in first-out queue.

Jobs move queued → running → succeeded | failed | cancelled. Cancelling a queued job removes it at once;
cancelling a running job sets its `cancel` event, which the job function checks between windows.
Long polls wait on the event loop (`Job.changed_after`), holding no thread, so any number of them leave the
server's threads to the other routes.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from typing import Any, Callable, Sequence

from ..errors import Cancelled, MedalSError
from .errors import JobNotFound, QueueFull, RequestIdConflict

log = logging.getLogger("medals.server")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)


class Job:
    """One request and its progress. `payload` is whatever the job function needs; `result` what it returned."""

    def __init__(self, payload: Any, request_key: str | None = None, fingerprint: str | None = None):
        self.id = uuid.uuid4().hex
        self.payload = payload
        self.request_key = request_key
        self.fingerprint = fingerprint
        """What the request asked for (a digest), so a reused request key with another request is told apart."""
        self.state = QUEUED
        self.stage, self.done, self.total, self.message = "", 0, 0, ""
        self.result: Any = None
        self.error: MedalSError | None = None
        self.cancel = threading.Event()
        self.version = 0
        """Counts every change a client could see (state, progress, queue position), for long polls."""
        self._change = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._stage_started = time.monotonic()
        self.started: float | None = None
        self.finished: float | None = None

    def run_seconds(self) -> float | None:
        """Seconds the job has run (final once it finished); None while it waits."""
        if self.started is None:
            return None
        return round((self.finished or time.monotonic()) - self.started, 3)

    def report(self, stage: str, done: int, total: int, message: str = "") -> None:
        """Progress from the job function: `done` of `total` windows of `stage` are finished."""
        if stage != self.stage:
            self._stage_started = time.monotonic()
        self.stage, self.done, self.total, self.message = stage, int(done), int(total), message
        self.changed()

    def changed(self) -> None:
        """Wake the clients waiting for this job to change."""
        with self._change:
            self.version += 1
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_settle, future)

    async def changed_after(self, after: int, timeout: float) -> None:
        """Return once `version` passed `after`, or after `timeout` seconds; awaited on the event loop, holding no
        thread (changes come from the worker thread)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._change:
            if self.version > after:
                return
            self._waiters.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            with self._change:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))

    def eta_seconds(self) -> float | None:
        """Seconds left in the current stage at its mean pace so far; None before its first window ends."""
        if self.state != RUNNING or self.done <= 0 or self.total <= self.done:
            return None
        per_window = (time.monotonic() - self._stage_started) / self.done
        return round(per_window * (self.total - self.done), 2)


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class JobQueue:
    """First-in first-out jobs run by `run(job) -> result` on a worker thread; with a sequence of job functions
    (one per model replica), one worker thread per function, each taking the next job when it is free.

    At most `max_waiting` jobs wait; the last `max_finished` finished jobs (and their results) are kept for
    their clients to collect, older ones are forgotten.
    """

    def __init__(self, run: Callable[[Job], Any] | Sequence[Callable[[Job], Any]], max_waiting: int = 16,
                 max_finished: int = 32):
        runs = list(run) if isinstance(run, (list, tuple)) else [run]
        self.max_waiting = max_waiting
        self.max_finished = max_finished
        self._jobs: dict[str, Job] = {}
        self._waiting: deque[Job] = deque()
        self._running: set[Job] = set()
        self._finished: deque[Job] = deque()
        self._by_request: dict[str, str] = {}
        self._condition = threading.Condition()
        self._closed = False
        self._workers = [threading.Thread(target=self._work, args=(function,), name=f"medals-job-worker-{number}",
                                          daemon=True) for number, function in enumerate(runs)]
        for worker in self._workers:
            worker.start()

    def submit(self, payload: Any, request_key: str | None = None, fingerprint: str | None = None) -> Job:
        """Queue a job. A repeated `request_key` (a client retrying) returns the job it already created, when the
        request's `fingerprint` is the same; RequestIdConflict (409) when it is not."""
        with self._condition:
            if request_key is not None and request_key in self._by_request:
                job = self._jobs[self._by_request[request_key]]
                if job.fingerprint != fingerprint:
                    raise RequestIdConflict(f"request_id {request_key!r} was already used for a different request "
                                            f"(job {job.id}); send a new request_id with a new request")
                return job
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} jobs are already waiting on this server; try again later")
            job = Job(payload, request_key, fingerprint)
            self._jobs[job.id] = job
            if request_key is not None:
                self._by_request[request_key] = job.id
            self._waiting.append(job)
            self._condition.notify()
            return job

    def get(self, job_id: str) -> Job:
        with self._condition:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id} on this server (never submitted, or its result was collected "
                              "long ago and forgotten)")
        return job

    def length(self) -> int:
        """Jobs waiting or running now."""
        with self._condition:
            return len(self._waiting) + len(self._running)

    def position(self, job: Job) -> int | None:
        """How many jobs (the running ones included) are ahead of this one; None once it has started."""
        with self._condition:
            if job.state != QUEUED:
                return None
            return len(self._running) + self._waiting.index(job)

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop. A queued job is cancelled now; a running one at its next window."""
        job = self.get(job_id)
        with self._condition:
            job.cancel.set()
            if job.state == QUEUED:
                self._waiting.remove(job)
                self._finish(job, CANCELLED)
        return job

    def close(self, timeout: float = 5.0) -> None:
        """Cancel everything and stop the workers (waits up to `timeout` s for the running jobs' next window)."""
        with self._condition:
            self._closed = True
            for job in [*self._waiting, *self._running]:
                job.cancel.set()
            self._condition.notify_all()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def _finish(self, job: Job, state: str) -> None:
        """Under the lock: record the end state and forget the oldest finished jobs past `max_finished`.

        The payload goes at once: it holds the image, which must not outlive its eviction from the cache.
        """
        job.state, job.payload = state, None
        if job.started is not None:
            job.finished = time.monotonic()
        job.changed()
        self._finished.append(job)
        while len(self._finished) > self.max_finished:
            old = self._finished.popleft()
            del self._jobs[old.id]
            if old.request_key is not None:
                self._by_request.pop(old.request_key, None)

    def _work(self, run: Callable[[Job], Any]) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._closed:
                    self._condition.wait()
                if self._closed:
                    for job in list(self._waiting):
                        self._finish(job, CANCELLED)
                    self._waiting.clear()
                    return
                job = self._waiting.popleft()
                self._running.add(job)
                job.state, job.started = RUNNING, time.monotonic()
                for moved in [job, *self._waiting]:  # its state, and everyone's queue position, changed
                    moved.changed()
            state, result, error = self._execute(run, job)
            with self._condition:
                job.result, job.error = result, error
                self._running.discard(job)
                self._finish(job, state)

    def _execute(self, run: Callable[[Job], Any], job: Job) -> tuple[str, Any, MedalSError | None]:
        try:
            result = run(job)
        except Cancelled as error:
            return CANCELLED, None, error
        except MedalSError as error:
            return FAILED, None, error
        except Exception as error:  # noqa: BLE001 - a bug in one job must not stop the worker
            log.exception("job %s failed", job.id)
            return FAILED, None, MedalSError(f"internal error in the engine ({type(error).__name__}: {error}); "
                                             "the server log has the details")
        if job.cancel.is_set():
            return CANCELLED, None, Cancelled("the job was cancelled")
        return SUCCEEDED, result, None
