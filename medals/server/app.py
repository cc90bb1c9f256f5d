"""The ASGI application of protocol v1: routes, the guard in front of them, and error bodies.

    GET  /health                    public, unversioned (every version keeps it): protocol and engine versions
    GET  /v1/openapi.json           public: this protocol as OpenAPI
    GET  /v1/info                   devices and their memory, models, vocabulary, limits
    POST /v1/images                 binary body (zlib of little-endian voxels) + X-Medals-* geometry headers
    GET  /v1/images/{image_id}      is this image still cached? (404 → upload again)
    POST /v1/jobs                   JobRequest → JobStatus (queued)
    GET  /v1/jobs/{job_id}          JobStatus: state, queue position, stage, windows done/total, ETA (long poll)
    POST /v1/jobs/{job_id}/cancel   stops the job within one window
    GET  /v1/jobs/{job_id}/labels   binary body: zlib of int16 labels over the result box
    GET  /v1/jobs/{job_id}/probabilities/{label}
                                    binary body: zlib of one prompt's probabilities over the result box, as
                                    uint8 v standing for v / 255 (jobs run with options.probabilities)

No route reads or writes files, and no CORS headers are sent: browsers on other origins cannot call it.
Every size is checked before memory is taken for it: an upload reserves its image's bytes in the cache budget and
its buffer grows only with the bytes that arrive (a body that stalls is refused after `body_timeout_seconds`); a
job request's JSON structure is bounded by the prompt limit before it is parsed. Long polls wait on the event
loop, so no number of them can hold up the other routes.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import MedalSError
from ..pipeline.request import MAX_LABEL
from . import wire
from .cache import CachedImage, ImageCache
from .errors import JobNotFinished, PayloadTooLarge, ProbabilityMapNotFound, Unauthorized, error_body
from .jobs import SUCCEEDED, Job, JobQueue
from .protocol import (API_PREFIX, IMAGE_ID_PATTERN, JOB_ID_PATTERN, PROTOCOL_VERSION, ErrorBody, Health,
                       ImageRecord, Info, JobRequest, JobStatus, Limits)

log = logging.getLogger("medals.server")

HEALTH_PATH = "/health"
PUBLIC_PATHS = (HEALTH_PATH, f"{API_PREFIX}/openapi.json")
UPLOAD_PATH = f"{API_PREFIX}/images"
MAX_WAIT_SECONDS = 10.0
SHAPE_PATTERN = r"^[0-9]{1,9},[0-9]{1,9},[0-9]{1,9}$"
SPACING_PATTERN = r"^[^,]+,[^,]+,[^,]+$"
DIRECTION_PATTERN = r"^[^,]+(,[^,]+){8}$"

# Codes for the errors the framework raises itself (unknown route, wrong method, a body cut off while counting).
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 408: "body_timeout", 413: "payload_too_large"}
def errors_of(*statuses: int) -> dict:
    return {status: {"model": ErrorBody} for status in statuses}


ERRORS = errors_of(400, 401, 404, 413)
BINARY_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
JOB_REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}}}}
INFLATE_BATCH_BYTES = 1 << 20
"""Compressed bytes gathered before they are inflated on a worker thread (chunks arrive in tens of kB)."""
JSON_ITEMS_PER_PROMPT = 32
"""Commas, objects and lists one prompt, its mask and its share of the options may take in a job request
(base64 mask data has none of them)."""
BINARY_CONTENT = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
LABELS_RESPONSE = {"content": BINARY_CONTENT,
                   "description": "zlib of the int16 labels over the box, little-endian, C order (k, j, i)"}
PROBABILITY_RESPONSE = {"content": BINARY_CONTENT,
                        "description": f"zlib of the uint8 probabilities over the box, C order (k, j, i): value v "
                                      f"stands for v / {wire.PROBABILITY_SCALE}"}


class Guard:
    """ASGI middleware in front of every route: token first, then the body size, before any body is read.

    A declared Content-Length over the limit is refused at once; a chunked body is counted while it streams
    and refused as soon as it passes the limit, so the server never holds more than the limit. A body whose next
    bytes take longer than the body timeout is refused (408), so a stalled client holds nothing for long.
    """

    def __init__(self, app, token: str | None, limits: Limits):
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.limits = limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in PUBLIC_PATHS:
            # compare_digest takes the same time wherever the first differing byte is.
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                error = Unauthorized("missing or wrong token: send the server's token as 'Authorization: Bearer "
                                     "<token>'")
                return await error_response(error)(scope, receive, send)
        limit = self.limits.max_upload_bytes if scope["path"] == UPLOAD_PATH else self.limits.max_request_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            error = PayloadTooLarge(f"request body of {declared.decode(errors='replace')} bytes is over this "
                                    f"server's limit of {limit} bytes")
            return await error_response(error)(scope, receive, send)
        received, complete = 0, False

        async def counted_receive():
            nonlocal received, complete
            if complete:  # the body has arrived: later receives wait for a disconnect, which takes its time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_timeout_seconds)
            except TimeoutError:
                raise HTTPException(408, f"no request body bytes arrived for {self.limits.body_timeout_seconds:g} s; "
                                         "the request was dropped") from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > limit:
                # An HTTPException passes unchanged through the framework's body parsing.
                raise HTTPException(413, f"request body is over this server's limit of {limit} bytes")
            return message

        await self.app(scope, counted_receive, send)


def error_response(error: MedalSError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.http_status == 401 else None
    return JSONResponse(error_body(error), status_code=error.http_status, headers=headers)


def validation_message(error: RequestValidationError) -> str:
    """One line from pydantic's error list: where the first problem is and what it is."""
    problems = error.errors()
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def job_status(job: Job, queue: JobQueue) -> dict:
    return {"job_id": job.id, "version": job.version, "state": job.state, "queue_position": queue.position(job),
            "stage": job.stage, "done": job.done, "total": job.total, "message": job.message,
            "eta_seconds": job.eta_seconds(), "run_seconds": job.run_seconds(),
            "error": error_body(job.error) if job.error is not None else None,
            "result": job.result.info if job.state == SUCCEEDED else None}


def create_app(engine, limits: Limits = Limits(), token: str | None = None) -> FastAPI:
    """The application around one loaded `engine` (see `medals.server.engine.Engine`), one queue worker per device.

    `token`: required as a bearer token on every route but health and the OpenAPI document; None allows
    anyone who can reach the port (the CLI only permits that on loopback).
    """
    cache = ImageCache(limits.cache_bytes)
    queue = JobQueue(engine.workers(), limits.max_waiting_jobs, limits.max_finished_jobs)

    @asynccontextmanager
    async def lifespan(app):
        yield
        queue.close()

    app = FastAPI(title="MedalS engine", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=f"{API_PREFIX}/openapi.json",
                  description=f"Medal S text-prompted 3D segmentation, protocol v{PROTOCOL_VERSION}. Arrays in "
                              "numpy (k, j, i) order, spacing in mm in the same order, boxes inclusive.")
    app.add_middleware(Guard, token=token, limits=limits)

    @app.exception_handler(MedalSError)
    async def medals_error(request: Request, error: MedalSError):
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        return JSONResponse({"detail": validation_message(error), "code": "invalid_request"}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        code = HTTP_ERROR_CODES.get(error.status_code, "http_error")
        return JSONResponse({"detail": str(error.detail), "code": code}, status_code=error.status_code,
                            headers=error.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error in the engine ({type(error).__name__}); the server log has "
                                       "the details", "code": "internal_error"}, status_code=500)

    @app.get(HEALTH_PATH, response_model=Health)
    async def health():
        """Protocol and engine versions: the first call of every client, which refuses another protocol."""
        return {"status": "ok", "protocol": PROTOCOL_VERSION, "engine": __version__}

    @app.get(f"{API_PREFIX}/info", response_model=Info, responses=ERRORS)
    def info():
        return {"protocol": PROTOCOL_VERSION, "engine": __version__, **engine.describe(),
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_request_bytes": limits.max_request_bytes,
                           "max_voxels": limits.max_voxels, "max_prompts": limits.max_prompts,
                           "max_prompt_chars": limits.max_prompt_chars, "cache_bytes": limits.cache_bytes},
                "queue_length": queue.length()}

    @app.post(UPLOAD_PATH, response_model=ImageRecord, responses={**ERRORS, **errors_of(408, 503)},
              openapi_extra=BINARY_BODY)
    async def upload_image(request: Request,
                           dtype: Annotated[Literal[wire.IMAGE_DTYPES], Header(alias="X-Medals-Dtype")],
                           shape: Annotated[str, Header(alias="X-Medals-Shape", pattern=SHAPE_PATTERN,
                                                        description="voxels along k,j,i")],
                           spacing: Annotated[str, Header(alias="X-Medals-Spacing", pattern=SPACING_PATTERN,
                                                          description="mm along k,j,i")],
                           direction: Annotated[str | None, Header(
                               alias="X-Medals-Direction", pattern=DIRECTION_PATTERN,
                               description="ITK direction matrix (LPS, row-major, 9 numbers); optional: a model "
                                           "trained in one orientation turns the image to it")] = None):
        """Upload a volume once; later requests name it by the returned id (the SHA-256 of its content)."""
        wire_type = wire.wire_dtype(dtype)
        dims, mm, axes = wire.parse_shape(shape), wire.parse_spacing(spacing), wire.parse_direction(direction)
        voxels = math.prod(dims)
        if voxels > limits.max_voxels:
            raise PayloadTooLarge(f"image of {voxels} voxels is over this server's limit of {limits.max_voxels}")
        with cache.reservation(voxels * wire_type.itemsize) as put:
            inflater = wire.ExactInflater(voxels * wire_type.itemsize, "image body")
            try:
                await receive_inflated(request, inflater)
            except ClientDisconnect:
                return Response(status_code=400)  # the client hung up mid-body: nobody is left to read an answer
            image = await run_in_threadpool(finish_upload, inflater, dtype, dims, mm, axes)
            put(image)
        return image.describe()

    @app.get(f"{API_PREFIX}/images/{{image_id}}", response_model=ImageRecord, responses=ERRORS)
    def image_record(image_id: Annotated[str, Path(pattern=IMAGE_ID_PATTERN)]):
        return cache.get(image_id).describe()

    @app.post(f"{API_PREFIX}/jobs", response_model=JobStatus, status_code=202,
              responses={**ERRORS, **errors_of(408, 409, 503)}, openapi_extra=JOB_REQUEST_BODY)
    async def submit_job(request: Request):
        """Queue a segmentation of an uploaded image; poll the returned job for progress and its result."""
        body = await request.body()
        job_request = await run_in_threadpool(parse_job_request, body, limits)
        image = cache.get(job_request.image_id)
        call = await run_in_threadpool(engine.prepare, job_request, image, limits)
        job = queue.submit(call, job_request.request_id, hashlib.sha256(body).hexdigest())
        return job_status(job, queue)

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}", response_model=JobStatus, responses=ERRORS)
    async def get_job(job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN)],
                wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS, description="Long poll: seconds to wait "
                                             "for the job to change past version `after` before answering")] = 0,
                after: Annotated[int | None, Query(ge=0, description="The last version seen (default: the "
                                                                     "current one)")] = None):
        """The job's state and progress; with `wait`, answered as soon as it changes (no busy polling)."""
        job = queue.get(job_id)
        if wait:
            await job.changed_after(job.version if after is None else after, wait)
        return job_status(job, queue)

    @app.post(f"{API_PREFIX}/jobs/{{job_id}}/cancel", response_model=JobStatus, responses=ERRORS)
    def cancel_job(job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN)]):
        return job_status(queue.cancel(job_id), queue)

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}/labels", response_class=Response,
             responses={200: LABELS_RESPONSE, 409: {"model": ErrorBody}, **ERRORS})
    def job_labels(job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN)]):
        """The labels over the result box; box, shape and dtype are in the job's `result` and in headers."""
        outcome = finished_outcome(queue.get(job_id), "labels")
        return box_array(outcome.labels, outcome.info["dtype"], outcome.info)

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}/probabilities/{{label}}", response_class=Response,
             responses={200: PROBABILITY_RESPONSE, 409: {"model": ErrorBody}, **ERRORS})
    def job_probabilities(job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN)],
                          label: Annotated[int, Path(ge=1, le=MAX_LABEL, description="A prompt's label value")]):
        """One prompt's probability map over the result box, as uint8 (v stands for v / 255)."""
        outcome = finished_outcome(queue.get(job_id), "probability maps")
        if label not in outcome.probabilities:
            kept = ", ".join(map(str, sorted(outcome.probabilities))) or "none: submit it with options.probabilities"
            raise ProbabilityMapNotFound(f"job {job_id} has no probability map for label {label} (it has {kept})")
        return box_array(outcome.probabilities[label], "uint8", outcome.info)

    app.openapi = lambda: openapi_document(app, token is not None)
    return app


def finished_outcome(job: Job, what: str):
    """The `engine.JobOutcome` of a job that succeeded; JobNotFinished (409) saying why there is no `what` else."""
    if job.state != SUCCEEDED:
        raise JobNotFinished(f"job {job.id} is {job.state}, it has no {what}"
                             + (f": {job.error}" if job.error is not None else ""))
    return job.result


def box_array(body: bytes, dtype: str, info: dict) -> Response:
    """A compressed array over the result box, with its dtype, shape and box in headers."""
    return Response(body, media_type="application/octet-stream", headers={
        "X-Medals-Dtype": dtype, "X-Medals-Shape": ",".join(map(str, info["shape"])),
        "X-Medals-Box": ",".join(map(str, info["box"]))})


async def receive_inflated(request: Request, inflater: wire.ExactInflater) -> None:
    """Feed the request body into `inflater` as it arrives, inflating on a worker thread a batch at a time."""
    chunks = request.stream()
    batch, size = [], 0
    while True:
        chunk = await anext(chunks, None)
        if chunk:
            batch.append(chunk)
            size += len(chunk)
        if batch and (chunk is None or size >= INFLATE_BATCH_BYTES):
            await run_in_threadpool(inflater.feed, b"".join(batch))
            batch, size = [], 0
        if chunk is None:
            return


def parse_job_request(body: bytes, limits: Limits) -> JobRequest:
    """The JobRequest in a JSON body, refused before parsing when its structure is larger than `limits.max_prompts`
    prompts can need (parsed JSON costs many times its size); RequestValidationError (400) when invalid."""
    items = body.count(b",") + body.count(b"{") + body.count(b"[")
    allowed = (limits.max_prompts + 1) * (JSON_ITEMS_PER_PROMPT + limits.max_prompt_chars)
    if items > allowed:
        raise PayloadTooLarge(f"the job request has {items} JSON items, more than {limits.max_prompts} prompts (this "
                              f"server's limit) with their masks can need")
    try:
        return JobRequest.model_validate_json(body)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


def finish_upload(inflater: wire.ExactInflater, dtype: str, shape, spacing, direction=None) -> CachedImage:
    """The validated, content-addressed image once its whole body has arrived (CPU work, off the event loop)."""
    raw = inflater.finish()
    array = wire.as_array(raw, dtype, shape)
    wire.require_finite(array, "image")
    return CachedImage(wire.image_id(dtype, shape, spacing, raw, direction), array, spacing, direction)


def openapi_document(app: FastAPI, token_required: bool) -> dict:
    """FastAPI's document with what it cannot infer: bearer auth, and 400 (not 422) for invalid requests."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path, operations in document["paths"].items():
            for operation in operations.values():
                operation["responses"].pop("422", None)
                if token_required and path not in PUBLIC_PATHS:
                    operation["security"] = [{"bearer": []}]
        if token_required:
            document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        _, definitions = models_json_schema([(JobRequest, "validation")],
                                            ref_template="#/components/schemas/{model}")
        for name, schema in definitions["$defs"].items():
            document["components"]["schemas"].setdefault(name, schema)
        document["components"]["schemas"].pop("HTTPValidationError", None)
        document["components"]["schemas"].pop("ValidationError", None)
        app.openapi_schema = document
    return app.openapi_schema
