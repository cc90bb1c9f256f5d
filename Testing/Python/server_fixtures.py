"""Shared by the server and client tests: a tiny installed model, live `medals serve` processes, raw requests.

Every server here is a real child process on a free loopback port, started exactly as Slicer's launcher does.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import time
from urllib.parse import urlsplit

import numpy as np
import pytest

from MedalSLib import client  # noqa: F401  (the client the tests import from here)

from medals.server.process import ServerProcess
from medals.weights.testing import make_tiny_model

TOKEN = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def medals_home(tmp_path_factory):
    """A MEDALS_HOME with the tiny random model installed as `tiny`."""
    home = tmp_path_factory.mktemp("medals_home")
    make_tiny_model(home / "models" / "tiny")
    return home


def server_process(medals_home, *args: str, port: int = 0, stdin=None, env: dict | None = None) -> ServerProcess:
    """`medals serve --port PORT --model tiny ARGS` (`--device cpu` unless ARGS name devices) with MEDALS_HOME
    set, not started yet: `with server_process(...) as server:` starts it, waits until it is ready, stops it."""
    env = {**os.environ, "MEDALS_HOME": str(medals_home), **(env or {})}
    devices = [] if "--devices" in args else ["--device", "cpu"]
    return ServerProcess(["--model", "tiny", *devices, *args], port=port, env=env, stdin=stdin)


def connected(server: ServerProcess, token: str | None = None, timeout: float = 30) -> "client.EngineClient":
    """A client of `server` that has checked the server's protocol (`connect`)."""
    engine = client.EngineClient(server.url, token, timeout=timeout)
    engine.connect()
    return engine


def free_port() -> int:
    """A loopback port nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def random_volume(shape, spacing=(1.5, 1.5, 1.5), seed: int = 0, dtype=np.float32):
    """An ImageRef of uniform noise on the 0–255 scale, (k, j, i)."""
    array = (np.random.default_rng(seed).random(shape) * 255).astype(dtype)
    return client.ImageRef.of(array, spacing)


def raw_request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, parsed JSON body or raw bytes, headers) of one plain HTTP request, bypassing the client."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
    if headers.get("content-type", "").startswith("application/json"):
        data = json.loads(data)
    return response.status, data, headers


def resident_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)
