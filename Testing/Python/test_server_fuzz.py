"""A bounded fuzz run against the server's own OpenAPI document: no 500 anywhere, and the server keeps answering.

Schemathesis generates schema-valid (positive) and schema-violating (negative) requests for every operation and
checks each answer against the document (status codes, content types, response schemas) and for server errors.
Positive job requests are pointed at an uploaded image, so they get past the image lookup into the prompt, mask
and option checks and the pipeline itself. The cases are derandomized: every run tries the same ones.
Schema-valid requests may still be refused (a random body is not a zlib stream, a random id names no job),
so the "valid data is accepted" check is the one left out.
"""
from __future__ import annotations

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from server_fixtures import TOKEN, client, medals_home, server_process, wait_until  # noqa: F401

EXAMPLES_PER_MODE = 25
"""9 operations × 2 modes × 25 = up to 450 cases."""

OPERATIONS = ("GET /health", "GET /v1/info", "POST /v1/images", "GET /v1/images/{image_id}", "POST /v1/jobs",
              "GET /v1/jobs/{job_id}", "POST /v1/jobs/{job_id}/cancel", "GET /v1/jobs/{job_id}/labels",
              "GET /v1/jobs/{job_id}/probabilities/{label}")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(medals_home):  # noqa: F811
    with server_process(medals_home, "--token", TOKEN, "--cache-mb", "4", "--max-upload-mb", "1",
                        "--max-request-mb", "1", "--max-prompts", "8") as process:
        yield process


@pytest.fixture(scope="module")
def schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/v1/openapi.json")


@pytest.fixture(scope="module")
def image_id(server):
    image = client.ImageRef.of(np.random.default_rng(0).integers(0, 255, (8, 8, 8), dtype=np.uint8), (3, 3, 3))
    return client.EngineClient(server.url, TOKEN).upload(image)["image_id"]


def on_uploaded_image(image_id: str):
    def point(case):
        if case.operation.label == "POST /v1/jobs" and isinstance(case.body, dict):
            case.body["image_id"] = image_id
        return case
    return point


@pytest.mark.parametrize("label", OPERATIONS)
def test_fuzzing_an_operation_finds_no_server_error(server, schema, image_id, label):
    operation = schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the published document"
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategy = operation.as_strategy(generation_mode=mode)
        if mode is GenerationMode.POSITIVE:
            strategy = strategy.map(on_uploaded_image(image_id))

        @given(case=strategy)
        @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def call(case):
            case.call_and_validate(base_url=server.url, headers=AUTH,
                                   excluded_checks=[schemathesis.checks.positive_data_acceptance])

        try:
            call()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing in this operation can be made invalid (no inputs)
    assert client.EngineClient(server.url, TOKEN).health()["protocol"] == 1


def test_the_server_ran_every_fuzzed_job_without_an_unexpected_exception(server):
    """Runs after the fuzzing above (file order): waits for the accepted jobs, then reads the server's log."""
    engine = client.EngineClient(server.url, TOKEN)
    wait_until(lambda: engine.info()["queue_length"] == 0, timeout=300, interval=0.5)
    assert server.process.poll() is None
    assert not [line for line in server.lines if "Traceback" in line or "internal error" in line]
