"""The two-stage strategy on one volume (spec §7.2), with hybrid prompts and single-stage fallbacks.

1. Coarse stage on the whole image without prompt (all prompts in one pass per window).
2. Semantic tasks: components of the coarse foreground under 10 voxels are removed.
3. User masks (hybrid mode) are painted over the coarse labels, or replace them.
4. ROI = bounding box of that prompt with margin 1.1, at least one fine crop wide.
5. Fine stage on the ROI, prompted by the label map through complementary block masking; pasted into zeros.

Only one stage installed: coarse only → the coarse stage (prompted by the masks, if any) gives the result; fine
only → the fine stage on the masks' ROI, or on the whole image without prompt. An empty prompt also sends the fine
stage over the whole image without prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .labels import remove_small_components
from .roi import Box, box_slices, minimum_half_range, roi_box, whole_box
from .sliding_window import Execution
from .stage import StageModel, StageOutput, run_stage

COARSE, FINE = "coarse", "fine"


@dataclass
class VolumeSegmentation:
    """Labels before post-processing on the input grid (k, j, i).

    labels int16 (0 outside `region`); confidence float32 = probability of each voxel's winning class (0 outside
    `region`); class_probabilities (N, k, j, i) float32 or None; region = where the final stage ran. With
    `keep_state`: the final stage's name and output (its working grid kept) and its prompt before the masks were
    painted over `region` (None: it had none), what `refine.RefinementState` is made of.
    """

    labels: np.ndarray
    confidence: np.ndarray
    region: Box
    class_probabilities: np.ndarray | None = None
    final_stage: str | None = None
    final: StageOutput | None = None
    base_prompt: np.ndarray | None = None


def paint_masks(labels: np.ndarray | None, masks: dict[int, np.ndarray], shape) -> np.ndarray:
    """Label map with every mask painted in (dict order, later masks win overlaps) over `labels` (or zeros)."""
    painted = np.zeros(shape, dtype=np.int16) if labels is None else labels.astype(np.int16, copy=True)
    for value, mask in masks.items():
        painted[np.asarray(mask, dtype=bool)] = value
    return painted


def _pasted(output: StageOutput, region: Box, shape, class_probabilities: bool, stage: str,
            base_prompt: np.ndarray | None, keep_state: bool) -> VolumeSegmentation:
    index = box_slices(region)
    labels = np.zeros(shape, dtype=np.int16)
    labels[index] = output.labels
    confidence = np.zeros(shape, dtype=np.float32)
    confidence[index] = output.confidence
    probabilities = None
    if class_probabilities:
        probabilities = np.zeros((len(output.class_probabilities), *shape), dtype=np.float32)
        probabilities[(slice(None), *index)] = output.class_probabilities
    if not keep_state:
        return VolumeSegmentation(labels, confidence, region, probabilities)
    base = None if base_prompt is None else base_prompt[index]
    return VolumeSegmentation(labels, confidence, region, probabilities, stage, output, base)


def segment_volume(image: np.ndarray, spacing, label_values, queries: torch.Tensor, stages: dict[str, StageModel],
                   *, masks: dict[int, np.ndarray] | None = None, merge_masks_with_coarse: bool = True,
                   refine_iterations: int = 0, clean_coarse: bool = True, class_probabilities: bool = False,
                   keep_state: bool = False, execution: Execution | None = None) -> VolumeSegmentation:
    """Segment a (k, j, i) volume at `spacing` (k, j, i) mm, spacing already repaired.

    label_values: one per query (queries (N, C) from the text encoder); stages: "coarse" and/or "fine";
    masks: user masks by label value, (k, j, i) bool on the image grid; clean_coarse: drop coarse components under
    10 voxels before the ROI (semantic tasks); keep_state: keep what a refinement of the result reuses.
    """
    execution = execution or Execution()
    shape = image.shape
    coarse, fine = stages.get(COARSE), stages.get(FINE)
    masks = masks or {}
    common = dict(refine_iterations=refine_iterations, execution=execution)
    final = dict(class_probabilities=class_probabilities, keep_working=keep_state, **common)

    if fine is None:
        prompt = paint_masks(None, masks, shape) if masks else None
        output = run_stage(coarse, queries, image, spacing, label_values, prompt, name=COARSE, **final)
        return _pasted(output, whole_box(shape), shape, class_probabilities, COARSE, None, keep_state)

    base = None
    if coarse is not None and (not masks or merge_masks_with_coarse):
        coarse_labels = run_stage(coarse, queries, image, spacing, label_values, name=COARSE, **common).labels
        base = remove_small_components(coarse_labels) if clean_coarse else coarse_labels
    prompt = paint_masks(base, masks, shape) if masks else base

    if prompt is None or not prompt.any():
        output = run_stage(fine, queries, image, spacing, label_values, name=FINE, **final)
        return _pasted(output, whole_box(shape), shape, class_probabilities, FINE, base, keep_state)
    region = roi_box(prompt > 0, minimum_half_range(shape, spacing, fine.config, len(label_values)))
    index = box_slices(region)
    output = run_stage(fine, queries, image[index], spacing, label_values, prompt[index], name=FINE, **final)
    return _pasted(output, region, shape, class_probabilities, FINE, base, keep_state)
