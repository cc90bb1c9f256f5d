"""Resampling of images, label maps and probability maps between an input grid and a stage's working grid.

The kernels are nnU-Net's torch ones as the official Medal S code uses them (spec §5.4, §12):

* images: trilinear, `align_corners=False`, no antialiasing;
* label maps: every label's indicator × 1000 is interpolated the same way and stored as float16; a voxel takes the
  label with the largest stored value (first label on ties, background included), which is the official
  "> 700, else argmax" rule;
* thick axis: when one axis' spacing exceeds the thinnest by more than 3× (current spacing, else new spacing),
  the volume is interpolated in-plane (bilinear, slice by slice) and then along the thick axis by `nearest-exact`.
  Only resampling into a working grid uses this; going back to the input grid is always plain trilinear.

Volumes are 3-D tensors in any fixed axis order; spacings and shapes are in that same order.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ANISOTROPY_THRESHOLD = 3.0
INDICATOR_SCALE = 1000.0


def thick_axis(current_spacing, new_spacing) -> int | None:
    """The axis to resample separately (nearest-exact), or None for plain trilinear resampling.

    Decided on the current spacing when it is anisotropic (max/min > 3), else on the new spacing; there is a thick
    axis only when exactly one axis has the largest spacing.
    """
    for spacing in (current_spacing, new_spacing):
        spacing = np.asarray(spacing, dtype=np.float64)
        if spacing.max() / spacing.min() > ANISOTROPY_THRESHOLD:
            coarsest = np.flatnonzero(spacing == spacing.max())
            return int(coarsest[0]) if len(coarsest) == 1 else None
    return None


def _interpolate(volumes: torch.Tensor, shape, mode: str) -> torch.Tensor:
    """Interpolate a stack (C, *spatial) of 2-D or 3-D float maps to `shape` (spatial only)."""
    kwargs = {} if mode == "nearest-exact" else {"align_corners": False}
    return F.interpolate(volumes[None], size=tuple(shape), mode=mode, **kwargs)[0]


def _linear(ndim: int) -> str:
    return "trilinear" if ndim == 3 else "bilinear"


def _resample_labels_linear(labels: torch.Tensor, shape) -> torch.Tensor:
    """Label stack (C, *spatial) → (C, *shape) int16 by float16 indicator interpolation (see module doc)."""
    mode = _linear(labels.ndim - 1)
    out = torch.zeros((labels.shape[0], *shape), dtype=torch.int16, device=labels.device)
    best = torch.full_like(out, float("-inf"), dtype=torch.float16)
    for value in torch.unique(labels).tolist():  # ascending: ties keep the lower label
        indicator = (labels == value).float().mul_(INDICATOR_SCALE)
        stored = _interpolate(indicator, shape, mode).half()
        del indicator
        wins = stored > best
        best = torch.where(wins, stored, best)
        out.masked_fill_(wins, value)
    return out


def _in_plane_then_thick(volume: torch.Tensor, shape, axis: int, in_plane) -> torch.Tensor:
    """Resample slices across `axis` with `in_plane(stack, plane_shape)`, then `axis` itself by nearest-exact."""
    slices = volume.movedim(axis, 0)
    plane_shape = [n for i, n in enumerate(shape) if i != axis]
    resliced = in_plane(slices, plane_shape).movedim(0, axis)
    return _interpolate(resliced[None].float(), shape, "nearest-exact")[0]


def resample_image(image: torch.Tensor, shape, axis: int | None = None) -> torch.Tensor:
    """Image (3-D float) → `shape`, trilinear, or in-plane bilinear + nearest-exact along thick `axis`."""
    shape = tuple(int(n) for n in shape)
    if tuple(image.shape) == shape:
        return image.float()
    if axis is None:
        return _interpolate(image[None].float(), shape, "trilinear")[0]
    return _in_plane_then_thick(image.float(), shape, axis,
                                lambda stack, plane: _interpolate(stack, plane, "bilinear"))


def resample_labels(labels: torch.Tensor, shape, axis: int | None = None) -> torch.Tensor:
    """Label map (3-D integer) → `shape` int16, by the official indicator rule (module doc)."""
    shape = tuple(int(n) for n in shape)
    if tuple(labels.shape) == shape:
        return labels.to(torch.int16)
    if axis is None:
        return _resample_labels_linear(labels[None], shape)[0]
    resampled = _in_plane_then_thick(labels, shape, axis, _resample_labels_linear)
    return resampled.to(torch.int16)


def resample_probability(probability: torch.Tensor, shape) -> torch.Tensor:
    """Probability map (3-D float) → `shape`, plain trilinear (the way back to the input grid)."""
    return resample_image(probability, shape)
