"""`medals serve --devices cpu,cpu`: two model replicas and two workers fed from one queue, in a real server.

Every server here is a real `medals serve` child on loopback running the tiny model, with OMP_NUM_THREADS=1: one
CPU thread per worker, so on a 2-core machine two workers can run two jobs truly at once. The timing test
measures, in one run, two equal jobs through two workers against the same two jobs through one worker, and
prints the ratio (target: 0.6 or less). Two workers can only beat one when a second core is free for them: on
a machine others keep busy (Linux shares CPU time per session, not per thread) the ratio is reported, and it is
held to the target whenever the machine had a spare core while one worker ran.
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pytest
from server_fixtures import client, connected, medals_home, random_volume, server_process, wait_until  # noqa: F401

from medals.cli import main
from medals.pipeline import Prompt, SegmentOptions, segment
from medals.server.process import ServerProcess
from medals.weights import load_model

PROMPTS = [("liver", 1), ("left kidney", 2)]
JOB = {"stages": ["fine"], "refine_iterations": 1}
"""With a (16, 64, 64) image: 4 fine windows of two forwards each, a few seconds on one thread."""
SHAPE = (16, 64, 64)
TARGET_RATIO = 0.6
SPARE_CORE = 0.8
"""Idle cores of the machine, while one worker ran, from which a second worker surely had a core to itself."""


def pool(medals_home, devices: str) -> ServerProcess:  # noqa: F811
    """A server with one worker per device of `devices`, one thread each (not started)."""
    return server_process(medals_home, "--devices", devices, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def pair(medals_home):  # noqa: F811
    with pool(medals_home, "cpu,cpu") as server:
        yield server


@pytest.fixture(scope="module")
def engine(pair):
    return connected(pair)


def test_info_reports_every_device(engine):
    info = engine.info()
    assert [device["device"] for device in info["devices"]] == ["cpu", "cpu"]
    assert info["device"] == info["devices"][0] and info["queue_length"] == 0


def test_slicer_status_names_every_device(engine):
    """The Slicer panel's engine line (MedalSLib.session.describe_engine) lists both workers' devices."""
    from MedalSLib.session import describe_engine

    line = describe_engine(engine.info(), "http://127.0.0.1")
    assert line.count("(cpu") == 2 and " and " in line
    assert describe_engine({"device": {"name": "CPU", "device": "cpu"}}, "x").endswith("on CPU (cpu).")  # older


def test_two_jobs_run_at_once_while_a_third_waits_and_can_be_cancelled(engine):
    image = random_volume(SHAPE, seed=1)
    first, second, third = (engine.submit(image, PROMPTS, modality="ct", options=JOB) for _ in range(3))
    try:
        wait_until(lambda: {engine.status(job.job_id).state for job in (first, second)} == {"running"})
        waiting = engine.status(third.job_id)
        assert waiting.state == "queued" and waiting.queue_position == 2 and waiting.eta_seconds is None
        assert engine.info()["queue_length"] == 3
        assert engine.cancel(third.job_id).state == "cancelled"
        wait_until(lambda: engine.status(first.job_id).done >= 1 or engine.status(first.job_id).state != "running")
        state = engine.status(first.job_id)
        assert state.state != "running" or (state.eta_seconds is not None and state.eta_seconds > 0)
        engine.cancel(first.job_id)
        with pytest.raises(client.JobCancelled):
            engine.wait(first.job_id)
        assert engine.status(second.job_id).state in ("running", "succeeded")  # the other worker's job goes on
        assert engine.wait(second.job_id).state == "succeeded"
    finally:
        for job in (first, second, third):
            engine.cancel(job.job_id)


def test_both_replicas_give_the_in_process_labels(engine, medals_home):  # noqa: F811
    image = random_volume(SHAPE, seed=2)
    jobs = [engine.submit(image, PROMPTS, modality="ct", options=JOB) for _ in range(2)]
    wait_until(lambda: {engine.status(job.job_id).state for job in jobs} <= {"running", "succeeded"})
    results = [engine.result(engine.wait(job.job_id)).full_labels() for job in jobs]
    model = load_model(medals_home / "models" / "tiny")
    expected = segment(model, image.array, image.spacing, [Prompt(text, label) for text, label in PROMPTS],
                       modality="ct", options=SegmentOptions(stages=("fine",), refine_iterations=1),
                       device="cpu").labels
    for labels in results:
        np.testing.assert_array_equal(labels, expected)


def test_a_device_this_machine_lacks_is_refused_before_anything_loads(capsys):
    code = main(["serve", "--port", "0", "--devices", "cpu,cuda:99"])
    error = capsys.readouterr().err
    assert code != 0 and "cuda:99" in error and "\n" not in error.strip()


def idle_cores() -> tuple[float, float]:
    """(seconds since boot, idle core-seconds) from /proc/stat, for the machine's idle cores over a span."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    ticks = os.sysconf("SC_CLK_TCK")
    return time.monotonic(), (int(fields[3]) + int(fields[4])) / ticks  # idle + iowait


def two_jobs_seconds(engine, image) -> tuple[float, float]:
    """Wall time from submitting two equal jobs to both having finished, and the machine's idle cores meanwhile."""
    start, idle_before = idle_cores()
    jobs = [engine.submit(image, PROMPTS, modality="ct", options=JOB) for _ in range(2)]
    for job in jobs:
        assert engine.wait(job.job_id, poll_interval=0.05).state == "succeeded"
    end, idle_after = idle_cores()
    return end - start, (idle_after - idle_before) / (end - start)


@pytest.mark.slow
def test_two_workers_finish_two_equal_jobs_in_at_most_0_6_of_the_time_of_one(engine, medals_home):  # noqa: F811
    image = random_volume(SHAPE, seed=3)
    with pool(medals_home, "cpu") as single:
        alone = connected(single)
        two_jobs_seconds(alone, image), two_jobs_seconds(engine, image)  # warm-up: first forwards, upload
        runs = {"one worker": [], "two workers": []}
        for _ in range(3):  # alternated, so a change in the machine's load touches both alike
            runs["one worker"].append(two_jobs_seconds(alone, image))
            runs["two workers"].append(two_jobs_seconds(engine, image))
    seconds = {name: statistics.median(wall for wall, _ in values) for name, values in runs.items()}
    spare = statistics.median(idle for _, idle in runs["one worker"])
    ratio = seconds["two workers"] / seconds["one worker"]
    print(f"\ntwo equal jobs, one thread per worker: one worker {seconds['one worker']:.2f} s, two workers "
          f"{seconds['two workers']:.2f} s (medians of 3): ratio {ratio:.2f}, target ≤ {TARGET_RATIO}; the machine "
          f"had {spare:.2f} idle cores while one worker ran")
    if spare >= SPARE_CORE:
        assert ratio <= TARGET_RATIO, f"two workers took {ratio:.2f}× the time of one for two equal jobs"
