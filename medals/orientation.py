"""Bringing a volume to the orientation a model was trained in, and back: a lossless transposition and mirroring
of the (k, j, i) voxel array, never a resampling.

A network trained without mirroring and axis turns knows structures partly by where they lie (the cerebellum
below and behind the cerebrum). Such a model records its training orientation; `segment` then turns every image
to it and turns the results back, so a coronal or sagittal acquisition is segmented like an axial one.

Orientation codes name where the i, j, k axes point, in the letters SimpleITK's DICOMOrientImageFilter uses for
ITK's LPS world: "LPS" is the identity direction, "RAS" has i toward the patient's right, j anterior, k superior.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .errors import InputError

TOWARD = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}
"""(LPS world axis, sign) → the letter of the way an image axis points."""
WORLD_AXIS = {letter: axis for (axis, _), letter in TOWARD.items()}


def check_code(code: str) -> str:
    """`code` upper-cased when it names each world axis once (e.g. "RAS", "LPI", "ASL"); InputError otherwise."""
    code = str(code).upper()
    if len(code) != 3 or any(c not in WORLD_AXIS for c in code) or \
            sorted(WORLD_AXIS[c] for c in code) != [0, 1, 2]:
        raise InputError(f"orientation {code!r} must be three letters naming each axis once, from L/R, P/A, S/I")
    return code


def check_direction(direction) -> np.ndarray:
    """An ITK direction matrix (nine numbers, row-major) as a 3×3 array; InputError unless finite and invertible."""
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    # Entries are direction cosines (at most 1); bounding them keeps the determinant finite.
    if not np.all(np.abs(matrix) <= 1 + 1e-3) or abs(np.linalg.det(matrix)) < 1e-6:
        raise InputError(f"the direction matrix {matrix.tolist()} is not a rotation: it must be nine finite numbers "
                         "(direction cosines, at most 1) forming an invertible 3×3 matrix")
    return matrix


def orientation_code(direction) -> str:
    """The code of an ITK direction matrix (3×3, row-major, column c = LPS direction of axis c of (i, j, k)).

    Oblique axes take the nearest world axis; of the six ways to pair image and world axes the one keeping the
    most of each axis's direction wins, so every world axis is named once.
    """
    matrix = check_direction(direction)
    worlds = max(itertools.permutations(range(3)), key=lambda w: sum(abs(matrix[w[c], c]) for c in range(3)))
    return "".join(TOWARD[w, 1 if matrix[w, c] > 0 else -1] for c, w in enumerate(worlds))


@dataclass(frozen=True)
class Reorientation:
    """Array axis a of the turned volume is axis `axes[a]` of the given one, reversed where `flips[a]`; all in
    numpy (k, j, i) order."""

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    @property
    def inverse(self) -> "Reorientation":
        """The turn that brings a turned volume back."""
        axes = tuple(int(a) for a in np.argsort(self.axes))
        return Reorientation(axes, tuple(self.flips[a] for a in axes))

    def permute(self, values) -> tuple:
        """Per-axis values of the given volume (shape, spacing; (k, j, i)) in the turned volume's axis order."""
        return tuple(values[b] for b in self.axes)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The (k, j, i) array in the target orientation (a contiguous copy unless nothing changes)."""
        if self.is_identity:
            return array
        turned = np.flip(np.transpose(array, self.axes), [a for a, f in enumerate(self.flips) if f])
        return turned.copy()  # not ascontiguousarray: a flipped axis of size 1 counts as contiguous, stride < 0

    def undo(self, array: np.ndarray) -> np.ndarray:
        """A (k, j, i) array of the target orientation back in the given one."""
        return self.inverse.apply(array)

    def box(self, box, shape) -> tuple[int, ...]:
        """An inclusive (k0, k1, j0, j1, i0, i1) box of the given volume (of `shape`) in the turned one."""
        turned = []
        for a, b in enumerate(self.axes):
            low, high = box[2 * b], box[2 * b + 1]
            turned += [shape[b] - 1 - high, shape[b] - 1 - low] if self.flips[a] else [low, high]
        return tuple(turned)

    def unbox(self, box, shape) -> tuple[int, ...]:
        """A box of the turned volume back in the given volume (of `shape`)."""
        return self.inverse.box(box, self.permute(shape))


def reorientation(direction, target: str | None) -> Reorientation:
    """How to turn an image with ITK `direction` to the `target` code; the identity when either is None."""
    if direction is None or target is None:
        return Reorientation()
    source = orientation_code(direction)[::-1]  # per array axis (k, j, i)
    wanted = check_code(target)[::-1]
    axes, flips = [], []
    for letter in wanted:
        b = next(b for b, have in enumerate(source) if WORLD_AXIS[have] == WORLD_AXIS[letter])
        axes.append(b)
        flips.append(source[b] != letter)
    return Reorientation(tuple(axes), tuple(flips))
