"""Label maps from probabilities, and the connected-component rules applied to them.

Connectivity is 6 (faces) throughout, as in the official code and the challenge's instance metric.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..errors import MedalSError

THRESHOLD = 0.5
MIN_COMPONENT_VOXELS = 10
_SLAB = 16  # planes per step of the label assembly (bounds its temporaries)


def assemble_labels(probabilities: torch.Tensor, label_values) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class probabilities (N, *grid) → (labels int16, confidence float32), both (*grid).

    Each voxel takes the label value of its most probable class (first on ties) when that probability is ≥ 0.5,
    else 0; `confidence` is that maximum probability.
    """
    values = torch.as_tensor(list(label_values), dtype=torch.int16, device=probabilities.device)
    grid = probabilities.shape[1:]
    labels = torch.empty(grid, dtype=torch.int16, device=probabilities.device)
    confidence = torch.empty(grid, dtype=torch.float32, device=probabilities.device)
    for start in range(0, grid[0], _SLAB):
        best, index = probabilities[:, start:start + _SLAB].max(0)
        labels[start:start + _SLAB] = torch.where(best >= THRESHOLD, values[index], 0)
        confidence[start:start + _SLAB] = best
    return labels, confidence


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """6-connected components of a bool mask: (component map, voxel count per component id, id 0 = background)."""
    components, _ = ndimage.label(mask)
    return components, np.bincount(components.ravel())


def remove_small_components(labels: np.ndarray, min_voxels: int = MIN_COMPONENT_VOXELS) -> np.ndarray:
    """Zero every component of the union of all labels with fewer than `min_voxels` voxels (copy)."""
    components, sizes = _components(labels > 0)
    small = sizes < min_voxels
    small[0] = False
    cleaned = labels.copy()
    cleaned[small[components]] = 0
    return cleaned


def keep_largest_components(labels: np.ndarray) -> np.ndarray:
    """Keep, for every label value, only its largest connected component (copy)."""
    kept = np.zeros_like(labels)
    for value in np.unique(labels[labels > 0]):
        components, sizes = _components(labels == value)
        sizes[0] = 0
        kept[components == int(np.argmax(sizes))] = value
    return kept


def instance_labels(labels: np.ndarray, label_values, min_voxels: int = MIN_COMPONENT_VOXELS
                    ) -> tuple[np.ndarray, list[int]]:
    """Split each label's mask into connected components, numbered 1, 2, … across labels in prompt order.

    Components smaller than `min_voxels` are dropped. Returns (instance map int16, the source label value of
    instance id k at index k − 1).
    """
    instances = np.zeros(labels.shape, dtype=np.int16)
    sources: list[int] = []
    for value in label_values:
        components, sizes = _components(labels == value)
        kept = sizes >= min_voxels
        kept[0] = False
        if len(sources) + kept.sum() > np.iinfo(np.int16).max:
            raise MedalSError(f"more than {np.iinfo(np.int16).max} instances: too many to number in an int16 map")
        ids = np.zeros(len(sizes), dtype=np.int16)
        ids[kept] = np.arange(len(sources) + 1, len(sources) + 1 + kept.sum())
        inside = components > 0
        instances[inside] = ids[components[inside]]
        sources += [int(value)] * int(kept.sum())
    return instances, sources
