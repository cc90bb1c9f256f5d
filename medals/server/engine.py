"""The server's engine: the model loaded on each of its devices, requests checked against their image, and the
job function.

`prepare` runs in the request (so a bad request is answered 400 before it is queued); `run` runs on a worker
thread of the queue, one per replica, the only place that replica is used.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..config import MODALITIES
from ..device import check_precision, describe
from ..errors import InputError
from ..pipeline import segment
from ..pipeline.refine import RefinementCache
from ..pipeline.request import Prompt, SegmentOptions
from ..vocabulary import Vocabulary, default_vocabulary, vocabulary_marks
from ..weights import list_models, load_model
from . import wire
from .cache import CachedImage
from .devices import Replica, load_replicas
from .jobs import Job
from .protocol import JobRequest, Limits, MaskBody


@dataclass(frozen=True)
class CompactMask:
    """A painted mask as small as it can wait in the queue: the inclusive box (k0, k1, j0, j1, i0, i1) around its
    voxels and their bits over that box, packed in C order (None: the whole box is painted)."""

    box: tuple[int, int, int, int, int, int]
    bits: bytes | None

    @classmethod
    def of(cls, region: np.ndarray, origin, what: str) -> "CompactMask":
        """The mask whose voxels are the nonzero ones of `region`, which lies at `origin` (k, j, i) in the image.
        Only the tight box is copied, as bits."""
        box = []
        for axis in range(3):
            painted = np.flatnonzero(region.any(axis=tuple(a for a in range(3) if a != axis)))
            if painted.size == 0:
                raise InputError(f"{what} is empty; leave it out instead")
            box += [origin[axis] + int(painted[0]), origin[axis] + int(painted[-1])]
        local = tuple(slice(low - start, high - start + 1) for low, high, start in zip(box[0::2], box[1::2], origin))
        return cls(tuple(box), np.packbits(region[local]).tobytes())  # packbits counts any nonzero as 1

    def expand(self, shape) -> np.ndarray:
        """The mask as (k, j, i) uint8 0/1 on an image grid of `shape`."""
        mask = np.zeros(shape, np.uint8)
        region = box_slices(self.box)
        if self.bits is None:
            mask[region] = 1
        else:
            extent = tuple(high - low + 1 for low, high in zip(self.box[0::2], self.box[1::2]))
            bits = np.unpackbits(np.frombuffer(self.bits, np.uint8), count=int(np.prod(extent)))
            mask[region] = bits.reshape(extent)
        return mask


@dataclass(frozen=True)
class SegmentCall:
    """Everything one `pipeline.segment` call needs, validated: image (k, j, i) with its upload id, spacing in mm
    (k, j, i), ITK direction (nine numbers, or None), prompts, masks by label kept compact until the job runs, and
    whether a kept result may be refined."""

    image_id: str
    image: np.ndarray
    spacing: tuple[float, float, float]
    direction: tuple[float, ...] | None
    prompts: list[Prompt]
    modality: str | None
    masks: dict[int, CompactMask] | None
    options: SegmentOptions
    reuse_state: bool = True


@dataclass(frozen=True)
class JobOutcome:
    """A finished job: `info` (protocol ResultInfo), the zlib of its int16 labels over `info["box"]`, and by
    prompt label value the zlib of its probability map over the same box, quantized to uint8 (`wire`)."""

    info: dict
    labels: bytes
    probabilities: dict[int, bytes]


def check_box(box, shape, what: str) -> tuple[int, int, int, int, int, int]:
    """A (k0, k1, j0, j1, i0, i1) inclusive box that lies inside an image of `shape`, else InputError."""
    box = tuple(int(v) for v in box)
    for axis, (low, high) in enumerate(zip(box[0::2], box[1::2])):
        if not 0 <= low <= high < shape[axis]:
            raise InputError(f"{what} {list(box)} does not lie inside the image of shape {list(shape)} "
                             "(bounds are inclusive, low ≤ high)")
    return box


def box_slices(box) -> tuple[slice, slice, slice]:
    return tuple(slice(low, high + 1) for low, high in zip(box[0::2], box[1::2]))


def decode_mask(label: int, body: MaskBody, shape) -> CompactMask:
    """A painted mask from its data over a box (or the whole image), or the box itself; only its data's extent is
    ever inflated, and it is kept as bits over its tight box."""
    what = f"mask of label {label}"
    if body.data is None and body.box is None:
        raise InputError(f"{what} has neither data nor a box")
    box = check_box(body.box, shape, f"{what}: box") if body.box is not None else (
        0, shape[0] - 1, 0, shape[1] - 1, 0, shape[2] - 1)
    if body.data is None:
        return CompactMask(box, None)
    extent = tuple(high - low + 1 for low, high in zip(box[0::2], box[1::2]))
    region = wire.inflate_array(wire.decode_base64(body.data, what), "uint8", extent, what)
    return CompactMask.of(region, box[0::2], what)


def check_prompts(request: JobRequest, limits: Limits) -> list[Prompt]:
    if len(request.prompts) > limits.max_prompts:
        raise InputError(f"{len(request.prompts)} prompts are over this server's limit of {limits.max_prompts}")
    labels = [prompt.label for prompt in request.prompts]
    if len(set(labels)) != len(labels):
        raise InputError(f"label values must differ between prompts; got {labels}")
    for prompt in request.prompts:
        if not prompt.text.strip():
            raise InputError(f"the prompt for label {prompt.label} is blank")
        if len(prompt.text) > limits.max_prompt_chars:
            raise InputError(f"the prompt for label {prompt.label} has {len(prompt.text)} characters, over this "
                             f"server's limit of {limits.max_prompt_chars}")
    return [Prompt(prompt.text, prompt.label) for prompt in request.prompts]


def check_masks(request: JobRequest, shape) -> dict[int, CompactMask] | None:
    if request.mode == "text" and request.masks:
        raise InputError("masks were sent in text mode; use mode 'hybrid' for painted prompts")
    if request.mode == "hybrid" and not request.masks:
        raise InputError("hybrid mode needs at least one painted mask")
    prompted = {prompt.label for prompt in request.prompts}
    masks = {}
    for key, body in request.masks.items():
        if not (key.isascii() and key.isdigit()) or int(key) not in prompted:
            raise InputError(f"mask key {key!r} is not the label value of a prompt ({sorted(prompted)})")
        masks[int(key)] = decode_mask(int(key), body, shape)
    return masks or None


def check_options(request: JobRequest, shape) -> SegmentOptions:
    options = request.options
    if len(set(options.stages)) != len(options.stages):
        raise InputError(f"stages {options.stages} name a stage twice")
    box = check_box(options.box, shape, "options.box") if options.box is not None else None
    return SegmentOptions(stages=tuple(options.stages), refine_iterations=options.refine_iterations,
                          instance=options.instance, keep_largest=options.keep_largest,
                          merge_masks_with_coarse=options.merge_masks_with_coarse, box=box,
                          window_batch=options.window_batch, probabilities=options.probabilities)


def published_vocabulary(vocabulary: Vocabulary) -> list[dict]:
    """The vocabulary as the info endpoint's `StructureBody` list: names and synonyms for clients to complete and
    recognise prompts, codes and colours for them to name and colour segments."""
    return [{"name": entry.name, "synonyms": list(entry.synonyms), "laterality": entry.laterality,
             "modalities": list(entry.modalities), "category": vocabulary.categories.get(entry.category),
             "sct": {"code": entry.sct[0], "meaning": entry.sct[1]} if entry.sct else None,
             "color": list(vocabulary.entry_color(entry))}
            for entry in vocabulary.entries]


class Engine:
    """One model kept loaded on each of its devices (`replicas`), described for the info endpoint and run by the
    job queue, one worker per replica."""

    def __init__(self, replicas: list[Replica], model_name: str, installed_models: list[str],
                 vocabulary: list[dict], refinement_bytes: int = Limits.refinement_bytes, precision: str = "auto"):
        self.replicas, self.model_name, self.precision = replicas, model_name, precision
        self.installed_models, self.vocabulary = installed_models, vocabulary
        self.refinements = RefinementCache(refinement_bytes)
        """The last results' refinement states (the cache locks; the job workers share it)."""

    @classmethod
    def load(cls, name_or_path: str | None, devices: list[str | None],
             refinement_bytes: int = Limits.refinement_bytes, precision: str | None = None) -> "Engine":
        """Load a model once per device: a model name or folder; None means the default model (the only installed
        one, else the bundled demo model; `resolve_model`), a None device the one `pick_device` chooses.
        `precision` is the arithmetic of every job (`medals.device.PRECISIONS`; None: auto), checked on every
        device."""
        installed = [model.name for model in list_models()]
        replicas = load_replicas(functools.partial(load_model, name_or_path), devices)
        precision = [check_precision(precision, replica.device) for replica in replicas][0]
        return cls(replicas, replicas[0].model.config.name, installed, published_vocabulary(default_vocabulary()),
                   refinement_bytes, precision)

    def describe(self) -> dict:
        """The info endpoint's engine part: every device and its memory now (`device`: the first), the
        precision, models, modalities, vocabulary."""
        devices = [describe(replica.device) for replica in self.replicas]
        return {"device": devices[0], "devices": devices, "precision": self.precision, "model": self.model_name,
                "installed_models": self.installed_models, "modalities": list(MODALITIES),
                "vocabulary": self.vocabulary}

    def workers(self) -> list:
        """The job function of each replica, for the queue's workers."""
        return [functools.partial(self.run, replica=replica) for replica in self.replicas]

    def prepare(self, request: JobRequest, image: CachedImage, limits: Limits) -> SegmentCall:
        """The validated pipeline call for a request on an uploaded image; InputError (400) names what is wrong."""
        shape = image.array.shape
        return SegmentCall(image.image_id, image.array, image.spacing, image.direction,
                           check_prompts(request, limits), request.modality, check_masks(request, shape),
                           check_options(request, shape), request.options.reuse_state)

    def run(self, job: Job, replica: Replica) -> JobOutcome:
        """The job function: segment on `replica` (refining the kept result when allowed), then keep the labels
        (and probability maps) over the result box, compressed. Every result's refinement state is kept, shared
        by the replicas (states live in host memory)."""
        call: SegmentCall = job.payload
        masks = {label: mask.expand(call.image.shape) for label, mask in call.masks.items()} if call.masks else None
        with replica.selected():
            result = segment(replica.model, call.image, call.spacing, call.prompts, direction=call.direction,
                             modality=call.modality, masks=masks, options=call.options,
                             progress=lambda event: job.report(event.stage, event.done, event.total, event.message),
                             cancel=job.cancel, device=replica.device, precision=self.precision,
                             states=self.refinements,
                             image_id=call.image_id, reuse=call.reuse_state)
        box = box_slices(result.box)
        labels = np.ascontiguousarray(result.labels[box], dtype=np.int16)
        probabilities = {label: wire.deflate_array(wire.quantize_probability(probability[box]))
                         for label, probability in (result.probabilities or {}).items()}
        texts = {prompt.label: prompt.text for prompt in call.prompts}
        stats = {str(label): {"name": str(values["name"]), "voxels": int(values["voxels"]),
                              "volume_ml": float(values["volume_ml"]),
                              "mean_confidence": None if values.get("mean_confidence") is None
                              else float(values["mean_confidence"]),
                              **vocabulary_marks(texts.get(label, str(values["name"])))}
                 for label, values in result.stats.items()}
        info = {"box": [int(v) for v in result.box], "shape": list(labels.shape), "dtype": "int16",
                "image_shape": list(call.image.shape), "modality": result.modality, "stats": stats,
                "probabilities": sorted(probabilities), "refined": result.refined}
        return JobOutcome(info, wire.deflate_array(labels), probabilities)
