"""Protocol v1: the request and response bodies the server publishes in its OpenAPI document.

Axis order everywhere is numpy (k, j, i); spacing is in mm in the same order; boxes are
(k0, k1, j0, j1, i0, i1) with inclusive ends. Arrays travel as zlib-compressed little-endian bytes:
images as the binary body of an upload, labels and probability maps as binary bodies of a result, masks
inside a job request as base64 text of the same zlib bytes. Probabilities travel as uint8: value v stands
for v / 255 (see `wire.quantize_probability`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import MODALITIES
from ..pipeline.request import MAX_LABEL

PROTOCOL_VERSION = 1
"""Bumped on any change an older client could not read; clients refuse a server of another version."""

API_PREFIX = f"/v{PROTOCOL_VERSION}"

IMAGE_ID_PATTERN = r"^[0-9a-f]{64}$"
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server. Bytes are counted as they arrive, not trusted from headers."""

    max_upload_bytes: int = 2 << 30
    """Compressed size of one image upload."""
    max_request_bytes: int = 256 << 20
    """Size of any other request body (a job request with its base64 masks)."""
    max_voxels: int = 1 << 28
    """Voxels in one image (and so in each of its masks)."""
    max_prompts: int = 64
    max_prompt_chars: int = 300
    cache_bytes: int = 4 << 30
    """Voxel bytes of all cached images together."""
    refinement_bytes: int = 2 << 30
    """Bytes of all kept refinement states together (working images and probabilities of recent results)."""
    max_waiting_jobs: int = 16
    max_finished_jobs: int = 32
    body_timeout_seconds: float = 30.0
    """Longest wait for the next bytes of a request body before it is refused (408) and its memory freed."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(Strict):
    detail: str = Field(description="One line for people")
    code: str = Field(description="snake_case error kind for programs, e.g. image_not_found")


class Health(Strict):
    status: Literal["ok"]
    protocol: int
    engine: str


class LimitsBody(Strict):
    max_upload_bytes: int
    max_request_bytes: int
    max_voxels: int
    max_prompts: int
    max_prompt_chars: int
    cache_bytes: int


class DeviceBody(BaseModel):
    device: str = Field(description='"cuda:0", "cpu", ...')
    name: str
    memory_free_bytes: int | None = None
    memory_total_bytes: int | None = None


class CodeBody(Strict):
    code: str = Field(description="SNOMED CT code")
    meaning: str


class StructureBody(Strict):
    """One structure the engine knows: the names a prompt may use, and how Slicer names and colours its segment."""

    name: str
    synonyms: list[str] = Field(description="Other names prompts may use for it")
    laterality: Literal["left", "right"] | None
    modalities: list[str] = Field(description="Modalities it is usually segmented in")
    category: CodeBody | None = Field(description="SNOMED CT category of Slicer's terminology (null: none listed)")
    sct: CodeBody | None = Field(description="SNOMED CT type, without laterality (null: Slicer's terminology lists "
                                             "none)")
    color: list[int] = Field(min_length=3, max_length=3, description="Display colour, RGB 0–255")


class Info(Strict):
    protocol: int
    engine: str
    device: DeviceBody = Field(description="The first of `devices`")
    devices: list[DeviceBody] = Field(description="Every device the server runs jobs on, one worker each")
    precision: str = Field(description="The arithmetic of every job (medals serve --precision): auto (half "
                                       "precision on CUDA, float32 on the CPU), fp32 or bf16")
    model: str = Field(description="The model this server keeps loaded")
    installed_models: list[str]
    modalities: list[str]
    vocabulary: list[StructureBody] = Field(description="Every structure the engine knows by name")
    limits: LimitsBody
    queue_length: int = Field(description="Jobs waiting or running now")


class ImageRecord(Strict):
    image_id: str = Field(description="SHA-256 of the canonical header line and the raw voxel bytes")
    dtype: str
    shape: list[int] = Field(description="(k, j, i)")
    spacing: list[float] = Field(description="mm, (k, j, i)")
    direction: list[float] | None = Field(description="ITK direction matrix (LPS, row-major) when it was sent")
    nbytes: int


Box = Annotated[list[int], Field(min_length=6, max_length=6,
                                 description="(k0, k1, j0, j1, i0, i1), inclusive voxel indices")]


class PromptBody(Strict):
    text: str = Field(min_length=1, description='A structure in words, e.g. "liver" or "left kidney in CT"')
    label: int = Field(ge=1, le=MAX_LABEL, description="Label value this structure gets in the result")


class MaskBody(Strict):
    """A painted spatial prompt for one label: a uint8 array (nonzero = inside) over `box`, or the box itself.

    With `data` and no `box`, the array covers the whole image; with both, it covers only the box (shape =
    box extent); with a box alone, the filled box is the mask.
    """

    data: str | None = Field(None, description="base64 of zlib-compressed uint8 voxels in C order (k, j, i)")
    box: Box | None = None


class OptionsBody(Strict):
    """How to run a job (the pipeline's SegmentOptions)."""

    stages: list[Literal["coarse", "fine"]] = Field(["coarse", "fine"], min_length=1, max_length=2,
                                                    description="Stages to run, in order")
    refine_iterations: int = Field(0, ge=0, le=8, description="Self-refinement passes per window")
    instance: bool = Field(False, description="Instance task: number each prompt's connected components")
    keep_largest: bool = Field(False, description="Keep only the largest connected component of each label")
    merge_masks_with_coarse: bool = Field(True, description="Hybrid mode: painted masks are drawn over the "
                                                            "coarse labels as the fine stage's prompt (else they "
                                                            "replace them)")
    box: Box | None = Field(None, description="Recompute only this region, e.g. around an edit")
    window_batch: int = Field(1, ge=1, le=64, description="Windows per network forward")
    probabilities: bool = Field(False, description="Also keep each prompt's probability map over the result box, "
                                                   "for GET /v1/jobs/{job_id}/probabilities/{label}")
    reuse_state: bool = Field(True, description="Hybrid mode: when the engine still keeps the last result for this "
                                                "image, prompts and options, refine it: only the windows around the "
                                                "edit run (`box` when given, else where the masks changed) and the "
                                                "result box is where labels may have changed (it contains `box`). "
                                                "false: always run the whole pipeline")


class JobRequest(Strict):
    image_id: str = Field(pattern=IMAGE_ID_PATTERN)
    prompts: list[PromptBody] = Field(min_length=1)
    modality: Literal[MODALITIES] | None = Field(  # type: ignore[valid-type]
        None, description="None: inferred from the prompt text (and the image)")
    masks: dict[str, MaskBody] = Field(default_factory=dict, description="label value (as text) → painted mask")
    mode: Literal["text", "hybrid"] = Field("text", description="text: prompts only; hybrid: with painted masks")
    options: OptionsBody = Field(default_factory=OptionsBody)
    request_id: str | None = Field(None, max_length=64, description="Client-chosen key; resubmitting it after a "
                                                                    "dropped connection returns the same job")


class ClassStats(BaseModel):
    name: str
    voxels: int
    volume_ml: float
    mean_confidence: float | None = None
    in_vocabulary: bool = Field(True, description="The prompt names a structure of the vocabulary; false: free text, "
                                                  "segmented as the model reads it but unchecked")
    suggestions: list[str] = Field(default_factory=list, description="The closest known names of a prompt out of "
                                                                    "the vocabulary (\"did you mean\")")


class ResultInfo(Strict):
    box: list[int] = Field(description="(k0, k1, j0, j1, i0, i1) inclusive: where the labels changed")
    shape: list[int] = Field(description="Shape of the labels body: the box extent")
    dtype: Literal["int16"]
    image_shape: list[int]
    modality: str | None
    stats: dict[str, ClassStats] = Field(description="label value (as text) → statistics")
    probabilities: list[int] = Field(description="Label values of the prompts whose probability map can be fetched "
                                                 "(empty unless options.probabilities)")
    refined: bool = Field(False, description="True when a kept result was refined around the edit (see "
                                             "options.reuse_state): outside `box` the labels are those of that "
                                             "result; false after a whole run")


class JobStatus(Strict):
    job_id: str
    version: int = Field(description="Grows with every visible change; pass it as `after` to wait for the next")
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    queue_position: int | None = Field(description="Jobs that start before this one; null once it started")
    stage: str
    done: int = Field(description="Windows of the current stage finished")
    total: int = Field(description="Windows of the current stage")
    message: str
    eta_seconds: float | None = Field(description="Seconds left in the current stage at its pace so far")
    run_seconds: float | None = Field(description="Seconds the job has run (final once finished); null while "
                                                  "it waits")
    error: ErrorBody | None
    result: ResultInfo | None
