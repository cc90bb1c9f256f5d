"""One stage on one volume: zoom plan, resampling into the working grid, windows, labels back on the input grid.

`plan_stage`, `prepare_image` and `prepare_prompt` work in network order (h, w, d); `run_stage` takes and returns
(k, j, i) numpy arrays and converts once on each side.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import StageConfig
from .axes import to_network_order, volume_to_array, volume_to_network
from .labels import assemble_labels
from .resample import resample_image, resample_labels, resample_probability, thick_axis
from .sliding_window import Execution, stage_probabilities
from .windows import Window, pad_to, padded_shape, sliding_windows
from .zoom import Zoom, plan_zoom


@dataclass(frozen=True)
class StageModel:
    """A stage's network (built for the stage's crop) and its configuration."""

    net: torch.nn.Module
    config: StageConfig


@dataclass(frozen=True)
class StagePlan:
    """How a stage covers a volume, all in (h, w, d): input size, zoom, working grid (before and after padding to
    the crop), windows over the padded grid, and the thick axis resampled by nearest-exact (or None)."""

    input_shape: tuple[int, int, int]
    zoom: Zoom
    working_shape: tuple[int, int, int]
    padded_shape: tuple[int, int, int]
    windows: list[Window]
    thick_axis: int | None

    @property
    def unpadded(self) -> tuple[slice, slice, slice]:
        return tuple(slice(0, n) for n in self.working_shape)


def plan_stage(shape, spacing, config: StageConfig, n_classes: int) -> StagePlan:
    """Plan for a volume of `shape` voxels at `spacing` mm (h, w, d) with `n_classes` prompts."""
    shape = tuple(int(n) for n in shape)
    zoom = plan_zoom(shape, spacing, config.crop_size, config.target_spacing, n_classes)
    working = zoom.working_shape(shape)
    padded = padded_shape(working, config.crop_size)
    return StagePlan(shape, zoom, working, padded, sliding_windows(padded, config.crop_size),
                     thick_axis(zoom.spacing, zoom.target))


def prepare_image(image: torch.Tensor, plan: StagePlan) -> torch.Tensor:
    """Image (h, w, d) on the input grid → float32 padded working grid."""
    return pad_to(resample_image(image, plan.working_shape, plan.thick_axis), plan.padded_shape)


def prepare_prompt(labels: torch.Tensor, plan: StagePlan) -> torch.Tensor:
    """Label-map prompt (h, w, d) on the input grid → int16 padded working grid (label resampling)."""
    return pad_to(resample_labels(labels, plan.working_shape, plan.thick_axis), plan.padded_shape)


@dataclass
class StageOutput:
    """A stage's result on the grid of the volume it was given, (k, j, i).

    labels int16; confidence float32 = probability of each voxel's winning class; class_probabilities
    (N, k, j, i) float32 when asked for, else None. When kept (`keep_working`), the padded working image (h, w, d)
    and the per-class probabilities over it (N, h, w, d), float32 on the CPU: what a refinement reuses.
    """

    plan: StagePlan
    labels: np.ndarray
    confidence: np.ndarray
    class_probabilities: np.ndarray | None = None
    working_image: torch.Tensor | None = None
    working_probabilities: torch.Tensor | None = None


def _to_array(volume: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(volume_to_array(volume).cpu().numpy())


def run_stage(model: StageModel, queries: torch.Tensor, image: np.ndarray, spacing, label_values,
              prompt: np.ndarray | None = None, *, refine_iterations: int = 0, class_probabilities: bool = False,
              keep_working: bool = False, execution: Execution | None = None, name: str = "stage") -> StageOutput:
    """Run one stage over a whole (k, j, i) volume at `spacing` (k, j, i) mm.

    queries (N, C) pair with `label_values`; `prompt` is an optional (k, j, i) label map on the same grid.
    """
    execution = execution or Execution()
    device = execution.device
    volume = volume_to_network(torch.as_tensor(image)).to(device)
    plan = plan_stage(volume.shape, to_network_order(spacing), model.config, len(label_values))
    working_image = prepare_image(volume, plan)
    del volume
    working_prompt = None
    if prompt is not None:
        working_prompt = prepare_prompt(volume_to_network(torch.as_tensor(prompt)).to(device), plan)
    probabilities = stage_probabilities(model.net, queries, working_image, plan.windows, label_values,
                                        working_prompt, refine_iterations=refine_iterations, execution=execution,
                                        stage=name)
    del working_prompt
    unpadded = probabilities[(slice(None), *plan.unpadded)]
    labels, confidence = assemble_labels(unpadded, label_values)
    output = StageOutput(plan, _to_array(resample_labels(labels.to(device), plan.input_shape)),
                         _to_array(resample_probability(confidence.to(device), plan.input_shape)))
    if class_probabilities:
        output.class_probabilities = np.stack([_to_array(resample_probability(p.to(device), plan.input_shape))
                                               for p in unpadded])
    if keep_working:
        output.working_image, output.working_probabilities = working_image.cpu(), probabilities
    return output
