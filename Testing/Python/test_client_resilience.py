"""The client when things go wrong around it: a killed engine, an engine still starting, no torch at all."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from server_fixtures import client, free_port, medals_home, random_volume, server_process, wait_until  # noqa: F401

LOGIC_DIR = Path(__file__).resolve().parents[2] / "MedalS" / "Logic"

PROMPTS = [("liver", 1)]
LONG_JOB = {"stages": ["fine"], "refine_iterations": 2}


def test_an_engine_killed_mid_job_is_reported_as_lost_with_the_job(medals_home):  # noqa: F811
    with server_process(medals_home) as server:
        engine = client.EngineClient(server.url, retries=1, retry_delay=0.05)
        job = engine.submit(random_volume((16, 96, 96)), PROMPTS, modality="ct", options=LONG_JOB)
        wait_until(lambda: engine.status(job.job_id).done >= 1)
        server.kill()
        with pytest.raises(client.EngineUnavailable) as error:
            engine.wait(job.job_id)
    message = str(error.value)
    assert f"lost the MedalS engine while job {job.job_id} was running" in message
    assert "connection refused" in message and "run the segmentation again" in message


def test_the_client_retries_until_a_starting_engine_answers(medals_home):  # noqa: F811
    port = free_port()
    engine = client.EngineClient(f"http://127.0.0.1:{port}", retries=8, retry_delay=0.25)
    answers = []
    asking = threading.Thread(target=lambda: answers.append(engine.health()))
    asking.start()  # refused at first: nothing listens on the port yet
    with server_process(medals_home, port=port) as server:
        asking.join(120)
    assert answers == [{"protocol": 1, "engine": "0.1.0"}]


BLOCKED_IMPORT = """
import sys

class RefuseEngine:
    # Slicer's Python has neither torch nor the engine package: importing either must fail here too.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "medals", "scipy", "fastapi"):
            raise ImportError(f"{name} is not available in Slicer's Python")

sys.meta_path.insert(0, RefuseEngine())
sys.path.insert(0, sys.argv[1])
from MedalSLib.client import EngineClient
print(EngineClient(sys.argv[2]).connect()["protocol"])
"""


def test_the_client_works_with_only_the_standard_library_and_numpy(medals_home):  # noqa: F811
    with server_process(medals_home) as server:
        run = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT, str(LOGIC_DIR), server.url], capture_output=True,
                             text=True, encoding="utf-8", timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "1"


def test_serve_refuses_a_non_loopback_host_without_a_token():
    env = {name: value for name, value in os.environ.items() if name != "MEDALS_SERVER_TOKEN"}
    run = subprocess.run([sys.executable, "-m", "medals.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
                         capture_output=True, text=True, encoding="utf-8", timeout=120, env=env)
    assert run.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in run.stderr
