"""Every endpoint of protocol v1 through the torch-free client, against a real `medals serve` on loopback.

The server runs the tiny random model (crop 32³) on the CPU; its jobs take a fraction of a second per window.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import zlib
from urllib.parse import urlsplit

import numpy as np
import pytest
from server_fixtures import (TOKEN, client, connected, medals_home, random_volume, raw_request,  # noqa: F401
                             resident_bytes, server_process, wait_until)

from medals.errors import InputError, MedalSError
from medals.pipeline import Prompt, SegmentOptions, SegmentResult, segment
from medals.server.remote import segment_remote
from medals.vocabulary import color, default_vocabulary, lookup
from medals.weights import load_model

PROMPTS = [("liver", 1), ("left kidney", 2)]
CACHE_MB = 0.25
MAX_UPLOAD_MB = 0.5
LONG_JOB = {"stages": ["fine"], "refine_iterations": 2}
"""With a (16, 96, 96) image: 9 fine windows of three forwards each, a few seconds in all."""


@pytest.fixture(scope="module")
def server(medals_home):  # noqa: F811
    with server_process(medals_home, "--token", TOKEN, "--cache-mb", str(CACHE_MB), "--max-upload-mb",
                        str(MAX_UPLOAD_MB), "--max-prompts", "4", "--max-voxels", "200000") as process:
        yield process


@pytest.fixture(scope="module")
def engine(server):
    return connected(server, TOKEN)


@pytest.fixture(scope="module")
def in_process_model(medals_home):  # noqa: F811
    return load_model(medals_home / "models" / "tiny")


def in_process_labels(model, image, prompts, options=SegmentOptions(), masks=None):
    """The same request run by the pipeline in this process: what the server must reproduce."""
    result = segment(model, image.array, image.spacing, [Prompt(text, label) for text, label in prompts],
                     modality="ct", options=options, masks=masks, device="cpu")
    return result


def upload_headers(image, **overrides):
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream",
               "X-Medals-Dtype": image.array.dtype.name, "X-Medals-Shape": ",".join(map(str, image.array.shape)),
               "X-Medals-Spacing": ",".join(map(str, image.spacing))}
    headers.update(overrides)
    return headers


# -- health, info, OpenAPI -------------------------------------------------------------------------------------

def test_health_reports_protocol_and_engine_versions(engine):
    assert engine.health() == {"protocol": 1, "engine": "0.1.0"}


def test_info_reports_device_precision_model_and_limits(engine):
    info = engine.info()
    assert info["device"]["device"] == "cpu" and info["model"] == "tiny" and info["installed_models"] == ["tiny"]
    assert info["precision"] == "auto"  # medals serve --precision (bf16: test_slicer_widget's cpu bf16 engine)
    assert "ct" in info["modalities"]
    assert info["limits"]["max_upload_bytes"] == int(MAX_UPLOAD_MB * 2 ** 20) and info["limits"]["max_prompts"] == 4


def test_info_lists_every_structure_of_the_engines_vocabulary_with_synonyms_codes_and_colour(engine):
    vocabulary = engine.info()["vocabulary"]
    liver = next(entry for entry in vocabulary if entry["name"] == "liver")
    assert len(vocabulary) == len(default_vocabulary().entries)
    assert liver == {"name": "liver", "synonyms": list(lookup("liver").synonyms), "laterality": None,
                     "modalities": list(lookup("liver").modalities),
                     "category": {"code": "123037004", "meaning": "Anatomical Structure"},
                     "sct": {"code": "10200004", "meaning": "Liver"}, "color": list(color("liver"))}


def test_the_client_exposes_the_engines_structures_after_connecting(engine):
    left_kidney = next(structure for structure in engine.vocabulary if structure.name == "left kidney")
    assert left_kidney.laterality == "left" and left_kidney.sct == ("64033007", "Kidney")
    assert "kidney left" in left_kidney.synonyms and left_kidney.color == color("kidney")


def test_openapi_document_publishes_every_route_and_the_bearer_scheme(server):
    status, document, _ = raw_request(server.url, "GET", "/v1/openapi.json")
    assert status == 200 and document["info"]["title"] == "MedalS engine"
    assert set(document["paths"]) == {"/health", "/v1/info", "/v1/images", "/v1/images/{image_id}", "/v1/jobs",
                                      "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/labels",
                                      "/v1/jobs/{job_id}/probabilities/{label}"}
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# -- images --------------------------------------------------------------------------------------------------

def test_upload_answers_with_the_content_id_and_geometry(engine):
    image = random_volume((8, 10, 12), spacing=(2.5, 0.8, 0.7), seed=1, dtype=np.int16)
    record = engine.upload(image)
    assert record == {"image_id": image.image_id, "dtype": "int16", "shape": [8, 10, 12],
                      "spacing": [2.5, 0.8, 0.7], "direction": None, "nbytes": 8 * 10 * 12 * 2}
    assert engine.has_image(image)


def test_an_evicted_image_answers_404_saying_upload_again(engine, server):
    first = random_volume((32, 32, 32), seed=2)  # 128 KiB each; the cache holds 256 KiB
    for image in (first, random_volume((32, 32, 32), seed=3), random_volume((32, 32, 32), seed=4)):
        engine.upload(image)
    status, body, _ = raw_request(server.url, "GET", f"/v1/images/{first.image_id}",
                                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert (status, body["code"]) == (404, "image_not_found") and "upload it again" in body["detail"]


def test_the_client_uploads_an_evicted_image_again_and_the_job_runs(engine, in_process_model):
    image = random_volume((16, 24, 24), spacing=(3, 3, 3), seed=5)
    engine.upload(image)
    for seed in (6, 7, 8):
        engine.upload(random_volume((32, 32, 32), seed=seed))
    assert not engine.has_image(image)
    result = engine.segment(image, PROMPTS, modality="ct", options={"stages": ["coarse"]})
    expected = in_process_labels(in_process_model, image, PROMPTS, SegmentOptions(stages=("coarse",)))
    assert engine.has_image(image) and np.array_equal(result.full_labels(), expected.labels)


def test_a_truncated_body_is_refused_with_400(server):
    image = random_volume((8, 8, 8), seed=9)
    body = image.compressed()
    status, answer, _ = raw_request(server.url, "POST", "/v1/images", body[: len(body) // 2], upload_headers(image))
    assert status == 400 and "truncated" in answer["detail"]


def test_a_dtype_outside_the_protocol_is_refused_with_400(server):
    image = random_volume((8, 8, 8), seed=9)
    status, answer, _ = raw_request(server.url, "POST", "/v1/images", image.compressed(),
                                    upload_headers(image, **{"X-Medals-Dtype": "complex64"}))
    assert status == 400 and "X-Medals-Dtype" in answer["detail"]


def test_a_body_that_does_not_match_its_shape_is_refused_with_400(server):
    image = random_volume((8, 8, 8), seed=9)
    status, answer, _ = raw_request(server.url, "POST", "/v1/images", image.compressed(),
                                    upload_headers(image, **{"X-Medals-Shape": "8,8,4"}))
    assert status == 400 and "inflates to more than the 1024 bytes" in answer["detail"]


def test_nan_voxels_are_refused_with_400_naming_their_count(server):
    array = np.zeros((8, 8, 8), np.float32)
    array[1, 2, 3] = np.nan
    image = client.ImageRef.of(array, (1, 1, 1))
    status, answer, _ = raw_request(server.url, "POST", "/v1/images", image.compressed(), upload_headers(image))
    assert status == 400 and answer["detail"].startswith("image has 1 NaN or infinite voxels")


def test_an_image_over_the_voxel_limit_is_refused_with_413_before_its_body_is_read(server):
    image = random_volume((8, 8, 8))
    status, answer, _ = raw_request(server.url, "POST", "/v1/images", image.compressed(),
                                    upload_headers(image, **{"X-Medals-Shape": "100,100,100"}))
    assert status == 413 and answer["detail"] == "image of 1000000 voxels is over this server's limit of 200000"


def test_an_upload_declaring_an_oversized_body_is_refused_with_413_before_it_is_sent(server):
    pid = server.process.pid
    before = resident_bytes(pid)
    image = random_volume((8, 8, 8))
    status, answer, _ = raw_request(server.url, "POST", "/v1/images", None,
                                    upload_headers(image, **{"Content-Length": str(200 << 20)}))
    assert status == 413 and "over this server's limit" in answer["detail"]
    assert resident_bytes(pid) - before < 8 << 20


def test_a_streamed_oversized_upload_is_cut_off_while_counting_without_memory_growth(server):
    """A chunked upload (no Content-Length) of 64 MiB against a 0.5 MiB limit is refused as its bytes arrive.

    The body is a valid zlib stream of empty blocks, so it inflates to nothing and only the byte count stops it.
    """
    pid = server.process.pid
    before = resident_bytes(pid)
    empty_blocks = b"\x00\x00\x00\xff\xff" * (1 << 18)  # 1.25 MiB of empty zlib blocks

    def body():
        yield b"x\x9c"  # zlib header
        for _ in range(50):
            yield empty_blocks

    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("POST", "/v1/images", body=body(), headers=upload_headers(random_volume((8, 8, 8))),
                           encode_chunked=True)
        response = connection.getresponse()
        status, answer = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert (status, answer["code"]) == (413, "payload_too_large")
    assert resident_bytes(pid) - before < 16 << 20


def test_a_client_hanging_up_mid_upload_leaves_the_server_answering_with_a_clean_log(server, engine):
    image = random_volume((8, 8, 8), seed=27)
    head = "".join(f"{name}: {value}\r\n" for name, value in upload_headers(image).items())
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port)) as connection:
        connection.sendall(f"POST /v1/images HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: 100000\r\n"
                           f"{head}\r\n".encode() + image.compressed()[:10])
    time.sleep(1.0)  # the server notices the hang-up when it next reads the body
    assert engine.health()["protocol"] == 1
    assert not [line for line in server.lines if "Traceback" in line]


# -- jobs ----------------------------------------------------------------------------------------------------

def test_a_text_job_returns_the_in_process_labels_over_its_box_with_statistics(engine, in_process_model):
    image = random_volume((16, 24, 24), spacing=(3, 3, 3), seed=10)
    progress = []
    result = engine.segment(image, PROMPTS, modality="ct", progress=progress.append)
    expected = in_process_labels(in_process_model, image, PROMPTS)
    assert result.box == expected.box and np.array_equal(result.full_labels(), expected.labels)
    assert result.stats[1]["name"] == "liver" and result.stats[2]["voxels"] == expected.stats[2]["voxels"]
    assert progress[-1].state == "succeeded" and progress[-1].done == progress[-1].total > 0


def test_a_job_without_modality_runs_with_the_one_detected_from_its_prompts(engine, in_process_model):
    image = random_volume((16, 24, 24), spacing=(3, 3, 3), seed=30)
    prompts = [("liver in CT", 1), ("spleen", 2)]
    result = engine.segment(image, prompts)
    expected = segment(in_process_model, image.array, image.spacing, [Prompt(text, label) for text, label in prompts],
                       device="cpu")
    assert result.modality == expected.modality == "ct"
    assert np.array_equal(result.full_labels(), expected.labels)


def test_a_hybrid_job_takes_a_painted_mask_and_a_box_prompt(engine, in_process_model):
    image = random_volume((16, 24, 24), spacing=(3, 3, 3), seed=11)
    painted = np.zeros(image.array.shape, np.uint8)
    painted[4:8, 6:12, 6:12] = 1
    box = (2, 5, 10, 20, 10, 20)
    box_mask = np.zeros(image.array.shape, np.uint8)
    box_mask[2:6, 10:21, 10:21] = 1
    result = engine.segment(image, PROMPTS, modality="ct", masks={1: painted, 2: box})
    expected = in_process_labels(in_process_model, image, PROMPTS, masks={1: painted, 2: box_mask})
    assert np.array_equal(result.full_labels(), expected.labels)


def test_options_box_limits_the_returned_labels_to_that_box(engine):
    image = random_volume((16, 24, 24), spacing=(3, 3, 3), seed=12)
    result = engine.segment(image, PROMPTS, modality="ct", options={"box": [2, 9, 3, 14, 4, 19]})
    assert result.box == (2, 9, 3, 14, 4, 19) and result.labels.shape == (8, 12, 16)


def test_status_reports_queue_position_while_another_job_runs(engine):
    long = random_volume((16, 96, 96), seed=13, dtype=np.uint8)
    short = random_volume((8, 8, 8), spacing=(3, 3, 3), seed=14)
    running = engine.submit(long, PROMPTS, modality="ct", options=LONG_JOB)
    waiting = engine.submit(short, PROMPTS, modality="ct")
    try:
        assert waiting.state == "queued" and waiting.queue_position == 1
        wait_until(lambda: engine.status(running.job_id).done >= 1)
        state = engine.status(running.job_id)
        assert state.state == "running" and state.stage == "fine" and state.total > state.done
        assert state.eta_seconds is not None and state.eta_seconds > 0
    finally:
        engine.cancel(running.job_id)
    assert engine.wait(waiting.job_id).state == "succeeded"


def test_a_long_poll_answers_when_the_job_changes_not_at_its_timeout(engine):
    image = random_volume((16, 96, 96), seed=25, dtype=np.uint8)
    job = engine.submit(image, PROMPTS, modality="ct", options=LONG_JOB)
    try:
        first = engine.status(job.job_id)
        start = time.monotonic()
        changed = engine.status(job.job_id, wait=10, after=first.version)
        assert changed.version > first.version and time.monotonic() - start < 8
    finally:
        engine.cancel(job.job_id)


def test_a_long_poll_on_a_finished_job_waits_out_its_timeout(engine):
    image = random_volume((8, 8, 8), spacing=(3, 3, 3), seed=26)
    finished = engine.wait(engine.submit(image, PROMPTS, modality="ct").job_id)
    start = time.monotonic()
    assert engine.status(finished.job_id, wait=0.3, after=finished.version).version == finished.version
    assert time.monotonic() - start >= 0.3


def test_cancel_stops_a_running_job_within_one_window(engine):
    image = random_volume((16, 96, 96), seed=15, dtype=np.uint8)
    job = engine.submit(image, PROMPTS, modality="ct", options=LONG_JOB)
    wait_until(lambda: engine.status(job.job_id).done >= 1)
    done_at_cancel = engine.cancel(job.job_id).done
    with pytest.raises(client.JobCancelled):
        engine.wait(job.job_id)
    final = engine.status(job.job_id)
    assert final.state == "cancelled" and final.done <= done_at_cancel + 1 < final.total


def test_setting_the_cancel_event_cancels_the_job_being_waited_for(engine):
    image = random_volume((16, 96, 96), seed=16, dtype=np.uint8)
    cancel = threading.Event()
    with pytest.raises(client.JobCancelled):
        engine.segment(image, PROMPTS, modality="ct", options=LONG_JOB, cancel=cancel,
                       progress=lambda state: cancel.set() if state.done >= 1 else None)


def test_two_clients_at_once_both_finish_with_their_own_results(server, in_process_model):
    images = [random_volume((16, 24, 24), spacing=(3, 3, 3), seed=seed) for seed in (17, 18)]
    prompts = [PROMPTS, [("spleen", 5)]]
    results = [None, None]

    def run(index):
        own = client.EngineClient(server.url, TOKEN)
        own.connect()
        results[index] = own.segment(images[index], prompts[index], modality="ct")

    threads = [threading.Thread(target=run, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for index in (0, 1):
        expected = in_process_labels(in_process_model, images[index], prompts[index])
        assert np.array_equal(results[index].full_labels(), expected.labels)
    assert set(results[1].stats) == {5}


def test_labels_of_a_job_that_has_not_succeeded_answer_409(engine, server):
    image = random_volume((16, 96, 96), seed=19, dtype=np.uint8)
    job = engine.submit(image, PROMPTS, modality="ct", options=LONG_JOB)
    engine.cancel(job.job_id)
    status, answer, _ = raw_request(server.url, "GET", f"/v1/jobs/{job.job_id}/labels",
                                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 409 and answer["code"] == "job_not_finished"


def test_labels_travel_as_zlib_int16_over_the_box(engine, server):
    image = random_volume((8, 8, 8), spacing=(3, 3, 3), seed=20)
    state = engine.wait(engine.submit(image, PROMPTS, modality="ct").job_id)
    status, body, headers = raw_request(server.url, "GET", f"/v1/jobs/{state.job_id}/labels",
                                        headers={"Authorization": f"Bearer {TOKEN}"})
    shape = tuple(int(n) for n in headers["x-medals-shape"].split(","))
    assert status == 200 and headers["x-medals-dtype"] == "int16"
    assert len(zlib.decompress(body)) == 2 * int(np.prod(shape))


# -- probability maps ------------------------------------------------------------------------------------------

QUANTUM = 0.5 / 255 + 1e-6
"""The most a probability moves on the wire: uint8 steps of 1/255, rounded to the nearest."""


def test_probability_maps_come_back_over_the_box_within_one_wire_step_of_the_in_process_ones(engine,
                                                                                             in_process_model):
    image = random_volume((16, 24, 24), spacing=(3, 3, 3), seed=31)
    options = {"probabilities": True, "box": [2, 11, 3, 18, 4, 21]}
    result = engine.segment(image, PROMPTS, modality="ct", options=options)
    expected = in_process_labels(in_process_model, image, PROMPTS, SegmentOptions(probabilities=True,
                                                                                  box=tuple(options["box"])))
    assert set(result.probabilities) == {1, 2}
    for label, probability in result.full_probabilities().items():
        assert probability.dtype == np.float32 and result.probabilities[label].shape == result.labels.shape
        np.testing.assert_allclose(probability, expected.probabilities[label], rtol=0, atol=QUANTUM)


def test_probabilities_travel_as_zlib_uint8_over_the_box(engine, server):
    image = random_volume((8, 8, 8), spacing=(3, 3, 3), seed=32)
    state = engine.wait(engine.submit(image, PROMPTS, modality="ct", options={"probabilities": True}).job_id)
    status, body, headers = raw_request(server.url, "GET", f"/v1/jobs/{state.job_id}/probabilities/2",
                                        headers={"Authorization": f"Bearer {TOKEN}"})
    shape = tuple(int(n) for n in headers["x-medals-shape"].split(","))
    assert status == 200 and headers["x-medals-dtype"] == "uint8" and state.result["probabilities"] == [1, 2]
    assert len(zlib.decompress(body)) == int(np.prod(shape)) and shape == tuple(state.result["shape"])


def test_a_job_run_without_the_option_keeps_no_probability_map(engine, server):
    image = random_volume((8, 8, 8), spacing=(3, 3, 3), seed=33)
    state = engine.wait(engine.submit(image, PROMPTS, modality="ct").job_id)
    status, answer, _ = raw_request(server.url, "GET", f"/v1/jobs/{state.job_id}/probabilities/1",
                                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert state.result["probabilities"] == [] and engine.result(state).probabilities == {}
    assert (status, answer["code"]) == (404, "probability_map_not_found") and "options.probabilities" in \
        answer["detail"]


# -- request validation ----------------------------------------------------------------------------------------

def test_more_prompts_than_the_limit_are_refused_with_400(engine):
    image = random_volume((8, 8, 8), seed=21)
    with pytest.raises(client.EngineError, match="5 prompts are over this server's limit of 4") as error:
        engine.submit(image, [(f"structure {n}", n) for n in range(1, 6)], modality="ct")
    assert error.value.status == 400


def test_a_mask_for_a_label_no_prompt_has_is_refused_with_400(engine):
    image = random_volume((8, 8, 8), seed=22)
    with pytest.raises(client.EngineError, match="mask key '7' is not the label value of a prompt"):
        engine.submit(image, PROMPTS, modality="ct", masks={7: (0, 1, 0, 1, 0, 1)})


def test_a_box_outside_the_image_is_refused_with_400(engine):
    image = random_volume((8, 8, 8), seed=23)
    with pytest.raises(client.EngineError, match=r"options.box \[0, 8, 0, 1, 0, 1\] does not lie inside"):
        engine.submit(image, PROMPTS, modality="ct", options={"box": [0, 8, 0, 1, 0, 1]})


def test_an_unknown_option_is_refused_with_400_naming_it(engine):
    image = random_volume((8, 8, 8), seed=24)
    with pytest.raises(client.EngineError, match="options.temperature: Extra inputs are not permitted"):
        engine.submit(image, PROMPTS, modality="ct", options={"temperature": 0.5})


# -- security ------------------------------------------------------------------------------------------------

def test_a_wrong_token_is_refused_with_401(server):
    with pytest.raises(client.EngineError, match="refused the token") as error:
        client.EngineClient(server.url, "wrong-token").info()
    assert error.value.status == 401


def test_a_missing_token_is_refused_with_401_before_the_body_is_read(server):
    status, answer, headers = raw_request(server.url, "POST", "/v1/images", None, {"Content-Length": str(1 << 30)})
    assert (status, answer["code"]) == (401, "unauthorized") and headers["www-authenticate"] == "Bearer"


def test_no_cors_headers_are_sent_to_a_browser_origin(server):
    status, _, headers = raw_request(server.url, "OPTIONS", "/v1/info", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert status in (401, 405) and not any(name.startswith("access-control-") for name in headers)


# -- `medals segment --server`: the engine behind a URL, called like pipeline.segment ----------------------------

def test_segment_remote_returns_the_in_process_result_on_the_whole_grid(server, in_process_model):
    image = random_volume((16, 24, 24), spacing=(3, 3, 3), seed=28)
    prompts = [Prompt(text, label) for text, label in PROMPTS]
    events = []
    result = segment_remote(server.url, image.array, image.spacing, prompts, token=TOKEN, modality="ct",
                            progress=events.append)
    expected = in_process_labels(in_process_model, image, PROMPTS)
    assert isinstance(result, SegmentResult) and result.probabilities is None and result.modality == "ct"
    assert np.array_equal(result.labels, expected.labels) and result.box == expected.box
    assert events and events[-1].done == events[-1].total


def test_segment_remote_returns_probability_maps_on_the_whole_grid_zero_outside_the_box(server, in_process_model):
    image = random_volume((16, 24, 24), spacing=(3, 3, 3), seed=34)
    options = SegmentOptions(probabilities=True, box=(3, 12, 2, 17, 5, 20))
    result = segment_remote(server.url, image.array, image.spacing, [Prompt(text, label) for text, label in PROMPTS],
                            token=TOKEN, modality="ct", options=options)
    expected = in_process_labels(in_process_model, image, PROMPTS, options)
    outside = np.ones(image.array.shape, bool)
    outside[3:13, 2:18, 5:21] = False
    assert set(result.probabilities) == {1, 2}
    for label, probability in result.probabilities.items():
        assert probability.shape == image.array.shape and not probability[outside].any()
        np.testing.assert_allclose(probability, expected.probabilities[label], rtol=0, atol=QUANTUM)


def test_segment_remote_reports_a_refused_request_as_an_input_error(server):
    image = random_volume((8, 8, 8), seed=29)
    with pytest.raises(InputError, match="options.box"):
        segment_remote(server.url, image.array, image.spacing, [Prompt("liver", 1)], token=TOKEN, modality="ct",
                       options=SegmentOptions(box=(0, 9, 0, 1, 0, 1)))


def test_segment_remote_reports_an_unreachable_engine_in_one_line():
    with pytest.raises(MedalSError, match="cannot reach the engine at http://127.0.0.1:9"):
        segment_remote("http://127.0.0.1:9", np.zeros((2, 2, 2), np.uint8), (1, 1, 1), [Prompt("liver", 1)],
                       retries=0)
