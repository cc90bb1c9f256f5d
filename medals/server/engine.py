"""The server's engine: one loaded model, requests checked against their image, and the job function.

`prepare` runs in the request (so a bad request is answered 400 before it is queued); `run` runs on the
queue's single worker thread, the only place the model is used.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import MODALITIES
from ..device import check_precision, describe, pick_device
from ..errors import InputError
from ..pipeline import segment
from ..pipeline.request import Prompt, SegmentOptions
from ..vocabulary import Vocabulary, default_vocabulary
from ..weights import list_models, load_model
from . import wire
from .cache import CachedImage
from .jobs import Job
from .protocol import JobRequest, Limits, MaskBody


@dataclass(frozen=True)
class SegmentCall:
    """Everything one `pipeline.segment` call needs, validated: image (k, j, i), spacing in mm (k, j, i), ITK
    direction (nine numbers, or None), prompts, masks as label → (k, j, i) uint8 on the image grid."""

    image: np.ndarray
    spacing: tuple[float, float, float]
    direction: tuple[float, ...] | None
    prompts: list[Prompt]
    modality: str | None
    masks: dict[int, np.ndarray] | None
    options: SegmentOptions


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


def decode_mask(label: int, body: MaskBody, shape) -> np.ndarray:
    """A painted mask as (k, j, i) uint8 0/1 on the image grid, from its data over a box, or the box itself."""
    what = f"mask of label {label}"
    if body.data is None and body.box is None:
        raise InputError(f"{what} has neither data nor a box")
    box = check_box(body.box, shape, f"{what}: box") if body.box is not None else (
        0, shape[0] - 1, 0, shape[1] - 1, 0, shape[2] - 1)
    mask = np.zeros(shape, np.uint8)
    region = box_slices(box)
    if body.data is None:
        mask[region] = 1
    else:
        extent = tuple(high - low + 1 for low, high in zip(box[0::2], box[1::2]))
        mask[region] = wire.inflate_array(wire.decode_base64(body.data, what), "uint8", extent, what) != 0
    if not mask.any():
        raise InputError(f"{what} is empty; leave it out instead")
    return mask


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


def check_masks(request: JobRequest, shape) -> dict[int, np.ndarray] | None:
    if request.mode == "text" and request.masks:
        raise InputError("masks were sent in text mode; use mode 'hybrid' for painted prompts")
    if request.mode == "hybrid" and not request.masks:
        raise InputError("hybrid mode needs at least one painted mask")
    prompted = {prompt.label for prompt in request.prompts}
    masks = {}
    for key, body in request.masks.items():
        if not key.isdigit() or int(key) not in prompted:
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
    """One model kept loaded on `device`, described for the info endpoint and run by the job queue."""

    def __init__(self, model, model_name: str, device, installed_models: list[str], vocabulary: list[dict],
                 precision: str = "auto"):
        self.model, self.model_name, self.device, self.precision = model, model_name, device, precision
        self.installed_models, self.vocabulary = installed_models, vocabulary

    @classmethod
    def load(cls, name_or_path: str | None, device: str | None, precision: str | None = None) -> "Engine":
        """Load a model once: an installed name or a model folder; None means the only installed model. `precision`
        is the arithmetic of every job (`medals.device.PRECISIONS`; None: auto)."""
        installed = [model.name for model in list_models()]
        torch_device = pick_device(device)
        precision = check_precision(precision, torch_device)
        model = load_model(name_or_path, torch_device)
        return cls(model, model.config.name, torch_device, installed, published_vocabulary(default_vocabulary()),
                   precision)

    def describe(self) -> dict:
        """The info endpoint's engine part: device and its memory now, models, modalities, vocabulary."""
        return {"device": describe(self.device), "model": self.model_name, "installed_models": self.installed_models,
                "modalities": list(MODALITIES), "vocabulary": self.vocabulary}

    def prepare(self, request: JobRequest, image: CachedImage, limits: Limits) -> SegmentCall:
        """The validated pipeline call for a request on an uploaded image; InputError (400) names what is wrong."""
        shape = image.array.shape
        return SegmentCall(image.array, image.spacing, image.direction, check_prompts(request, limits),
                           request.modality, check_masks(request, shape), check_options(request, shape))

    def run(self, job: Job) -> JobOutcome:
        """The job function: segment, then keep the labels (and probability maps) over the result box, compressed."""
        call: SegmentCall = job.payload
        result = segment(self.model, call.image, call.spacing, call.prompts, direction=call.direction,
                         modality=call.modality, masks=call.masks, options=call.options,
                         progress=lambda event: job.report(event.stage, event.done, event.total, event.message),
                         cancel=job.cancel, device=self.device, precision=self.precision)
        box = box_slices(result.box)
        labels = np.ascontiguousarray(result.labels[box], dtype=np.int16)
        probabilities = {label: wire.deflate_array(wire.quantize_probability(probability[box]))
                         for label, probability in (result.probabilities or {}).items()}
        stats = {str(label): {"name": str(values["name"]), "voxels": int(values["voxels"]),
                              "volume_ml": float(values["volume_ml"]),
                              "mean_confidence": None if values.get("mean_confidence") is None
                              else float(values["mean_confidence"])}
                 for label, values in result.stats.items()}
        info = {"box": [int(v) for v in result.box], "shape": list(labels.shape), "dtype": "int16",
                "image_shape": list(call.image.shape), "modality": result.modality, "stats": stats,
                "probabilities": sorted(probabilities)}
        return JobOutcome(info, wire.deflate_array(labels), probabilities)
