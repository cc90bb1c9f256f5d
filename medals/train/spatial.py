"""Where a training patch comes from: zoom, centre, rotation, scaling and mirroring, all in one resampling.

A patch of `crop` voxels (h, w, d) is cut from a case by one `affine_grid` + `grid_sample`: output voxel offset o
(from the patch centre, in output voxels) reads the source at voxel position

    p = centre + diag(1/s) · A · diag(t) · o

where t is the working spacing and s the (pseudo) spacing the volume is treated as having — both from the
inference zoom policy (`medals.pipeline.zoom.plan_zoom`), so training sees the zooms inference will use — and A
is a random rotation × isotropic scale × axis mirroring. The image is read trilinearly, the labels by nearest
neighbour; outside the volume both read 0.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..pipeline.zoom import plan_zoom
from .dataset import Case


@dataclass(frozen=True)
class SpatialAugmentation:
    """Probabilities and ranges of the geometric augmentation and of the patch placement.

    foreground_prob: a whole-image patch is centred on a random voxel of a random present structure (else anywhere).
    roi_prob: the zoom is planned on a structure's box grown by 10 % and the patch centred inside it, as the fine
        stage sees its region of interest (else on the whole image, as the coarse stage sees it).
    single_class_prob: the zoom is planned for a one-structure request (its own rules), else for all structures.
    quarter_turn_prob: a random one of the 24 axis-aligned rotations of the cube (orientation invariance).
    """

    foreground_prob: float = 0.33
    roi_prob: float = 0.5
    single_class_prob: float = 0.5
    rotation_prob: float = 0.2
    max_rotation_deg: float = 30.0
    scale_prob: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    flip_prob: float = 0.5
    quarter_turn_prob: float = 0.0

    def __post_init__(self):
        for name in ("foreground_prob", "roi_prob", "single_class_prob", "rotation_prob", "scale_prob",
                     "flip_prob", "quarter_turn_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low ≤ high, got {self.scale_range}")


def _axis_rotation(axis: int, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    rotation = torch.eye(3, dtype=torch.float64)
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    return rotation


def quarter_turns() -> list[torch.Tensor]:
    """The 24 rotations of the cube: signed permutation matrices with determinant +1."""
    rotations = []
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = torch.zeros(3, 3, dtype=torch.float64)
            for row, (column, sign) in enumerate(zip(permutation, signs)):
                matrix[row, column] = sign
            if torch.det(matrix) > 0:
                rotations.append(matrix)
    return rotations


QUARTER_TURNS = quarter_turns()


def _chance(probability: float, generator: torch.Generator) -> bool:
    return torch.rand((), generator=generator).item() < probability


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def random_transform(settings: SpatialAugmentation, generator: torch.Generator) -> torch.Tensor:
    """A (3×3 float64) = quarter turn · rotation · scale · mirror; det(A) < 0 exactly when it mirrors."""
    transform = torch.eye(3, dtype=torch.float64)
    if _chance(settings.quarter_turn_prob, generator):
        transform = QUARTER_TURNS[torch.randint(len(QUARTER_TURNS), (), generator=generator).item()]
    if _chance(settings.rotation_prob, generator):
        limit = math.radians(settings.max_rotation_deg)
        for axis in range(3):
            transform = transform @ _axis_rotation(axis, _uniform(-limit, limit, generator))
    if _chance(settings.scale_prob, generator):
        transform = transform * _uniform(*settings.scale_range, generator)
    mirror = torch.tensor([-1.0 if _chance(settings.flip_prob, generator) else 1.0 for _ in range(3)],
                          dtype=torch.float64)
    return transform * mirror  # scales columns: mirror the output axes before everything else


@dataclass(frozen=True)
class Placement:
    """Where a patch reads its case, all (h, w, d): centre in source voxels, the pseudo spacing s the case is
    treated as having and the working spacing t (mm, from the zoom policy), and the random transform A."""

    centre: tuple[float, float, float]
    spacing: tuple[float, float, float]
    target: tuple[float, float, float]
    transform: torch.Tensor

    @property
    def mirrored(self) -> bool:
        return bool(torch.det(self.transform) < 0)

    def source_matrix(self) -> torch.Tensor:
        """M = diag(1/s)·A·diag(t) (3×3 float64): source-voxel displacement per output-voxel offset.

        The transform acts on millimetres, so rotations stay rotations on anisotropic grids.
        """
        spacing = torch.tensor(self.spacing, dtype=torch.float64)
        target = torch.tensor(self.target, dtype=torch.float64)
        return torch.diag(1 / spacing) @ self.transform @ torch.diag(target)


def _random_index(count: int, generator: torch.Generator) -> int:
    return int(torch.randint(count, (), generator=generator))


def _uniform_point(low, high, generator: torch.Generator) -> tuple[float, float, float]:
    return tuple(_uniform(float(a), float(b), generator) for a, b in zip(low, high))


def roi_region(box, shape, margin: float = 1.1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A structure's inclusive box (lo, hi) grown to `margin` × its extent about its centre, clipped to `shape`."""
    low, high = [], []
    for lo, hi, size in zip(*box, shape):
        centre, half = (lo + hi) / 2, (hi - lo + 1) * margin / 2
        low.append(max(0, int(math.floor(centre - half))))
        high.append(min(size - 1, int(math.ceil(centre + half))))
    return tuple(low), tuple(high)


def plan_placement(case: Case, crop, target, settings: SpatialAugmentation,
                   generator: torch.Generator) -> Placement:
    """Draw where and at which zoom the next patch of `case` is cut, for a stage with `crop` and `target` (h, w, d)."""
    present = case.present
    n_structures = len(case.prompt_set.structures)
    single = n_structures == 1 or _chance(settings.single_class_prob, generator)
    shape = tuple(case.image.shape)
    if present and _chance(settings.roi_prob, generator):
        low, high = roi_region(case.boxes[present[_random_index(len(present), generator)]], shape)
        region_shape = tuple(h - lo + 1 for lo, h in zip(low, high))
        centre = _uniform_point(low, high, generator)
    else:
        region_shape = shape
        if present and _chance(settings.foreground_prob, generator):
            locations = case.locations[present[_random_index(len(present), generator)]]
            centre = tuple(float(v) for v in locations[_random_index(len(locations), generator)])
        else:
            centre = _uniform_point((0, 0, 0), [n - 1 for n in shape], generator)
    zoom = plan_zoom(region_shape, case.spacing, crop, target, 1 if single else n_structures)
    return Placement(centre, zoom.spacing, zoom.target, random_transform(settings, generator))


def sampling_grid(placement: Placement, source_shape, crop) -> torch.Tensor:
    """`affine_grid` (1, h, w, d, 3) that reads the patch of `crop` voxels from a volume of `source_shape`."""
    n = torch.tensor(source_shape, dtype=torch.float64)
    m = torch.tensor(crop, dtype=torch.float64)
    # align_corners=True: normalised u = 2p/(n−1) − 1 for source voxel p; output offset o = v·(m−1)/2.
    linear = torch.diag(2 / (n - 1)) @ placement.source_matrix() @ torch.diag((m - 1) / 2)
    offset = 2 * torch.tensor(placement.centre, dtype=torch.float64) / (n - 1) - 1
    # grid_sample's coordinates run (x, y, z) = (d, w, h): reverse both the rows and the columns.
    theta = torch.cat([linear.flip(0).flip(1), offset.flip(0)[:, None]], dim=1)
    return F.affine_grid(theta[None].float(), [1, 1, *crop], align_corners=True)


def cut_patch(case: Case, placement: Placement, crop) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (h, w, d) float32 read trilinearly, structure masks (S, h, w, d) bool) of one patch.

    Mirrored patches swap the masks of the set's mirror pairs, so "left" keeps meaning the anatomical left.
    """
    grid = sampling_grid(placement, case.image.shape, crop)
    image = F.grid_sample(case.image[None, None], grid, mode="bilinear", padding_mode="zeros",
                          align_corners=True)[0, 0]
    labels = F.grid_sample(case.labels[None, None], grid, mode="nearest", padding_mode="zeros",
                           align_corners=True)[0, 0]
    masks = case.structure_masks(labels)
    if placement.mirrored and case.prompt_set.mirror_pairs:
        order = list(range(len(masks)))
        for a, b in case.prompt_set.mirror_pairs:
            order[a], order[b] = b, a
        masks = masks[order]
    return image, masks
