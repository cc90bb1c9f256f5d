"""Sliding-window prediction of one stage: every prompt in one forward per window, Gaussian-weighted averaging.

Per window (spec §7.3 step 5): an unprompted forward (zero prompts, the fusion still runs) or the complementary
prompted pair, then optional self-refinement passes prompted by the window's own thresholded prediction, then
sigmoid × Gaussian importance added into a float32 accumulator on the CPU together with the importance itself.
The result is Σ(σ·g)/Σg per class.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..device import autocast
from ..errors import Cancelled, OutOfMemory
from .prompting import (FIRST_PASS_BLOCK, REFINE_BLOCK, BlockPermutation, complementary_logits, label_prompts,
                        random_permutation)
from .request import ProgressEvent
from .windows import Window, gaussian_importance


@dataclass
class Execution:
    """Where and how windows run: device, windows per forward, block choice, progress reports, cancellation,
    arithmetic precision (`medals.device.PRECISIONS`)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    window_batch: int = 1
    block_permutation: BlockPermutation = field(default_factory=random_permutation)
    progress: Callable[[ProgressEvent], None] | None = None
    cancel: threading.Event | None = None
    precision: str = "auto"

    def check_cancelled(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("segmentation cancelled")

    def report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(stage, done, total, f"{stage} stage: window {done}/{total}"))


def window_logits(net, queries: torch.Tensor, image: torch.Tensor, prompt: torch.Tensor | None,
                   label_values: torch.Tensor, refine_iterations: int, execution: Execution) -> torch.Tensor:
    """Logits (B,N,*crop) of a batch of windows: image (B,1,*crop), prompt label map (B,*crop) or None."""

    def forward(patch, sc, mc):
        return net(queries, patch, sc, mc)

    if prompt is None:
        # Zero prompts as the official coarse stage passes them: the fusion conv runs with nothing to fuse.
        no_prompt = torch.zeros((), device=image.device).expand(image.shape[0], len(label_values), *image.shape[2:])
        logits = forward(image, None, no_prompt)
    else:
        sc, mc = label_prompts(prompt, label_values)
        logits = complementary_logits(forward, image, sc, mc, FIRST_PASS_BLOCK, execution.block_permutation)
    for _ in range(refine_iterations):
        mc = (torch.sigmoid(logits.float()) > 0.5).float()
        sc = mc.amax(1, keepdim=True)
        logits = complementary_logits(forward, image, sc, mc, REFINE_BLOCK, execution.block_permutation)
    return logits


@torch.no_grad()
def stage_probabilities(net, queries: torch.Tensor, image: torch.Tensor, windows: list[Window], label_values,
                        prompt: torch.Tensor | None = None, *, refine_iterations: int = 0,
                        execution: Execution | None = None, stage: str = "stage") -> torch.Tensor:
    """Per-class probabilities (N, *image.shape) float32 on the CPU over a padded working grid.

    image: (h, w, d) float32 working image (0–255); prompt: (h, w, d) integer label map on the same grid or None;
    queries: (N, C) text queries, one per entry of `label_values` (the prompt's label value of each query).
    """
    execution = execution or Execution()
    device = execution.device
    crop = tuple(s.stop - s.start for s in windows[0])
    importance = gaussian_importance(crop)
    importance_device = importance.to(device)
    values = torch.as_tensor(list(label_values), device=device)
    queries = queries.to(device)
    accumulated = torch.zeros((len(values), *image.shape), dtype=torch.float32)
    weight = torch.zeros(image.shape, dtype=torch.float32)
    batch = max(1, execution.window_batch)
    for first in range(0, len(windows), batch):
        execution.check_cancelled()
        group = windows[first:first + batch]
        patches = torch.stack([image[w] for w in group])[:, None].to(device, torch.float32)
        prompts = None if prompt is None else torch.stack([prompt[w] for w in group]).to(device)
        try:
            with autocast(device, execution.precision):
                logits = window_logits(net, queries, patches, prompts, values, refine_iterations, execution)
        except torch.OutOfMemoryError:
            raise OutOfMemory(f"{device} ran out of memory in the {stage} stage; use window_batch=1, free the "
                              "device from other jobs, or run on the CPU (--device cpu)") from None
        weighted = (torch.sigmoid(logits.float()) * importance_device).cpu()
        del logits
        for index, window in enumerate(group):
            accumulated[(slice(None), *window)] += weighted[index]
            weight[window] += importance
            execution.report(stage, first + index + 1, len(windows))
    return accumulated.div_(weight)
