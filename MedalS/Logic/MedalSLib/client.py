"""Client of the MedalS engine's HTTP protocol v1, with only the standard library and numpy.

It runs in Slicer's Python (no torch) and in `medals segment --server URL`. Arrays are in numpy (k, j, i)
order with spacing in mm in the same order; boxes are (k0, k1, j0, j1, i0, i1) with inclusive ends.

    client = EngineClient("http://127.0.0.1:8765", token=None)
    client.connect()                                  # version check; raises ProtocolMismatch
    image = ImageRef.of(volume_array, spacing)        # content id, computed once per volume
    result = client.segment(image, [("liver", 1), ("spleen", 2)], progress=print)
    labels = result.full_labels()                     # (k, j, i) int16 on the image's grid

Every request opens its own connection, so one client may be used from a worker thread while another thread
cancels. Dropped connections are retried (job submission carries a request id, so a retry never queues a
second job); an image the server evicted is uploaded again.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import quote, urlsplit

import numpy as np

from .errors import ModuleError

PROTOCOL_VERSION = 1
"""The protocol this module speaks; a server of another version is refused on connect."""

IMAGE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
FINISHED_STATES = ("succeeded", "failed", "cancelled")
PROBABILITY_SCALE = 255
"""Probability maps travel as uint8: value v stands for v / 255."""


class EngineUnavailable(ModuleError):
    """The engine cannot be reached, or stopped answering (crashed, killed, network down)."""


class ProtocolMismatch(ModuleError):
    """The server speaks another protocol version, or is not a MedalS engine at all."""


class EngineError(ModuleError):
    """The engine refused a request or a job failed; `status` is the HTTP status, `code` the error kind."""

    def __init__(self, message: str, status: int = 0, code: str = ""):
        super().__init__(message)
        self.status, self.code = status, code


class ImageEvicted(EngineError):
    """The server no longer holds the image (evicted from its cache, or restarted): upload it again."""


class JobCancelled(EngineError):
    """The job was cancelled before it finished; nothing was produced."""


@dataclass(frozen=True)
class ImageRef:
    """A volume as the engine knows it: (k, j, i) voxels, spacing in mm (k, j, i), its ITK direction matrix (nine
    numbers, row-major, LPS; None when unknown) and its content id.

    Build it once per volume change (`ImageRef.of`); the id is what the server caches the upload under. The
    direction lets a model trained in one orientation turn the volume to it (and the labels back).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    image_id: str
    direction: tuple[float, ...] | None = None

    @classmethod
    def of(cls, array: np.ndarray, spacing, direction=None) -> "ImageRef":
        array = np.asarray(array)
        if array.ndim != 3:
            raise EngineError(f"the engine segments 3D volumes; this array has shape {array.shape}")
        if array.dtype.name not in IMAGE_DTYPES:
            raise EngineError(f"voxel type {array.dtype.name} cannot be sent; use one of {', '.join(IMAGE_DTYPES)}")
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3:
            raise EngineError(f"spacing needs three values (k, j, i) in mm, got {spacing}")
        if direction is not None:
            direction = tuple(float(d) for d in np.ravel(direction))
            if len(direction) != 9:
                raise EngineError(f"direction needs nine values (a 3×3 matrix), got {len(direction)}")
        array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
        digest = hashlib.sha256(image_header(array.dtype.name, array.shape, spacing, direction))
        digest.update(memoryview(array).cast("B"))
        return cls(array, spacing, digest.hexdigest(), direction)

    def compressed(self) -> bytes:
        return zlib.compress(memoryview(self.array).cast("B"), 1)


def image_header(dtype: str, shape, spacing, direction=None) -> bytes:
    """The canonical line hashed before the voxel bytes into an image id (the server uses this very function):
    b"int16|200,256,256|2.5,0.8,0.8\\n", with "|" and the nine direction numbers before the newline when the
    direction is sent."""
    line = f"{dtype}|{','.join(str(int(n)) for n in shape)}|{','.join(repr(float(s)) for s in spacing)}"
    if direction is not None:
        line += "|" + ",".join(repr(float(d)) for d in direction)
    return (line + "\n").encode()


@dataclass(frozen=True)
class JobProgress:
    """One poll of a job: state, queue position while queued, and windows done/total of the current stage.

    `version` grows with every change the server saw; waiting for a change past it is a long poll.
    """

    job_id: str
    version: int
    state: str
    queue_position: int | None
    stage: str
    done: int
    total: int
    message: str
    eta_seconds: float | None
    run_seconds: float | None = None
    error: dict | None = None
    result: dict | None = None

    @classmethod
    def from_body(cls, body: dict) -> "JobProgress":
        return cls(**{name: body.get(name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class SegmentationResult:
    """Labels over the changed box only, with per-label statistics (name, voxels, volume_ml, mean_confidence).

    probabilities: prompt label value → float32 (k, j, i) probability in [0, 1] over the same box (empty unless
    the job was run with the `probabilities` option); the engine sends them in steps of 1/255.
    refined: the engine refined its kept result around the edit (only the windows there ran): the box is where
    labels may have changed, and contains the box the request named.
    """

    labels: np.ndarray
    box: tuple[int, int, int, int, int, int]
    image_shape: tuple[int, int, int]
    stats: dict[int, dict] = field(default_factory=dict)
    modality: str | None = None
    probabilities: dict[int, np.ndarray] = field(default_factory=dict)
    refined: bool = False

    def full_labels(self) -> np.ndarray:
        """(k, j, i) int16 labels on the whole image grid, zero outside the box."""
        return self._on_image_grid(self.labels)

    def full_probabilities(self) -> dict[int, np.ndarray]:
        """Label value → (k, j, i) float32 probability on the whole image grid, zero outside the box."""
        return {label: self._on_image_grid(probability) for label, probability in self.probabilities.items()}

    def _on_image_grid(self, array: np.ndarray) -> np.ndarray:
        full = np.zeros(self.image_shape, array.dtype)
        k0, k1, j0, j1, i0, i1 = self.box
        full[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = array
        return full


@dataclass(frozen=True)
class Structure:
    """One structure the engine knows (its info's `vocabulary`): the names a prompt may use for it, and how a
    segment of it is named and coloured.

    laterality: "left", "right" or None. category and sct: SNOMED CT (code, meaning) of its Slicer terminology
    category and type (the type without laterality); None where the terminology lists none. color: RGB 0–255.
    """

    name: str
    synonyms: tuple[str, ...]
    laterality: str | None
    modalities: tuple[str, ...]
    category: tuple[str, str] | None
    sct: tuple[str, str] | None
    color: tuple[int, int, int]

    @classmethod
    def from_body(cls, body: dict) -> "Structure":
        def coded(values):
            return (str(values["code"]), str(values["meaning"])) if values else None

        return cls(str(body["name"]), tuple(body["synonyms"]), body["laterality"], tuple(body["modalities"]),
                   coded(body["category"]), coded(body["sct"]), tuple(int(c) for c in body["color"]))

    @property
    def terms(self) -> tuple[str, ...]:
        """Its name, then its synonyms."""
        return (self.name, *self.synonyms)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def encode_mask(mask, image_shape) -> dict:
    """A painted mask as protocol JSON: the array cropped to its nonzero bounding box, or a bare box.

    `mask` is a (k, j, i) array on the image grid (nonzero = inside), or a box (k0, k1, j0, j1, i0, i1).
    """
    if not isinstance(mask, np.ndarray):
        box = [int(v) for v in mask]
        if len(box) != 6:
            raise EngineError(f"a box prompt is (k0, k1, j0, j1, i0, i1); got {mask}")
        return {"box": box}
    if mask.shape != tuple(image_shape):
        raise EngineError(f"a mask of shape {mask.shape} does not lie on the image grid {tuple(image_shape)}")
    inside = np.nonzero(mask)
    if not inside[0].size:
        raise EngineError("a painted mask is empty; leave it out instead")
    box = [int(bound) for axis in inside for bound in (axis.min(), axis.max())]
    k0, k1, j0, j1, i0, i1 = box
    crop = np.ascontiguousarray(mask[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] != 0, dtype=np.uint8)
    return {"box": box, "data": base64.b64encode(zlib.compress(crop.tobytes(), 1)).decode("ascii")}


class EngineClient:
    """Protocol v1 over HTTP(S) to one engine at `url` ("http://host:port", optionally with a path prefix).

    timeout: seconds any single socket operation may wait. retries: extra attempts after a dropped
    connection, `retry_delay` seconds apart, doubling each time.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, retries: int = 3,
                 retry_delay: float = 0.5):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EngineError(f"engine address {url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self._connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._host, self._port, self._prefix = parts.hostname, parts.port, parts.path.rstrip("/")
        self.token, self.timeout, self.retries, self.retry_delay = token, timeout, retries, retry_delay
        self.limits: dict | None = None
        self.vocabulary: list[Structure] = []
        """The structures the engine knows, from its info on `connect`."""

    # -- connection -------------------------------------------------------------------------------------------

    def health(self) -> dict:
        """Engine and protocol versions; needs no token."""
        reply = self._request("GET", "/health")
        try:
            body = reply.json()
            return {"protocol": int(body["protocol"]), "engine": str(body["engine"])}
        except (ValueError, KeyError, TypeError):
            raise ProtocolMismatch(f"{self.url} is not a MedalS engine (its /health answer is not the engine's)") \
                from None

    def connect(self) -> dict:
        """Check the protocol version, then return the server's info (device, memory, models, vocabulary, limits)."""
        health = self.health()
        if health["protocol"] != PROTOCOL_VERSION:
            newer = "MedalS Slicer module" if health["protocol"] > PROTOCOL_VERSION else "engine on the server"
            raise ProtocolMismatch(f"the engine at {self.url} speaks protocol v{health['protocol']} (engine "
                                   f"{health['engine']}); this module needs v{PROTOCOL_VERSION} — update the {newer}")
        info = self.info()
        self.limits = info["limits"]
        self.vocabulary = [Structure.from_body(body) for body in info["vocabulary"]]
        return info

    def info(self) -> dict:
        return self._request("GET", "/v1/info").json()

    # -- images -----------------------------------------------------------------------------------------------

    def has_image(self, image: ImageRef) -> bool:
        try:
            self._request("GET", f"/v1/images/{image.image_id}")
        except ImageEvicted:
            return False
        return True

    def upload(self, image: ImageRef) -> dict:
        """Send the volume (compressed); the server answers with its record (id, dtype, shape, spacing)."""
        body = image.compressed()
        if self.limits is not None and len(body) > self.limits["max_upload_bytes"]:
            raise EngineError(f"the compressed volume has {len(body)} bytes, over this engine's upload limit of "
                              f"{self.limits['max_upload_bytes']}", 413, "payload_too_large")
        headers = {"Content-Type": "application/octet-stream", "X-Medals-Dtype": image.array.dtype.name,
                   "X-Medals-Shape": ",".join(map(str, image.array.shape)),
                   "X-Medals-Spacing": ",".join(repr(s) for s in image.spacing)}
        if image.direction is not None:
            headers["X-Medals-Direction"] = ",".join(repr(d) for d in image.direction)
        record = self._request("POST", "/v1/images", body, headers).json()
        if record["image_id"] != image.image_id:
            raise ProtocolMismatch(f"the engine stored the volume as {record['image_id']}, not {image.image_id}: it "
                                   "hashes images differently from this module")
        return record

    # -- jobs -------------------------------------------------------------------------------------------------

    def submit(self, image: ImageRef, prompts, *, modality: str | None = None, masks: dict | None = None,
               mode: str | None = None, options: dict | None = None) -> JobProgress:
        """Queue a job; uploads the volume first when the server does not hold it (never sent, or evicted).

        prompts: (text, label) pairs. masks: label → (k, j, i) array on the image grid or a box. mode defaults
        to "hybrid" when masks are given, else "text". options: see the server's OpenAPI `OptionsBody`.
        """
        request = {"image_id": image.image_id, "prompts": [{"text": str(text), "label": int(label)}
                                                           for text, label in prompts],
                   "modality": modality, "mode": mode or ("hybrid" if masks else "text"),
                   "masks": {str(int(label)): encode_mask(mask, image.array.shape)
                             for label, mask in (masks or {}).items()},
                   "options": options or {}, "request_id": uuid.uuid4().hex}
        body = json.dumps(request).encode()
        headers = {"Content-Type": "application/json"}
        try:
            reply = self._request("POST", "/v1/jobs", body, headers)
        except ImageEvicted:
            self.upload(image)
            reply = self._request("POST", "/v1/jobs", body, headers)
        return JobProgress.from_body(reply.json())

    def status(self, job_id: str, wait: float = 0.0, after: int | None = None) -> JobProgress:
        """The job now; with `wait` > 0 the server answers as soon as it changes past version `after` (or the
        version it has now), at the latest after `wait` seconds (at most 10)."""
        query = f"?wait={wait:g}" + (f"&after={after}" if after is not None else "") if wait else ""
        return JobProgress.from_body(self._request("GET", f"/v1/jobs/{quote(job_id)}{query}").json())

    def cancel(self, job_id: str) -> JobProgress:
        """Ask the engine to stop the job; it ends within one window."""
        return JobProgress.from_body(self._request("POST", f"/v1/jobs/{quote(job_id)}/cancel").json())

    def wait(self, job_id: str, progress: Callable[[JobProgress], None] | None = None,
             cancel: threading.Event | None = None, poll_interval: float = 0.5) -> JobProgress:
        """Follow the job until it finishes; `progress` sees each change, setting `cancel` cancels the job.

        Each poll waits on the server for the next change (a long poll, no busy polling) for at most
        `poll_interval` seconds, which also bounds how late a set `cancel` is noticed. Raises JobCancelled,
        EngineError (the job's own error), or EngineUnavailable when the engine stops answering mid-job.
        """
        cancel_sent, version = False, None
        while True:
            if cancel is not None and cancel.is_set() and not cancel_sent:
                self._during_job(job_id, self.cancel, job_id)
                cancel_sent = True
            state = self._during_job(job_id, self.status, job_id, poll_interval, version)
            version = state.version
            if progress is not None:
                progress(state)
            if state.state in FINISHED_STATES:
                break
        if state.state == "cancelled":
            raise JobCancelled(f"job {job_id} was cancelled", 409, "cancelled")
        if state.state == "failed":
            error = state.error or {}
            raise EngineError(error.get("detail", f"job {job_id} failed"), 0, error.get("code", ""))
        return state

    def labels(self, job_id: str) -> tuple[np.ndarray, tuple[int, ...]]:
        """(labels over the box as (k, j, i) int16, box) of a succeeded job."""
        return self._box_array(f"/v1/jobs/{quote(job_id)}/labels", "<i2", "label")

    def probabilities(self, job_id: str, label: int) -> np.ndarray:
        """One prompt's probability over the box, (k, j, i) float32 in [0, 1], of a job run with the
        `probabilities` option (the engine sends uint8 v for v / 255)."""
        quantized, _ = self._box_array(f"/v1/jobs/{quote(job_id)}/probabilities/{int(label)}", "u1", "probability")
        return quantized.astype(np.float32) / PROBABILITY_SCALE

    def result(self, state: JobProgress) -> SegmentationResult:
        """The labels, statistics and (when kept) probability maps of a succeeded job."""
        labels, box = self.labels(state.job_id)
        info = state.result
        return SegmentationResult(labels, box, tuple(info["image_shape"]),
                                  {int(label): stats for label, stats in info["stats"].items()}, info["modality"],
                                  {int(label): self.probabilities(state.job_id, label)
                                   for label in info["probabilities"]}, bool(info.get("refined", False)))

    def segment(self, image: ImageRef, prompts, *, modality: str | None = None, masks: dict | None = None,
                mode: str | None = None, options: dict | None = None,
                progress: Callable[[JobProgress], None] | None = None, cancel: threading.Event | None = None,
                poll_interval: float = 0.5) -> SegmentationResult:
        """Submit, wait and fetch: the whole request in one call (see `submit` and `wait`)."""
        job = self.submit(image, prompts, modality=modality, masks=masks, mode=mode, options=options)
        return self.result(self.wait(job.job_id, progress, cancel, poll_interval))

    # -- transport --------------------------------------------------------------------------------------------

    def _box_array(self, path: str, dtype: str, what: str) -> tuple[np.ndarray, tuple[int, ...]]:
        """(array over the result box in native byte order, box) from a binary reply with shape and box headers."""
        reply = self._request("GET", path)
        shape = tuple(int(n) for n in reply.headers["x-medals-shape"].split(","))
        box = tuple(int(n) for n in reply.headers["x-medals-box"].split(","))
        raw = zlib.decompress(reply.body)
        wire = np.dtype(dtype)
        if len(raw) != wire.itemsize * int(np.prod(shape)):
            raise ProtocolMismatch(f"the engine sent {len(raw)} {what} bytes for a box of shape {shape}")
        return np.frombuffer(raw, wire).reshape(shape).astype(wire.newbyteorder("=")), box

    def _during_job(self, job_id: str, call, *args):
        try:
            return call(*args)
        except EngineUnavailable as error:
            raise EngineUnavailable(f"lost the MedalS engine while job {job_id} was running ({error}); its result "
                                    "is lost — restart the engine and run the segmentation again") from None

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Reply:
        """One request, retried after a dropped connection; raises EngineError for any non-2xx answer."""
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(self.retries + 1):
            try:
                reply = self._send(method, self._prefix + path, body, headers)
                break
            except TimeoutError:
                raise EngineUnavailable(f"the engine at {self.url} did not answer {method} {path} within "
                                        f"{self.timeout:g} s") from None
            except (ConnectionError, http.client.HTTPException) as error:
                # Refused, reset or cut mid-reply: the engine may be restarting, so try again a little later.
                failure = error
                if attempt < self.retries:
                    time.sleep(self.retry_delay * 2 ** attempt)
            except OSError as error:
                raise EngineUnavailable(f"cannot reach the engine at {self.url}: {error}") from None
        else:
            raise EngineUnavailable(f"cannot reach the engine at {self.url}: {describe(failure)} "
                                    f"({self.retries + 1} attempts)")
        if reply.status >= 400:
            raise reply_error(reply)
        return reply

    def _send(self, method: str, path: str, body: bytes | None, headers: dict) -> Reply:
        connection = self._connection_class(self._host, self._port, timeout=self.timeout)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()


def describe(error: Exception) -> str:
    """"connection refused", "connection reset", ...: the kind of network failure in words."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused: no engine is listening there"
    if isinstance(error, (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        return "the connection was cut"
    return f"{type(error).__name__}: {error}"


def reply_error(reply: Reply) -> EngineError:
    """The EngineError for a 4xx/5xx reply, from its `{"detail", "code"}` body when it has one."""
    try:
        body = reply.json()
        detail, code = str(body["detail"]), str(body.get("code", ""))
    except (ValueError, KeyError, TypeError):
        detail, code = reply.body[:200].decode("utf-8", "replace") or "no message", ""
    if code == "image_not_found":
        return ImageEvicted(detail, reply.status, code)
    if reply.status == 401:
        return EngineError(f"the engine refused the token: {detail}", 401, code)
    return EngineError(f"{detail} (HTTP {reply.status})", reply.status, code)
