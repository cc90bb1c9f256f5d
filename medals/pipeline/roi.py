"""The fine stage's region of interest: the prompt's bounding box with a margin, at least one fine crop wide.

Boxes are (k0, k1, j0, j1, i0, i1), inclusive, on a (k, j, i) grid (spec §7.2 step 6 and §12).
"""
from __future__ import annotations

import numpy as np

from ..config import StageConfig
from .axes import to_array_order, to_network_order
from .zoom import plan_zoom

ROI_MARGIN = 1.1

Box = tuple[int, int, int, int, int, int]


def minimum_half_range(shape, spacing, fine: StageConfig, n_classes: int) -> np.ndarray:
    """Smallest ROI half-range (voxels, (k, j, i), float32) such that the ROI spans one fine crop: (crop/2)·t/s′ − 1.

    s′ is the pseudo spacing the fine stage's zoom policy gives the whole image of `shape` at `spacing` (k, j, i).
    """
    zoom = plan_zoom(to_network_order(shape), to_network_order(spacing), fine.crop_size, fine.target_spacing,
                     n_classes)
    half = [np.float32(c / 2) * np.float32(t) / np.float32(s) - np.float32(1)
            for c, t, s in zip(fine.crop_size, fine.target_spacing, zoom.spacing)]
    return np.array(to_array_order(half), dtype=np.float32)


def roi_box(foreground: np.ndarray, min_half_range, margin: float = ROI_MARGIN) -> Box:
    """ROI around a non-empty bool mask (k, j, i): per axis the centre (min + max)/2 and the half-range
    extent·margin/2 raised to `min_half_range`; bounds int(centre ∓ half-range), truncated, clipped to the grid."""
    box = []
    for axis, minimum in enumerate(min_half_range):
        others = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(foreground.any(axis=others))
        first, last = int(present[0]), int(present[-1])
        centre = (first + last) / 2
        half = max((last - first + 1) * margin / 2, float(minimum))
        size = foreground.shape[axis]
        box += [min(max(int(centre - half), 0), size - 1), min(max(int(centre + half), 0), size - 1)]
    return tuple(box)


def whole_box(shape) -> Box:
    """The box covering a whole (k, j, i) grid."""
    return (0, shape[0] - 1, 0, shape[1] - 1, 0, shape[2] - 1)


def box_slices(box: Box) -> tuple[slice, slice, slice]:
    """Index of an inclusive box."""
    return tuple(slice(box[2 * a], box[2 * a + 1] + 1) for a in range(3))


def grow_box(box: Box, min_half_range, shape) -> Box:
    """The box widened symmetrically where it is narrower than 2·`min_half_range` (+1) voxels, clipped to `shape`."""
    grown = []
    for axis, minimum in enumerate(min_half_range):
        first, last = box[2 * axis], box[2 * axis + 1]
        centre = (first + last) / 2
        half = max((last - first) / 2, float(minimum))
        grown += [max(int(np.floor(centre - half)), 0), min(int(np.ceil(centre + half)), shape[axis] - 1)]
    return tuple(grown)


def shift_box(box: Box, origin) -> Box:
    """The box moved by `origin` (k, j, i): local coordinates of a sub-grid → coordinates of the whole grid."""
    return tuple(b + origin[a // 2] for a, b in enumerate(box))
