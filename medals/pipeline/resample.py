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


def linear_sources(out_indices: torch.Tensor, in_size: int, out_size: int) -> tuple[torch.Tensor, ...]:
    """What `F.interpolate` (linear, `align_corners=False`, sized) reads for output indices along one axis: the
    two source indices and their weights (src = max((x + 0.5)·in/out − 0.5, 0), float32 as torch computes it)."""
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    source = ((out_indices.float() + 0.5) * scale - 0.5).clamp_(min=0)
    low = source.long().clamp_(max=in_size - 1)
    high = (low + 1).clamp_(max=in_size - 1)
    upper = source - low
    return low, high, 1 - upper, upper


def box_sources(box, in_shape, out_shape) -> tuple[slice, slice, slice]:
    """The input-grid block a trilinear resampling to `out_shape` reads for the output `box` (three slices)."""
    block = []
    for axis, part in enumerate(box):
        low, high, _, _ = linear_sources(torch.arange(part.start, part.stop), in_shape[axis], out_shape[axis])
        block.append(slice(int(low.min()), int(high.max()) + 1))
    return tuple(block)


def resample_box(volumes: torch.Tensor, offset, in_shape, out_shape, box) -> torch.Tensor:
    """Trilinear resampling of a stack (C, *in_shape) to (C, *out_shape), computed only over the output `box`.

    `volumes` holds the input grid from `offset` on and must cover `box_sources(box, in_shape, out_shape)`. Axis
    by axis, it reads the same two neighbours with the same weights as `F.interpolate`, so it agrees with the
    whole-grid resampling to float32 rounding.
    """
    result = volumes.float()
    for axis, part in enumerate(box):
        low, high, low_weight, high_weight = linear_sources(torch.arange(part.start, part.stop, device=volumes.device),
                                                             in_shape[axis], out_shape[axis])
        view = [1] * result.ndim
        view[axis + 1] = -1
        result = (result.index_select(axis + 1, low - offset[axis]) * low_weight.view(view)
                  + result.index_select(axis + 1, high - offset[axis]) * high_weight.view(view))
    return result


def resample_labels_box(labels: torch.Tensor, offset, in_shape, out_shape, box, values) -> torch.Tensor:
    """`resample_labels` to `out_shape` (plain trilinear) computed only over the output `box`: int16 (*box).

    `labels` holds the input grid from `offset` on (see `resample_box`); `values` are all label values the whole
    map may hold, background included (a value absent everywhere never wins, as in the whole-grid rule).
    """
    shape = tuple(part.stop - part.start for part in box)
    out = torch.zeros(shape, dtype=torch.int16, device=labels.device)
    best = torch.full(shape, float("-inf"), dtype=torch.float16, device=labels.device)
    for value in sorted(set(int(v) for v in values)):
        indicator = (labels == value).float().mul_(INDICATOR_SCALE)
        stored = resample_box(indicator[None], offset, in_shape, out_shape, box)[0].half()
        wins = stored > best
        best = torch.where(wins, stored, best)
        out.masked_fill_(wins, value)
    return out
