"""The job queue, in-process with a fake job function.

The queue is independent of the model: these tests drive it with a small function that "processes windows"
under test control, so ordering, cancel and progress are checked exactly and in milliseconds. The real
pipeline runs through the same queue in test_server_endpoints.py.
"""
from __future__ import annotations

import threading
import time

import pytest

from medals.errors import Cancelled, InputError
from medals.server.errors import JobNotFound, QueueFull
from medals.server.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobQueue


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


class Windows:
    """A fake job function: `payload` windows, each waiting for the test to release it, checking cancel between."""

    def __init__(self):
        self.release = threading.Semaphore(0)
        self.running = 0
        self.max_running = 0
        self.lock = threading.Lock()

    def __call__(self, job):
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            for done in range(job.payload):
                if job.cancel.is_set():
                    raise Cancelled("cancelled")
                self.release.acquire()
                job.report("coarse", done + 1, job.payload)
            return f"result of {job.id}"
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def windows():
    function = Windows()
    queue = JobQueue(function, max_waiting=3, max_finished=4)
    yield function, queue
    for _ in range(100):
        function.release.release()
    queue.close()


def test_a_job_runs_to_success_and_keeps_its_result(windows):
    function, queue = windows
    job = queue.submit(2)
    function.release.release(), function.release.release()
    wait_for(lambda: job.state == SUCCEEDED)
    assert job.result == f"result of {job.id}"


def test_jobs_run_one_at_a_time_in_submission_order(windows):
    function, queue = windows
    first, second = queue.submit(1), queue.submit(1)
    wait_for(lambda: first.state == RUNNING)
    assert second.state == QUEUED
    function.release.release(), function.release.release()
    wait_for(lambda: second.state == SUCCEEDED)
    assert function.max_running == 1


def test_queue_position_counts_the_running_job_and_those_ahead(windows):
    function, queue = windows
    first, second, third = queue.submit(1), queue.submit(1), queue.submit(1)
    wait_for(lambda: first.state == RUNNING)
    assert (queue.position(first), queue.position(second), queue.position(third)) == (None, 1, 2)


def test_progress_reports_windows_done_and_an_eta(windows):
    function, queue = windows
    job = queue.submit(4)
    function.release.release()
    wait_for(lambda: job.done == 1)
    assert (job.stage, job.done, job.total) == ("coarse", 1, 4)
    assert job.eta_seconds() is not None and job.eta_seconds() >= 0


def test_cancelling_a_running_job_stops_it_at_the_next_window(windows):
    function, queue = windows
    job = queue.submit(100)
    function.release.release()
    wait_for(lambda: job.done == 1)
    queue.cancel(job.id)
    function.release.release()
    wait_for(lambda: job.state == CANCELLED)
    assert job.done <= 2 and job.result is None


def test_cancelling_a_queued_job_removes_it_before_it_starts(windows):
    function, queue = windows
    first, second = queue.submit(1), queue.submit(1)
    wait_for(lambda: first.state == RUNNING)
    queue.cancel(second.id)
    assert second.state == CANCELLED
    function.release.release()
    wait_for(lambda: first.state == SUCCEEDED)
    assert second.done == 0


def test_a_failing_job_records_its_error_and_the_worker_goes_on():
    def run(job):
        if job.payload == "bad":
            raise InputError("prompt 'x' is empty")
        return "ok"
    queue = JobQueue(run)
    bad, good = queue.submit("bad"), queue.submit("good")
    wait_for(lambda: good.state == SUCCEEDED)
    assert bad.state == FAILED and str(bad.error) == "prompt 'x' is empty" and bad.error.http_status == 400
    queue.close()


def test_an_unexpected_exception_becomes_a_failed_job_not_a_dead_worker():
    def run(job):
        if job.payload == "bug":
            raise ZeroDivisionError("division by zero")
        return "ok"
    queue = JobQueue(run)
    bug, good = queue.submit("bug"), queue.submit("good")
    wait_for(lambda: good.state == SUCCEEDED)
    assert bug.state == FAILED and "ZeroDivisionError" in str(bug.error)
    queue.close()


def test_a_full_queue_refuses_new_jobs(windows):
    function, queue = windows
    running = queue.submit(1)
    wait_for(lambda: running.state == RUNNING)
    for _ in range(3):
        queue.submit(1)
    with pytest.raises(QueueFull):
        queue.submit(1)


def test_a_repeated_request_key_returns_the_same_job(windows):
    function, queue = windows
    assert queue.submit(1, request_key="k").id == queue.submit(1, request_key="k").id


def test_old_finished_jobs_are_forgotten_past_the_retention_bound(windows):
    function, queue = windows
    jobs = []
    for _ in range(6):
        jobs.append(queue.submit(1))
        function.release.release()
        wait_for(lambda: jobs[-1].state == SUCCEEDED)
    with pytest.raises(JobNotFound):
        queue.get(jobs[0].id)
    assert queue.get(jobs[-1].id) is jobs[-1]


def test_a_finished_job_lets_go_of_its_payload_but_keeps_its_result(windows):
    function, queue = windows
    job = queue.submit(1)
    function.release.release()
    wait_for(lambda: job.state == SUCCEEDED)
    assert job.payload is None and job.result is not None
