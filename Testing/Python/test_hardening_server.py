"""Red-team checks of `medals serve`: hostile uploads and requests against a real server on loopback.

Each test reproduces one attack that once cost the server memory, a thread, a wrong answer or an internal
error, and checks it is now refused with a clear message or handled. Sizes are kept small enough for a shared
machine: the server's cache is set to a few hundred MB and the attacks scaled to it.
"""
from __future__ import annotations

import base64
import json
import socket
import statistics
import threading
import time
import zlib
from urllib.parse import urlsplit

import numpy as np
import pytest
from server_fixtures import (TOKEN, client, connected, medals_home, raw_request, resident_bytes,  # noqa: F401
                             server_process, wait_until)

from medals.errors import InputError
from medals.pipeline import Prompt, segment
from medals.server.engine import CompactMask
from medals.weights import load_model
from medals.weights.testing import make_tiny_model

MIB = 1 << 20
CACHE_MB = 256
BODY_TIMEOUT = 3.0
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BIG_SHAPE = (64, 1024, 1024)
"""float32: 256 MiB, the whole cache: the size each stalled upload declares."""


@pytest.fixture(scope="module")
def server(medals_home):  # noqa: F811
    with server_process(medals_home, "--token", TOKEN, "--cache-mb", str(CACHE_MB), "--body-timeout",
                        str(BODY_TIMEOUT)) as process:
        yield process


@pytest.fixture(scope="module")
def engine(server):
    return connected(server, TOKEN, timeout=60)


def upload_headers(dtype: str, shape, spacing="1.5,1.5,1.5", **extra) -> dict:
    return {**AUTH, "Content-Type": "application/octet-stream", "X-Medals-Dtype": dtype,
            "X-Medals-Shape": ",".join(map(str, shape)), "X-Medals-Spacing": spacing, **extra}


def stalled_upload(url: str, shape=BIG_SHAPE) -> socket.socket:
    """A connection that declares a float32 image of `shape` and a 1 MB body, then sends 2 bytes and stalls."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    headers = {**upload_headers("float32", shape), "Content-Length": str(MIB), "Host": parts.netloc}
    request = "POST /v1/images HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(request.encode() + zlib.compress(bytes(64))[:2])
    return sock


def answer_of(sock: socket.socket) -> str:
    """The status line and body the server sent on a raw connection (empty when it closed without one)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data.decode(errors="replace")


class PeakMemory:
    """The largest resident size of a process, sampled every 20 ms on a thread while the block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, resident_bytes(pid), threading.Event()

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, resident_bytes(self.pid))

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def small_image(seed: int = 0, shape=(8, 16, 16)):
    return client.ImageRef.of(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8), (3, 3, 3))


def job_body(image_id: str, **fields) -> bytes:
    return json.dumps({"image_id": image_id, "prompts": [{"text": "liver", "label": 1}], **fields}).encode()


def post_job(url: str, body: bytes):
    return raw_request(url, "POST", "/v1/jobs", body, {**AUTH, "Content-Type": "application/json"})


# -- uploads ------------------------------------------------------------------------------------------------------

def test_stalled_uploads_declaring_the_whole_cache_cost_no_memory_and_time_out(server, engine):
    """Once: each declared 256 MB upload reserved its bytes at once on the event loop and waited forever."""
    before = resident_bytes(server.process.pid)
    connections = [stalled_upload(server.url) for _ in range(4)]
    time.sleep(1.0)
    grown = resident_bytes(server.process.pid) - before
    started = time.monotonic()
    answers = [answer_of(sock) for sock in connections]
    waited = time.monotonic() - started
    for sock in connections:
        sock.close()
    assert grown < 64 * MIB, f"four stalled uploads took {grown / MIB:.0f} MB"
    assert "408" in answers[0] and "body_timeout" in answers[0], answers[0][:300]
    # The cache's budget is held by the first upload alone: the others are told to come back, not queued.
    assert all("503" in answer and "cache_busy" in answer for answer in answers[1:]), answers[1][:300]
    assert waited < BODY_TIMEOUT + 10
    engine.upload(small_image())  # the budget came back


def test_a_spacing_beyond_float32_is_refused_at_upload(server):
    """Once: accepted, then every job on it failed with an internal error."""
    image = small_image()
    for spacing in ("1e39,1,1", "1,1e300,1", "1,1,5000"):
        status, answer, _ = raw_request(server.url, "POST", "/v1/images", image.compressed(),
                                        upload_headers("uint8", image.array.shape, spacing))
        assert status == 400 and "at most 1000 mm" in answer["detail"], (spacing, answer)


def test_a_direction_whose_determinant_overflows_is_refused(server):
    image = small_image()
    headers = upload_headers("uint8", image.array.shape, X_Medals_Direction="1e200,0,0,0,1e200,0,0,0,1e200")
    headers["X-Medals-Direction"] = headers.pop("X_Medals_Direction")
    status, answer, _ = raw_request(server.url, "POST", "/v1/images", image.compressed(), headers)
    assert status == 400 and "direction cosines" in answer["detail"]


def test_voxels_beyond_float32_are_refused_rather_than_segmented_as_nothing(server):
    array = np.full((8, 16, 16), 1e300, np.float64)
    image = client.ImageRef.of(array, (3, 3, 3))
    status, answer, _ = raw_request(server.url, "POST", "/v1/images", image.compressed(),
                                    upload_headers("float64", array.shape, "3,3,3"))
    assert status == 400 and "float32" in answer["detail"], answer


# -- job requests -------------------------------------------------------------------------------------------------

def test_a_mask_key_that_is_a_non_ascii_digit_is_a_400(server, engine):
    """Once: "²".isdigit() is true but int("²") fails: 500."""
    image = small_image(1)
    engine.upload(image)
    body = job_body(image.image_id, mode="hybrid", masks={"²": {"box": [0, 1, 0, 1, 0, 1]}})
    status, answer, _ = post_job(server.url, body)
    assert status == 400 and "mask key '²'" in answer["detail"], answer


def test_a_million_prompts_are_refused_before_they_are_parsed(server, engine):
    """Once: 2 M prompts cost 11 s and 1.4 GB before the 400 saying there were too many."""
    image = small_image(2)
    engine.upload(image)
    prompts = [{"text": "liver", "label": 1}] * 1_000_000
    body = json.dumps({"image_id": image.image_id, "prompts": prompts}).encode()  # 31 MB
    before = resident_bytes(server.process.pid)
    with PeakMemory(server.process.pid) as memory:
        started = time.monotonic()
        status, answer, _ = post_job(server.url, body)
        seconds = time.monotonic() - started
    assert status == 413 and answer["code"] == "payload_too_large", answer
    assert memory.peak - before < 128 * MIB, f"refusing took {(memory.peak - before) / MIB:.0f} MB"
    assert seconds < 5, f"refusing took {seconds:.1f} s"


def test_a_request_id_reused_for_another_request_is_a_conflict(server, engine):
    """Once: the second request silently got the first one's job (and result)."""
    image = small_image(3)
    engine.upload(image)
    first = job_body(image.image_id, request_id="same-key", options={"stages": ["coarse"]})
    status, job, _ = post_job(server.url, first)
    assert status == 202
    status, again, _ = post_job(server.url, first)  # a retry: the same job
    assert status == 202 and again["job_id"] == job["job_id"]
    other = json.dumps({"image_id": image.image_id, "prompts": [{"text": "spleen", "label": 1}],
                        "request_id": "same-key", "options": {"stages": ["coarse"]}}).encode()
    status, answer, _ = post_job(server.url, other)
    assert status == 409 and answer["code"] == "request_id_conflict" and job["job_id"] in answer["detail"]


def test_a_stalled_job_request_is_dropped_after_the_body_timeout(server):
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        headers = {**AUTH, "Content-Type": "application/json", "Content-Length": "1000", "Host": parts.netloc}
        sock.sendall(("POST /v1/jobs HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                      + "\r\n{").encode())
        answer = answer_of(sock)
    assert "408" in answer and "no request body bytes arrived for 3 s" in answer, answer[:300]


def test_an_unknown_prompt_is_segmented_but_marked_out_of_vocabulary(server, engine):
    """Once: "flux capacitor" came back like an organ; the README promised an error. Now its statistics say it is
    free text and name the closest known structures."""
    image = small_image(6)
    result = engine.segment(image, [("liver", 1), ("flux capacitor", 2), ("pancraes", 3)],
                            options={"stages": ["coarse"]})
    marks = {label: (stats["in_vocabulary"], stats["suggestions"][:1]) for label, stats in result.stats.items()}
    assert marks[1] == (True, []) and marks[2][0] is False and marks[3] == (False, ["pancreas"])


def test_queued_jobs_keep_their_masks_compact(server, engine):
    """Once: each of 64 masks became a full-image array when checked, and queued jobs kept them all."""
    shape = (64, 256, 256)  # 4 Mi voxels: a full-image uint8 mask is 4 MB, 64 of them 256 MB per job
    image = client.ImageRef.of(np.random.default_rng(4).integers(0, 255, shape, dtype=np.uint8), (1.5, 1.5, 1.5))
    engine.upload(image)
    blocker = engine.submit(image, [("liver", 1)], options={"stages": ["fine"], "refine_iterations": 8})
    painted = np.zeros(shape, np.uint8)
    painted[10:50, 40:200, 40:200] = 1
    painted[30, 100, 100] = 0
    data = base64.b64encode(zlib.compress(painted.tobytes(), 1)).decode()
    prompts = [{"text": "liver", "label": label} for label in range(1, 65)]
    masks = {str(label): {"data": data} for label in range(1, 65)}
    body = json.dumps({"image_id": image.image_id, "prompts": prompts, "mode": "hybrid", "masks": masks}).encode()
    wait_until(lambda: engine.status(blocker.job_id).state == "running")
    before = resident_bytes(server.process.pid)
    with PeakMemory(server.process.pid) as memory:
        queued = []
        for _ in range(3):
            status, job, _ = raw_request(server.url, "POST", "/v1/jobs", body,
                                         {**AUTH, "Content-Type": "application/json"})
            assert status == 202, job
            queued.append(job["job_id"])
    for job_id in [blocker.job_id, *queued]:
        engine.cancel(job_id)
    grown = memory.peak - before
    # Compact: 64 masks × 1.3 MB of bits over their box, per job; as full-image arrays: 256 MB per job.
    assert grown < CACHE_MB * MIB + 256 * MIB and grown < 400 * MIB, f"three queued jobs took {grown / MIB:.0f} MB"


def test_health_answers_at_once_during_45_long_polls_and_hostile_uploads(server, engine):
    """The guard: 45 long polls once held every worker thread (health took 8.9 s), and the uploads above took the
    server's memory; now health answers within 0.5 s and the server stays within its cache + 256 MB."""
    image = small_image(5)
    job = engine.submit(image, [("liver", 1)], options={"stages": ["coarse"]})
    engine.wait(job.job_id)
    finished = engine.status(job.job_id)
    poll_path = f"/v1/jobs/{job.job_id}?wait=10&after={finished.version}"
    polls = [threading.Thread(target=raw_request, args=(server.url, "GET", poll_path, None, AUTH), daemon=True)
             for _ in range(45)]
    before = resident_bytes(server.process.pid)
    with PeakMemory(server.process.pid) as memory:
        for poll in polls:
            poll.start()
        stalled = [stalled_upload(server.url) for _ in range(4)]
        time.sleep(1.0)  # every long poll is waiting now
        latencies = []
        for _ in range(5):
            started = time.monotonic()
            status, answer, _ = raw_request(server.url, "GET", "/health")
            latencies.append(time.monotonic() - started)
            assert status == 200 and answer["status"] == "ok"
        alive = sum(poll.is_alive() for poll in polls)
    for sock in stalled:
        sock.close()
    for poll in polls:
        poll.join(15)
    assert alive == 45, "the long polls ended early, so they did not test anything"
    assert statistics.median(latencies) < 0.5, f"/health took {latencies} s during 45 long polls"
    assert memory.peak - before < CACHE_MB * MIB + 256 * MIB


# -- pipeline edge ------------------------------------------------------------------------------------------------

def test_a_single_voxel_image_with_a_flipped_direction_is_segmented(tmp_path):
    """Once: a flipped axis of size 1 kept a negative stride and torch refused it ("negative strides")."""
    model = load_model(make_tiny_model(tmp_path / "ras", orientation="RAS"))
    flipped = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)
    for shape in ((1, 1, 1), (1, 8, 8)):
        result = segment(model, np.full(shape, 100, np.float32), (1.5, 1.5, 1.5), [Prompt("liver", 1)],
                         direction=flipped, modality="ct", device="cpu")
        assert result.labels.shape == shape


def test_a_compact_mask_expands_to_the_painted_voxels_exactly():
    shape = (9, 17, 23)
    painted = np.zeros(shape, np.uint8)
    painted[2:7, 3:11, 5:20] = np.random.default_rng(7).integers(0, 3, (5, 8, 15))
    painted[2, 3, 5] = 200  # any nonzero value is inside
    box = (1, 8, 2, 14, 4, 21)
    region = painted[1:9, 2:15, 4:22]
    compact = CompactMask.of(region, box[0::2], "mask")
    assert np.array_equal(compact.expand(shape), (painted != 0).astype(np.uint8))
    assert len(compact.bits) <= region.size // 8 + 1
    assert np.array_equal(CompactMask(box, None).expand(shape)[1:9, 2:15, 4:22], np.ones(region.shape, np.uint8))
    with pytest.raises(InputError, match="mask is empty"):
        CompactMask.of(np.zeros((2, 2, 2), np.uint8), (0, 0, 0), "mask")
