"""What a segmentation request holds and what it returns (the pipeline's public types).

Arrays are numpy, (k, j, i) = (slices, rows, columns) on the input image's grid; boxes are
(k0, k1, j0, j1, i0, i1) with inclusive bounds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_LABEL = 32767


@dataclass(frozen=True)
class Prompt:
    """One structure to segment: free text (the text encoder reads it unchanged) and the label value written for it
    (1..32767)."""

    text: str
    label: int


@dataclass(frozen=True)
class SegmentOptions:
    """How to run a request.

    stages: the installed stages to use, any subset of ("coarse", "fine"). Coarse only: the coarse labels are the
        result. Fine only: the fine stage runs on the whole image (on the masks' region when masks are given).
    refine_iterations: self-refinement passes per window, each prompted by the window's own thresholded prediction
        (the official pipeline uses 1 for instance tasks and 0 for semantic ones).
    instance: instance task: each prompt's mask is split into 6-connected components numbered 1, 2, … (components
        under 10 voxels dropped); coarse labels are not cleaned before the ROI.
    keep_largest: keep only the largest connected component of every label.
    probabilities: also return each class' probability map on the input grid.
    merge_masks_with_coarse: with user masks, run the coarse stage too and prompt the fine stage with its labels
        and the masks painted over them; otherwise the masks alone are the prompt.
    box: recompute only this region (k0, k1, j0, j1, i0, i1, inclusive): the pipeline runs on a context region
        around it (at least one fine crop) and labels outside the box stay 0. When `segment` refines a kept
        result (see its `states`), the box is the edit and the result's box contains it.
    window_batch: windows per network forward (useful on a GPU).
    """

    stages: tuple[str, ...] = ("coarse", "fine")
    refine_iterations: int = 0
    instance: bool = False
    keep_largest: bool = False
    probabilities: bool = False
    merge_masks_with_coarse: bool = True
    box: tuple[int, int, int, int, int, int] | None = None
    window_batch: int = 1


@dataclass
class ProgressEvent:
    """One finished window (`done` of `total`) of a stage ("coarse" or "fine")."""

    stage: str
    done: int
    total: int
    message: str


@dataclass
class SegmentResult:
    """labels: (k, j, i) int16 on the input grid: the prompts' label values (instance ids in instance mode), 0
        elsewhere and everywhere outside `box`.
    box: the region whose labels were computed (k0, k1, j0, j1, i0, i1, inclusive).
    stats: label (or instance id) → {"name": prompt text, "voxels", "volume_ml", "mean_confidence": mean
        probability of the winning class over the label's voxels}.
    probabilities: label value → (k, j, i) float32 probability map (0 outside `box`), when requested.
    modality: the modality name the text encoder was given.
    refined: True when a kept result was refined (only the windows around the edit ran; `box` is where labels
        may have changed), False after a full run.
    """

    labels: np.ndarray
    box: tuple[int, ...]
    stats: dict[int, dict]
    probabilities: dict[int, np.ndarray] | None
    modality: str
    refined: bool = False
