"""`segment`: a validated request on a loaded model → labels, statistics and optional probabilities.

A thin layer over `two_stage.segment_volume`: it checks the request, repairs the spacing, encodes the prompts,
restricts the work to a box when asked, refines a kept result around an edit (`refine`), and applies the label
options (instances, largest component).
"""
from __future__ import annotations

import threading
import warnings
from typing import Callable

import numpy as np
import torch

from ..device import check_precision, pick_device
from ..errors import InputError, OutOfMemory
from ..modality import detect_modality
from ..orientation import reorientation
from .labels import instance_labels, keep_largest_components
from .prompting import random_permutation
from .request import MAX_LABEL, ProgressEvent, Prompt, SegmentOptions, SegmentResult
from .refine import RefinementCache, RefinementState, edited_box, image_fingerprint, refine, state_key
from .roi import Box, box_slices, grow_box, minimum_half_range, shift_box, whole_box
from .sliding_window import Execution
from .stage import StageModel
from .two_stage import COARSE, FINE, paint_masks, segment_volume
from .zoom import repair_spacing

STAGE_NAMES = (COARSE, FINE)


def _check_image(image: np.ndarray, spacing) -> tuple[float, float, float]:
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise InputError(f"the image must be a 3-D (k, j, i) array; got shape {np.shape(image)}")
    if min(image.shape) == 0:
        raise InputError(f"the image is empty (shape {image.shape})")
    if not (np.issubdtype(image.dtype, np.number) and not np.issubdtype(image.dtype, np.complexfloating)):
        raise InputError(f"the image must hold real numbers; got dtype {image.dtype}")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise InputError(f"the image has {int((~np.isfinite(image)).sum())} NaN or infinite voxels")
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError(f"the spacing must be three numbers (k, j, i) in mm; got {spacing!r}") from None
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise InputError(f"the spacing must be three positive finite numbers (k, j, i) in mm; got {spacing!r}")
    return values


def _check_prompts(prompts: list[Prompt]) -> list[int]:
    if not prompts:
        raise InputError("no prompts: give at least one structure to segment")
    values = []
    for prompt in prompts:
        if not isinstance(prompt.text, str) or not prompt.text.strip():
            raise InputError(f"prompt for label {prompt.label} has no text")
        if isinstance(prompt.label, bool) or not isinstance(prompt.label, (int, np.integer)) \
                or not 1 <= prompt.label <= MAX_LABEL:
            raise InputError(f"label value {prompt.label!r} of prompt {prompt.text!r} must be an integer in "
                             f"1..{MAX_LABEL} (0 is background)")
        if int(prompt.label) in values:
            raise InputError(f"label value {prompt.label} is used by more than one prompt")
        values.append(int(prompt.label))
    return values


def _check_masks(masks: dict[int, np.ndarray] | None, label_values: list[int], shape) -> dict[int, np.ndarray]:
    checked = {}
    for value, mask in (masks or {}).items():
        if value not in label_values:
            raise InputError(f"mask given for label {value}, which no prompt has (labels: {label_values})")
        mask = np.asarray(mask)
        if mask.shape != tuple(shape):
            raise InputError(f"mask for label {value} has shape {mask.shape}, the image {tuple(shape)}")
        checked[int(value)] = mask.astype(bool, copy=False)
    return checked


def _check_box(box, shape) -> Box | None:
    if box is None:
        return None
    box = tuple(int(b) for b in box)
    if len(box) != 6 or any(not 0 <= box[2 * a] <= box[2 * a + 1] < shape[a] for a in range(3)):
        raise InputError(f"box {box} is not (k0, k1, j0, j1, i0, i1) with 0 ≤ start ≤ end < size {tuple(shape)}")
    return box


def _check_options(options: SegmentOptions, installed) -> tuple[str, ...]:
    unknown = set(options.stages) - set(STAGE_NAMES)
    if unknown:
        raise InputError(f"unknown stage(s) {sorted(unknown)}; stages are {STAGE_NAMES}")
    stages = tuple(s for s in STAGE_NAMES if s in options.stages and s in installed)
    if not stages:
        raise InputError(f"none of the requested stages {tuple(options.stages)} is installed "
                         f"(installed: {tuple(sorted(installed))})")
    if options.refine_iterations < 0:
        raise InputError(f"refine_iterations must be ≥ 0; got {options.refine_iterations}")
    if options.window_batch < 1:
        raise InputError(f"window_batch must be ≥ 1; got {options.window_batch}")
    return stages


def _statistics(labels: np.ndarray, confidence: np.ndarray, names: dict[int, str], spacing) -> dict[int, dict]:
    """label → name, voxel count, volume in ml, mean winning-class probability over its voxels."""
    flat = labels.ravel().astype(np.int64)
    counts = np.bincount(flat)
    sums = np.bincount(flat, weights=confidence.ravel())
    voxel_ml = float(np.prod(spacing)) / 1000.0
    stats = {}
    for value, name in names.items():
        voxels = int(counts[value]) if value < len(counts) else 0
        stats[value] = {"name": name, "voxels": voxels, "volume_ml": voxels * voxel_ml,
                        "mean_confidence": float(sums[value] / voxels) if voxels else 0.0}
    return stats


def segment(model, image: np.ndarray, spacing, prompts: list[Prompt], *, direction=None,
            modality: str | None = None, masks: dict[int, np.ndarray] | None = None,
            options: SegmentOptions = SegmentOptions(), progress: Callable[[ProgressEvent], None] | None = None,
            cancel: threading.Event | None = None, device=None, precision: str | None = None,
            states: RefinementCache | None = None, image_id: str | None = None, reuse: bool = True) -> SegmentResult:
    """Segment the structures named by `prompts` in a (k, j, i) image on the 0–255 scale.

    model: a loaded model (`config.stages`, `nets` by stage name, `text_encoder.encode(texts, modality)`);
    spacing: (k, j, i) in mm; direction: the image's ITK direction matrix (3×3, or None when unknown) — a model
    that records its training orientation gets the image turned to it, and everything returned is turned back
    (`medals.orientation`); modality: a modality name (aliases accepted), else detected from the prompts'
    keywords and the image (`medals.modality`); masks: optional user masks by label value, (k, j, i) on the
    image grid, used as spatial prompts (hybrid mode); progress: called once per window per stage; cancel:
    checked between windows (raises Cancelled); device: "cuda", "cpu", a torch.device or None (auto); precision:
    "auto" (None), "fp32" or "bf16" (`medals.device.PRECISIONS`).
    states: where each result's refinement state is kept (`refine.RefinementCache`); with it, a request with
    masks whose image, prompts and options match a kept result recomputes only the windows around the edit
    (`options.box`, else where the masks changed) and returns that box (`SegmentResult.refined`); anything else,
    or a state evicted, runs in full (and is kept); reuse=False always runs in full. image_id: the image's
    content id when the caller has one (else it is hashed).
    Raises InputError on a bad request, OutOfMemory when the device runs out of memory.
    """
    spacing = _check_image(image, spacing)
    label_values = _check_prompts(prompts)
    masks = _check_masks(masks, label_values, image.shape)
    box = _check_box(options.box, image.shape)
    stage_names = _check_options(options, model.nets)
    modality = detect_modality([p.text for p in prompts], image, explicit=modality)
    shape = image.shape
    orientation = getattr(model.config, "orientation", None)
    if orientation is not None and direction is None:
        warnings.warn(f"MedalS: model {model.config.name!r} was trained on {orientation}-oriented images and no "
                      f"direction was given: the array is taken as {orientation} already", RuntimeWarning,
                      stacklevel=2)
    turn = reorientation(direction, orientation)
    key = None if states is None else state_key(image_id or image_fingerprint(image, spacing), model, prompts,
                                                modality, direction, stage_names, options)
    image, spacing = turn.apply(image), turn.permute(spacing)
    masks = {value: turn.apply(mask) for value, mask in masks.items()}
    box = None if box is None else turn.box(box, shape)
    device = device if isinstance(device, torch.device) else pick_device(device)
    precision = check_precision(precision, device)

    stages = {name: StageModel(model.nets[name].to(device).eval(), model.config.stages[name])
              for name in stage_names}
    with torch.no_grad():
        queries = model.text_encoder.encode([p.text for p in prompts], modality).float()
    execution = Execution(device, options.window_batch, random_permutation(0), progress, cancel, precision)
    mask_map = None if states is None else paint_masks(None, masks, image.shape)
    state = states.get(key) if states is not None and masks and reuse else None
    try:
        refined = _refinement(state, stages, queries, mask_map, box, options, execution)
        if refined is not None:
            computed = shift_box(refined.box, state.region[0::2])
            labels, confidence, class_maps = refined.labels, refined.confidence, refined.class_probabilities
        else:
            computed, labels, confidence, class_maps = _full_run(image, spacing, label_values, queries, stages,
                                                                 masks, mask_map, box, options, execution, states,
                                                                 key)
    except torch.OutOfMemoryError:
        raise OutOfMemory(f"{device} ran out of memory while resampling or assembling labels; free the device from "
                          "other jobs, segment a box, or run on the CPU (--device cpu)") from None

    names = {p.label: p.text for p in prompts}
    if options.keep_largest:
        labels = keep_largest_components(labels)
    if options.instance:
        labels, sources = instance_labels(labels, label_values)
        names = {k + 1: names[value] for k, value in enumerate(sources)}
    target = box_slices(computed)
    full = np.zeros(image.shape, dtype=np.int16)
    full[target] = labels
    probabilities = None
    if options.probabilities:
        probabilities = {}
        for value, class_map in zip(label_values, class_maps):
            probabilities[value] = np.zeros(image.shape, dtype=np.float32)
            probabilities[value][target] = class_map
            probabilities[value] = turn.undo(probabilities[value])
    return SegmentResult(turn.undo(full), turn.unbox(computed, shape),
                         _statistics(labels, confidence, names, spacing), probabilities, modality,
                         refined=refined is not None)


def _refinement(state, stages, queries, mask_map, box, options, execution):
    """The refinement of a kept result around the edit, or None when there is no state or it cannot be reused.
    Holds the state's lock: two workers of a multi-device server refining one result take turns."""
    if state is None:
        return None
    with state.lock:
        edit = edited_box(state, mask_map, box)
        if edit is None:
            return None
        return refine(state, stages[state.stage], queries, mask_map[box_slices(state.region)], edit,
                      refine_iterations=options.refine_iterations, class_probabilities=options.probabilities,
                      execution=execution)


def _full_run(image, spacing, label_values, queries, stages, masks, mask_map, box, options, execution, states, key):
    """The two-stage pipeline on the whole image, or on a context region around `box`; keeps the result's
    refinement state in `states` (when given). Returns (computed box, labels, confidence and class probabilities
    over it)."""
    stage_names = tuple(stages)
    repaired = repair_spacing(image.shape, spacing)
    region = whole_box(image.shape) if box is None else \
        grow_box(box, minimum_half_range(image.shape, repaired, stages[stage_names[-1]].config, len(label_values)),
                 image.shape)
    index = box_slices(region)
    result = segment_volume(image[index], repaired, label_values, queries, stages,
                            masks={v: m[index] for v, m in masks.items()},
                            merge_masks_with_coarse=options.merge_masks_with_coarse,
                            refine_iterations=options.refine_iterations, clean_coarse=not options.instance,
                            class_probabilities=options.probabilities, keep_state=states is not None,
                            execution=execution)
    origin = region[0::2]
    if states is not None:
        final = shift_box(result.region, origin)
        states.put(key, RefinementState(result.final_stage, final, result.final.plan, result.base_prompt,
                                        mask_map[box_slices(final)], result.final.working_image,
                                        result.final.working_probabilities, label_values))
    computed = box if box is not None else shift_box(result.region, origin)
    local = box_slices(shift_box(computed, tuple(-o for o in origin)))
    class_maps = None if result.class_probabilities is None else [m[local] for m in result.class_probabilities]
    return computed, result.labels[local], result.confidence[local], class_maps
