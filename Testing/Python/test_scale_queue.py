"""The job queue with several workers (one per model replica), in-process with fake job functions.

Each fake replica records the jobs it ran and whether it was ever entered twice at once, so the tests check
exactly that every replica runs one job at a time, that all of them take jobs from the one queue in order,
and that queue position, ETA and cancel keep their meaning. The real server runs in test_scale_server.py.
"""
from __future__ import annotations

import threading

import pytest

from medals.errors import Cancelled, InputError
from medals.server.devices import parse_devices
from medals.server.jobs import CANCELLED, QUEUED, RUNNING, SUCCEEDED, JobQueue
from test_server_jobs import wait_for


class Gates:
    """One semaphore per job: `open(job, n)` lets that job run `n` more windows."""

    ALL = 1000

    def __init__(self):
        self.lock = threading.Lock()
        self.semaphores: dict[str, threading.Semaphore] = {}
        self.all_open = False

    def __call__(self, job) -> threading.Semaphore:
        with self.lock:
            return self.semaphores.setdefault(job.id, threading.Semaphore(self.ALL if self.all_open else 0))

    def open(self, job, windows: int = 1) -> None:
        self(job).release(windows)

    def open_all(self) -> None:
        with self.lock:
            self.all_open = True
            for semaphore in self.semaphores.values():
                semaphore.release(self.ALL)


class Replica:
    """A fake job function for one replica: `payload` windows, each let through by the test."""

    def __init__(self, gates: Gates):
        self.gates = gates
        self.ran: list[str] = []
        self.inside = 0
        self.overlapped = False

    def __call__(self, job):
        self.inside += 1
        self.overlapped |= self.inside > 1
        self.ran.append(job.id)
        try:
            for done in range(job.payload):
                if job.cancel.is_set():
                    raise Cancelled("cancelled")
                self.gates(job).acquire()
                job.report("fine", done + 1, job.payload)
            return job.id
        finally:
            self.inside -= 1


@pytest.fixture
def pool():
    gates = Gates()
    replicas = [Replica(gates), Replica(gates)]
    queue = JobQueue(replicas, max_waiting=4, max_finished=8)
    yield gates, replicas, queue
    gates.open_all()
    queue.close()


def test_two_workers_run_the_first_two_jobs_at_once_and_the_third_waits(pool):
    gates, replicas, queue = pool
    first, second, third = queue.submit(2), queue.submit(2), queue.submit(1)
    wait_for(lambda: first.state == RUNNING and second.state == RUNNING)
    assert third.state == QUEUED and queue.position(third) == 2 and queue.length() == 3
    assert sorted(replica.ran[0] for replica in replicas) == sorted([first.id, second.id])
    for job in (first, second, third):
        gates.open(job, 2)
    wait_for(lambda: all(job.state == SUCCEEDED for job in (first, second, third)))
    assert sorted(sum((replica.ran for replica in replicas), [])) == sorted(job.id for job in (first, second, third))
    assert not any(replica.overlapped for replica in replicas)


def test_each_running_job_has_its_own_progress_and_eta(pool):
    gates, replicas, queue = pool
    first, second = queue.submit(4), queue.submit(4)
    wait_for(lambda: first.state == RUNNING and second.state == RUNNING)
    gates.open(first, 1), gates.open(second, 2)
    wait_for(lambda: first.done == 1 and second.done == 2)
    assert first.eta_seconds() is not None and second.eta_seconds() is not None
    assert (first.total, second.total) == (4, 4) and queue.position(first) is None


def test_cancelling_one_running_job_leaves_the_other_running_and_frees_its_worker(pool):
    gates, replicas, queue = pool
    first, second, third = queue.submit(3), queue.submit(3), queue.submit(1)
    wait_for(lambda: first.state == RUNNING and second.state == RUNNING)
    queue.cancel(first.id)
    gates.open(first)  # the window it is in ends; it sees its cancel before the next
    wait_for(lambda: first.state == CANCELLED)
    wait_for(lambda: third.state == RUNNING)  # the freed worker took the next job
    assert second.state == RUNNING
    gates.open(second, 3), gates.open(third, 1)
    wait_for(lambda: second.state == SUCCEEDED and third.state == SUCCEEDED)


def test_cancelling_a_queued_job_behind_two_running_ones_removes_it(pool):
    gates, replicas, queue = pool
    first, second, third, fourth = (queue.submit(1) for _ in range(4))
    wait_for(lambda: first.state == RUNNING and second.state == RUNNING)
    queue.cancel(third.id)
    assert third.state == CANCELLED and queue.position(fourth) == 2
    for job in (first, second, fourth):
        gates.open(job)
    wait_for(lambda: fourth.state == SUCCEEDED)
    assert third.id not in sum((replica.ran for replica in replicas), [])


def test_close_cancels_the_running_jobs_of_every_worker(pool):
    gates, replicas, queue = pool
    first, second, third = queue.submit(5), queue.submit(5), queue.submit(5)
    wait_for(lambda: first.state == RUNNING and second.state == RUNNING)
    closing = threading.Thread(target=queue.close)
    closing.start()
    gates.open(first), gates.open(second)
    closing.join(5)
    assert not closing.is_alive()
    assert {job.state for job in (first, second, third)} == {CANCELLED}


@pytest.mark.parametrize("values, expected", [
    (None, [None]),
    (["cpu"], ["cpu"]),
    (["cuda:0,cuda:1"], ["cuda:0", "cuda:1"]),
    (["cuda:0", "cuda:1, cuda:2"], ["cuda:0", "cuda:1", "cuda:2"]),
    (["cpu,cpu"], ["cpu", "cpu"]),
])
def test_devices_are_listed_by_commas_or_by_repeating_the_option(values, expected):
    assert parse_devices(values) == expected


def test_an_empty_device_entry_is_a_clear_error():
    with pytest.raises(InputError, match="empty entry"):
        parse_devices(["cuda:0,,cuda:1"])
