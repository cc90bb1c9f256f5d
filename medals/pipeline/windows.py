"""Sliding windows over a working grid: 50 % overlap, Gaussian importance, zero padding up to the crop.

A window is a tuple of three slices (h, w, d) into the padded working grid; windows are listed in C order over
the window grid (h slowest, d fastest), as the official code visits them.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

Window = tuple[slice, slice, slice]

GAUSSIAN_SIGMA = 1 / 8       # σ per axis, as a fraction of the crop
GAUSSIAN_PEAK = 10.0


def padded_shape(shape, crop) -> tuple[int, int, int]:
    """Working shape after zero padding at the high end of every axis shorter than the crop."""
    return tuple(max(n, c) for n, c in zip(shape, crop))


def pad_to(volume: torch.Tensor, shape) -> torch.Tensor:
    """Zero-pad a 3-D volume at the high end of each axis up to `shape` (no copy when nothing to pad)."""
    missing = [target - n for n, target in zip(volume.shape, shape)]
    if not any(missing):
        return volume
    pads = []
    for m in reversed(missing):  # F.pad lists the last axis first
        pads += [0, m]
    return F.pad(volume, pads)


def window_starts(size: int, crop: int) -> list[int]:
    """Starts along one axis: stride crop/2, max(ceil(size/stride) − 1, 1) windows, the last one shifted to end at
    the border. `size` ≥ `crop` (padded)."""
    stride = crop // 2
    count = max(math.ceil(size / stride) - 1, 1)
    return [min(k * stride, size - crop) for k in range(count)]


def sliding_windows(shape, crop) -> list[Window]:
    """All windows over a padded grid of `shape`, C order."""
    per_axis = [window_starts(n, c) for n, c in zip(shape, crop)]
    return [tuple(slice(s, s + c) for s, c in zip(starts, crop)) for starts in itertools.product(*per_axis)]


def gaussian_importance(crop) -> torch.Tensor:
    """Importance map (crop) in float16: a Gaussian (σ = crop/8) peaking at 10 in voxel crop//2, no zeros."""
    impulse = np.zeros(crop)
    impulse[tuple(c // 2 for c in crop)] = 1.0
    gaussian = gaussian_filter(impulse, [c * GAUSSIAN_SIGMA for c in crop], 0, mode="constant", cval=0)
    gaussian /= gaussian.max() / GAUSSIAN_PEAK
    importance = torch.from_numpy(gaussian).half()
    importance[importance == 0] = importance[importance > 0].min()
    return importance
