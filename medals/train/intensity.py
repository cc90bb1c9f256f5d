"""Intensity augmentation of a training patch on the network's 0–255 scale (nnU-Net's defaults in spirit).

Each transform fires with its own probability: multiplicative brightness, contrast about the patch mean (clipped to
the patch's own range), gamma on the patch's range, additive Gaussian noise. The result is clipped to 0–255, the
range every input of the network has.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class IntensityAugmentation:
    brightness_prob: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    contrast_prob: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_prob: float = 0.1
    noise_std_range: tuple[float, float] = (0.0, 10.0)
    """Standard deviation of the added noise, in 0–255 units."""

    def __post_init__(self):
        for name in ("brightness", "contrast", "gamma", "noise"):
            probability = getattr(self, f"{name}_prob")
            if not 0 <= probability <= 1:
                raise ValueError(f"{name}_prob must lie in [0, 1], got {probability}")
        for name in ("brightness_range", "contrast_range", "gamma_range", "noise_std_range"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be 0 ≤ low ≤ high, got {getattr(self, name)}")


def _draw(probability: float, value_range, generator: torch.Generator) -> float | None:
    """A value from U(value_range) with the given probability, else None."""
    if torch.rand((), generator=generator).item() >= probability:
        return None
    low, high = value_range
    return low + (high - low) * torch.rand((), generator=generator).item()


def augment_intensity(image: torch.Tensor, settings: IntensityAugmentation,
                      generator: torch.Generator) -> torch.Tensor:
    """A new float32 patch (same shape) with random brightness, contrast, gamma and noise, clipped to 0–255."""
    image = image.float().clone()
    brightness = _draw(settings.brightness_prob, settings.brightness_range, generator)
    if brightness is not None:
        image *= brightness
    contrast = _draw(settings.contrast_prob, settings.contrast_range, generator)
    if contrast is not None:
        low, high, mean = image.min(), image.max(), image.mean()
        image = ((image - mean) * contrast + mean).clamp(low, high)
    gamma = _draw(settings.gamma_prob, settings.gamma_range, generator)
    if gamma is not None:
        low, high = image.min(), image.max()
        if high > low:
            image = low + (high - low) * ((image - low) / (high - low)).pow(gamma)
    noise = _draw(settings.noise_prob, settings.noise_std_range, generator)
    if noise is not None:
        image += noise * torch.randn(image.shape, generator=generator)
    return image.clamp_(0, 255)
