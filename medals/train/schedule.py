"""Learning-rate schedule: one or more cosine cycles, each with a linear warm-up (spec §6.2).

A cycle (steps, warmup, peak) runs its first `warmup` steps linearly up to `peak` and the rest down along half a
cosine. Several cycles in a row give the official "restart cosine"; the default configuration has one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Cycle:
    """One warm-up + cosine cycle: `steps` optimizer steps in all, the first `warmup` of them ramping to `peak_lr`."""

    steps: int
    warmup: int
    peak_lr: float

    def __post_init__(self):
        if self.steps < 1 or not 0 <= self.warmup < self.steps or self.peak_lr <= 0:
            raise ValueError(f"a cycle needs steps ≥ 1, 0 ≤ warmup < steps and peak_lr > 0; got {self}")


def total_steps(cycles) -> int:
    return sum(cycle.steps for cycle in cycles)


def learning_rate(step: int, cycles) -> float:
    """Learning rate of optimizer step `step` (0-based) over consecutive `cycles`.

    Warm-up: peak·(s+1)/warmup for s < warmup, so the first step already moves. Decay: peak·½(1 + cos(π·u)) with
    u = (s − warmup + 1)/(steps − warmup + 1) ∈ (0, 1), so no step of a cycle has a zero rate.
    Steps past the last cycle keep the last cycle's final rate.
    """
    if step < 0:
        raise ValueError(f"step must be ≥ 0, got {step}")
    for cycle in cycles:
        if step < cycle.steps:
            break
        step -= cycle.steps
    else:
        cycle, step = cycles[-1], cycles[-1].steps - 1
    if step < cycle.warmup:
        return cycle.peak_lr * (step + 1) / cycle.warmup
    progress = (step - cycle.warmup + 1) / (cycle.steps - cycle.warmup + 1)
    return cycle.peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
