"""Intensity normalisation to the 0–255 scale the Medal S models were trained on (the challenge convention).

The rule, applied by `to_model_range` in this order:

1. Challenge `.npz` input is already on the 0–255 scale: passed through unchanged (as float32).
2. Any `uint8` image is taken to be on the 0–255 scale already (8-bit exports, most microscopy and ultrasound):
   passed through unchanged (as float32).
3. CT: a window (level L, width W in HU) maps [L − W/2, L + W/2] linearly onto [0, 255], clipping outside.
   Soft tissue (W400/L40) unless a preset or an explicit level/width is given.
4. Every other modality (MRI, PET, ultrasound, microscopy): clip to the 0.5th and 99.5th percentiles of the
   voxels > 0 and map that range linearly onto [0, 255]; voxels ≤ 0 become 0. Percentiles are taken over the
   positive voxels because zero-filled background (skull-stripped MRI, padded slabs, PET outside the body) would
   otherwise pull the lower percentile to 0 and waste the range; this follows the challenge's own preprocessing
   for non-CT images. When the positive voxels span no range, they all become 255.

All functions are pure: they take and return numpy arrays (any shape, in practice (k, j, i)) and return float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5


@dataclass(frozen=True)
class Window:
    """A CT display window in Hounsfield units."""

    level: float
    width: float

    @property
    def bounds(self) -> tuple[float, float]:
        return self.level - self.width / 2, self.level + self.width / 2


CT_WINDOWS = {
    "soft_tissue": Window(level=40, width=400),
    "lung": Window(level=-600, width=1500),
    "bone": Window(level=400, width=1800),
    "brain": Window(level=40, width=80),
}
DEFAULT_CT_WINDOW = "soft_tissue"


def resolve_window(preset: str | None = None, level: float | None = None, width: float | None = None) -> Window:
    """The CT window from a preset name and/or an explicit level and width (either overrides the preset's)."""
    name = DEFAULT_CT_WINDOW if preset is None else preset.strip().lower().replace(" ", "_").replace("-", "_")
    if name not in CT_WINDOWS:
        raise InputError(f"unknown CT window {preset!r}; choose one of {', '.join(CT_WINDOWS)}")
    base = CT_WINDOWS[name]
    window = Window(level=base.level if level is None else float(level),
                    width=base.width if width is None else float(width))
    if not (np.isfinite(window.level) and np.isfinite(window.width) and window.width > 0):
        raise InputError(f"CT window width must be a positive number and level finite (got W{width} L{level})")
    return window


def apply_window(image: np.ndarray, window: Window) -> np.ndarray:
    """Map HU values through `window` onto [0, 255] (float32), clipping outside the window."""
    low, high = window.bounds
    scaled = (np.asarray(image, dtype=np.float64) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0.0, 255.0).astype(np.float32)


def percentile_rescale(image: np.ndarray, low_percentile: float = LOW_PERCENTILE,
                       high_percentile: float = HIGH_PERCENTILE) -> np.ndarray:
    """Clip to the given percentiles of the positive voxels and map onto [0, 255]; voxels ≤ 0 become 0."""
    image = np.asarray(image)
    positive = image > 0
    result = np.zeros(image.shape, dtype=np.float32)
    if not positive.any():
        return result
    low, high = np.percentile(image[positive].astype(np.float64), [low_percentile, high_percentile])
    if high <= low:
        result[positive] = 255.0
        return result
    scaled = (np.clip(image[positive].astype(np.float64), low, high) - low) * (255.0 / (high - low))
    result[positive] = scaled.astype(np.float32)
    return result


def to_model_range(image: np.ndarray, modality: str, *, challenge_input: bool = False, window: Window | None = None
                   ) -> np.ndarray:
    """The image on the model's 0–255 scale (float32), by the rule in this module's docstring.

    `modality` is a canonical name (see `medals.modality`); `challenge_input` is True for challenge `.npz`
    cases; `window` overrides the default CT window (see `resolve_window`).
    """
    image = np.asarray(image)
    if challenge_input or image.dtype == np.uint8:
        return image.astype(np.float32)
    if modality == "ct":
        return apply_window(image, window or CT_WINDOWS[DEFAULT_CT_WINDOW])
    return percentile_rescale(image)
