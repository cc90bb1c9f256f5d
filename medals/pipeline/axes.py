"""Axis orders: arrays cross the engine's boundary as (k, j, i); the network works in (h, w, d) = (j, i, k).

The official code rearranges a (D, H, W) challenge volume to (H, W, D) before resampling, and the stage configs
(crop, target spacing, size limits) are given in that order, so each stage converts once on entry and once on exit.
"""
from __future__ import annotations

import torch


def to_network_order(values_kji) -> tuple:
    """A (k, j, i) shape or spacing → (h, w, d) = (j, i, k)."""
    k, j, i = values_kji
    return (j, i, k)


def to_array_order(values_hwd) -> tuple:
    """A (h, w, d) shape or spacing → (k, j, i) = (d, h, w)."""
    h, w, d = values_hwd
    return (d, h, w)


def volume_to_network(volume: torch.Tensor) -> torch.Tensor:
    """(k, j, i) volume → (h, w, d) view (last three axes)."""
    return volume.movedim(-3, -1)


def volume_to_array(volume: torch.Tensor) -> torch.Tensor:
    """(h, w, d) volume → (k, j, i) view (last three axes)."""
    return volume.movedim(-1, -3)
