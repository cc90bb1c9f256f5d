"""Spacing repair and the zoom policy: the spacing a volume is treated as having, and where a stage works on it.

The rules are the official Medal S ones (spec §5.1, §7.6 rules 2, 3, 4 first case, 5 and 7) with every rule that
tests a class name left out:

* sub-millimetre spacings are treated as 1 mm (the models never work finer than the voxel grid at 1 mm);
* a single-class request on a coarse axis is zoomed in by 1.2, less when the zoom would exceed 3;
* a single-class request never works on more than twice the crop along an axis;
* a very long coarse axis is not upsampled; a short axis is enlarged toward the crop by a quantized factor 1.25^k;
* a large multi-class volume is capped at about 1.9 crops per axis.

Like the official code the arithmetic is float32, so lowered targets come out as e.g. 2.625 or 1.9921875.
All tuples here are in network order (h, w, d) unless a name says otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_EXTENT = (1000, 1000, 700)
"""Per-axis size (voxels, h w d) beyond which a sub-millimetre axis is kept as is and a coarse axis not upsampled."""

ZOOM_STEPS = tuple(1.25 ** k for k in range(1, 18))
"""Quantized upsampling factors for axes shorter than the crop (1.25 … 44.4)."""

SINGLE_CLASS_ZOOM = 1.2       # a lone class on a coarse axis is looked at 1.2× finer
MAX_SINGLE_CLASS_ZOOM = 3.0   # beyond this the extra zoom is compressed toward 3
SINGLE_CLASS_MAX_CROPS = 2.0  # a lone class works on at most 2 crops per axis
MULTI_CLASS_VOLUME_CROPS = 1.8  # multi-class cap applies above (1.8 crops)³ of volume ...
MULTI_CLASS_MAX_CROPS = 1.9     # ... and limits each long axis to 1.9 crops


def repair_spacing(shape, spacing) -> tuple[float, float, float]:
    """The official spacing repair on a (k, j, i) volume (spec §5.1); returns the repaired (k, j, i) spacing.

    Components below 0.1 mm are taken as 1 mm. Then the axis with the fewest voxels is assumed to be the
    through-plane one: if it does not already carry the largest spacing (and that spacing exceeds 0.5 mm), the two
    spacing entries are swapped. Values are float32, as in the official code.
    """
    repaired = np.asarray(spacing, dtype=np.float32).copy()
    repaired[repaired < np.float32(0.1)] = 1.0
    thinnest, coarsest = int(np.argmin(shape)), int(np.argmax(repaired))
    if thinnest != coarsest and repaired[coarsest] > np.float32(0.5):
        repaired[[thinnest, coarsest]] = repaired[[coarsest, thinnest]]
    return tuple(float(s) for s in repaired)


@dataclass(frozen=True)
class Zoom:
    """How a stage sees a volume, per axis (h, w, d), in mm.

    `spacing` is the pseudo spacing the volume is treated as having, `target` the spacing it is resampled to
    (the stage's own, lowered on axes that would otherwise be shorter than the crop). The zoom factor is
    spacing / target.
    """

    spacing: tuple[float, float, float]
    target: tuple[float, float, float]

    def working_shape(self, shape) -> tuple[int, int, int]:
        """round(spacing / target · size) per axis, float32, half to even (the official resampled size)."""
        return tuple(int(np.rint(np.float32(s) / np.float32(t) * np.float32(n)))
                     for s, t, n in zip(self.spacing, self.target, shape))


def _quantized_zoom(size: int, crop: int) -> float:
    """Largest 1.25^k (k = 1..17) with size · 1.25^k ≤ crop, or 1 when none fits."""
    fitting = [step for step in ZOOM_STEPS if size * step <= crop]
    return max(fitting) if fitting else 1.0


def plan_zoom(shape, spacing, crop, target, n_classes: int, max_extent=MAX_EXTENT) -> Zoom:
    """The zoom policy for one stage on a volume of `shape` voxels at `spacing` mm (all h, w, d).

    `crop` and `target` are the stage's patch size and working spacing; `n_classes` the number of prompts.
    """
    f32 = np.float32
    s = [f32(v) for v in spacing]
    t = [f32(v) for v in target]
    single = n_classes == 1
    for i, (n, c, limit) in enumerate(zip(shape, crop, max_extent)):
        if s[i] < 1.0 and n <= limit:
            s[i] = f32(1.0)
        if single and s[i] > 1.0:
            s[i] = max(s[i] / f32(SINGLE_CLASS_ZOOM), t[i])
            zoom = s[i] / t[i]
            if zoom > MAX_SINGLE_CLASS_ZOOM:
                s[i] = f32(MAX_SINGLE_CLASS_ZOOM) * s[i] / (zoom - f32(0.5))
        if single and n > SINGLE_CLASS_MAX_CROPS * c:
            s[i] = f32(SINGLE_CLASS_MAX_CROPS) * f32(c) / f32(n)
        if s[i] * n > limit and s[i] > t[i]:
            s[i] = t[i]
        elif s[i] * n < c * t[i]:
            t[i] = min(t[i], max(s[i] * n / f32(c), s[i] / f32(_quantized_zoom(n, c))))
    if not single:
        extent = [s[i] * n for i, n in enumerate(shape)]
        if math.prod(extent) > f32(MULTI_CLASS_VOLUME_CROPS ** 3) * f32(math.prod(crop)):
            for i, (n, c) in enumerate(zip(shape, crop)):
                cap = f32(MULTI_CLASS_MAX_CROPS) * f32(c) * t[i]
                if extent[i] > cap:
                    capped = cap / f32(n)
                    # An upsampled axis (s > t) only loses upsampling (down to 1.727 crops, never below its
                    # own size); a downsampled one is capped at 1.9 crops.
                    s[i] = max(t[i], capped / f32(1.1)) if s[i] > t[i] else min(t[i], capped)
    return Zoom(tuple(float(v) for v in s), tuple(float(v) for v in t))
