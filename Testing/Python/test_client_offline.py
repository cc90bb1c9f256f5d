"""The torch-free client on its own: content ids, mask encoding, version check, unreachable engines.

The version check is tested against a few lines of standard-library HTTP server that answer like a server
of another protocol version, since no such MedalS engine exists to run.
"""
from __future__ import annotations

import base64
import http.server
import json
import threading
import time
import zlib

import numpy as np
import pytest

from server_fixtures import client, free_port

from medals.server import wire


def test_client_image_id_matches_the_server_hash():
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    image = client.ImageRef.of(array, (2.5, 0.8, 0.7))
    assert image.image_id == wire.image_id("int16", (3, 4, 5), (2.5, 0.8, 0.7), array.tobytes())


def test_client_image_id_is_the_same_for_big_endian_input():
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    assert client.ImageRef.of(array.astype(">i2"), (1, 1, 1)).image_id == client.ImageRef.of(array, (1, 1, 1)).image_id


def test_client_refuses_a_voxel_type_the_protocol_does_not_carry():
    with pytest.raises(client.EngineError, match="voxel type complex64 cannot be sent"):
        client.ImageRef.of(np.zeros((2, 2, 2), np.complex64), (1, 1, 1))


def test_encode_mask_sends_only_the_bounding_box_of_the_painted_voxels():
    mask = np.zeros((10, 12, 14), np.uint8)
    mask[2:4, 5, 6:9] = 1
    body = client.encode_mask(mask, mask.shape)
    assert body["box"] == [2, 3, 5, 5, 6, 8]
    crop = np.frombuffer(zlib.decompress(base64.b64decode(body["data"])), np.uint8).reshape(2, 1, 3)
    assert crop.all()


def test_encode_mask_passes_a_box_prompt_as_a_box():
    assert client.encode_mask((1, 2, 3, 4, 5, 6), (10, 10, 10)) == {"box": [1, 2, 3, 4, 5, 6]}


def test_encode_mask_refuses_a_mask_off_the_image_grid():
    with pytest.raises(client.EngineError, match="does not lie on the image grid"):
        client.encode_mask(np.ones((2, 2, 2), np.uint8), (2, 2, 3))


def test_full_labels_places_the_box_on_the_image_grid():
    result = client.SegmentationResult(np.full((1, 2, 2), 5, np.int16), (1, 1, 2, 3, 0, 1), (3, 4, 4))
    full = result.full_labels()
    assert full.sum() == 20 and full[1, 2:4, 0:2].tolist() == [[5, 5], [5, 5]]


class OtherVersionHandler(http.server.BaseHTTPRequestHandler):
    protocol = 2

    def do_GET(self):
        body = json.dumps({"status": "ok", "protocol": self.protocol, "engine": "9.0.0"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def other_version_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OtherVersionHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_connect_names_both_versions_when_the_server_speaks_another_protocol(other_version_server):
    with pytest.raises(client.ProtocolMismatch, match="speaks protocol v2 .*this module needs v1 — update the MedalS "
                                                      "Slicer module"):
        client.EngineClient(other_version_server).connect()


def test_an_engine_that_is_not_running_is_reported_after_the_retries():
    engine = client.EngineClient(f"http://127.0.0.1:{free_port()}", retries=2, retry_delay=0.01)
    start = time.monotonic()
    with pytest.raises(client.EngineUnavailable, match="connection refused: no engine is listening there "
                                                       r"\(3 attempts\)"):
        engine.health()
    assert time.monotonic() - start < 5


def test_client_refuses_an_address_that_is_not_http():
    with pytest.raises(client.EngineError, match="is not an http:// or https:// URL"):
        client.EngineClient("ftp://example.org")
