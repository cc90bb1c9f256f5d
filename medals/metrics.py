"""The challenge metrics (CVPR 2025 BiomedSegFM, text track): DSC, NSD, instance F1 and DSC-TP.

Masks are boolean (k, j, i) arrays; spacing is in mm in the same order.

Surface elements follow the neighbour-code method the challenge uses: each 2×2×2 cube of voxels (cube nodes sit
between voxel centres, one more per axis than voxels) is a surface element when its corners are neither all
inside nor all outside; its area is the area of the marching-cubes surface through the cube's edge midpoints,
scaled by the spacing, and its distance to the other surface is the Euclidean distance transform (with the
spacing) from the other mask's surface elements. The marching-cubes surface of a configuration is built here from
two rules (no case table):

* a cube is seen from its minority side: with more than four corners inside, the surface of the complementary
  configuration is used (a configuration and its complement bound the same surface), and on a face whose two
  inside corners are diagonal, the inside corners are kept apart;
* a non-planar polygon (pentagon, hexagon) is split into the triangles of largest total area in the unit cube.

With these rules the area table equals the one of the surface-distance library the challenge's evaluation uses
(checked for all 256 configurations at isotropic and anisotropic spacings).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

NSD_TOLERANCE_MM = 2.0

# Cube corners as (a, b, c) offsets along (k, j, i); corner n carries bit n of the neighbour code.
_CORNERS = np.array(list(itertools.product((0, 1), repeat=3)))
_EDGES = [(u, v) for u, v in itertools.combinations(range(8), 2) if np.abs(_CORNERS[u] - _CORNERS[v]).sum() == 1]
_FACES = [[n for n in range(8) if _CORNERS[n][axis] == side] for axis in range(3) for side in (0, 1)]
# Face-adjacent neighbours (6-connectivity) for instance splitting.
FACE_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


# --------------------------------------------------------------------------------------- surface elements

def _surface_loops(code: int) -> list[list[tuple[int, int]]]:
    """Closed polygons (as cycles of cut cube edges) of the surface separating the inside corners of `code`."""
    inside = [(code >> n) & 1 for n in range(8)]
    cut = [edge for edge in _EDGES if inside[edge[0]] != inside[edge[1]]]
    neighbours = {edge: [] for edge in cut}
    for face in _FACES:
        face_cuts = [edge for edge in cut if edge[0] in face and edge[1] in face]
        if len(face_cuts) == 2:
            segments = [face_cuts]
        elif len(face_cuts) == 4:  # two diagonal inside corners: cut each one off, keeping them apart
            segments = [[edge for edge in face_cuts if corner in edge] for corner in face if inside[corner]]
        else:
            segments = []
        for first, second in segments:
            neighbours[first].append(second)
            neighbours[second].append(first)
    loops, visited = [], set()
    for start in cut:
        if start in visited:
            continue
        loop, previous = [start], None
        visited.add(start)
        while True:
            following = [edge for edge in neighbours[loop[-1]] if edge != previous and edge not in visited]
            if not following:
                break
            previous = loop[-1]
            loop.append(following[0])
            visited.add(following[0])
        loops.append(loop)
    return loops


@functools.cache
def _polygon_triangulations(n: int) -> tuple[tuple[tuple[int, int, int], ...], ...]:
    """Every triangulation of an n-gon whose vertices are 0..n-1 in order (by its diagonals)."""
    @functools.cache
    def between(first: int, last: int):
        if last - first < 2:
            return ((),)
        return tuple(left + ((first, apex, last),) + right
                     for apex in range(first + 1, last)
                     for left in between(first, apex) for right in between(apex, last))
    return between(0, n - 1)


def _triangle_vectors(points: np.ndarray, triangles) -> np.ndarray:
    """Area vectors (half cross products) of `triangles` over `points`: (n_triangles, 3)."""
    a, b, c = (points[[t[i] for t in triangles]] for i in range(3))
    return np.cross(b - a, c - a) / 2


@functools.cache
def _unit_area_vectors() -> tuple[np.ndarray, np.ndarray]:
    """Triangles of all 256 configurations in the unit cube: (codes (T,), area vectors (T, 3) along k, j, i)."""
    codes, vectors = [], []
    for code in range(256):
        minority_code = code if bin(code).count("1") <= 4 else 255 - code
        for loop in _surface_loops(minority_code):
            points = np.array([(_CORNERS[u] + _CORNERS[v]) / 2 for u, v in loop], dtype=np.float64)
            options = _polygon_triangulations(len(points))
            areas = [np.linalg.norm(_triangle_vectors(points, t), axis=1).sum() for t in options]
            best = _triangle_vectors(points, options[int(np.argmax(areas))])
            codes.extend([code] * len(best))
            vectors.append(best)
    return np.array(codes), np.concatenate(vectors)


def surfel_area_table(spacing) -> np.ndarray:
    """Surface area in mm² of each of the 256 neighbour codes for a voxel `spacing` (k, j, i) mm."""
    s0, s1, s2 = (float(s) for s in spacing)
    codes, vectors = _unit_area_vectors()
    scaled = vectors * np.array([s1 * s2, s0 * s2, s0 * s1])  # an area vector scales by the other two spacings
    return np.bincount(codes, weights=np.linalg.norm(scaled, axis=1), minlength=256)


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """The 8-bit corner code of every 2×2×2 cube of `mask` zero-padded by one voxel: shape (K+1, J+1, I+1)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    k, j, i = mask.shape
    codes = np.zeros((k + 1, j + 1, i + 1), dtype=np.uint8)
    for bit, (a, b, c) in enumerate(_CORNERS):
        codes |= padded[a:a + k + 1, b:b + j + 1, c:c + i + 1] << np.uint8(bit)
    return codes


@dataclass
class SurfaceDistances:
    """Surface elements of two masks: distances (mm) to the other surface and areas (mm²), per element."""

    gt_to_pred: np.ndarray
    gt_areas: np.ndarray
    pred_to_gt: np.ndarray
    pred_areas: np.ndarray


def surface_distances(gt: np.ndarray, pred: np.ndarray, spacing) -> SurfaceDistances:
    """Surface elements of `gt` and `pred` with their areas and distances to the other mask's surface.

    Work is limited to the bounding box of both masks. An empty mask has no elements, and the other mask's
    elements are then infinitely far.
    """
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f"masks differ in shape: {gt.shape} and {pred.shape}")
    union = gt | pred
    if not union.any():
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty, empty, empty)
    box = tuple(slice(int(np.min(idx)), int(np.max(idx)) + 1) for idx in np.nonzero(union))
    areas = surfel_area_table(spacing)
    codes_gt, codes_pred = neighbour_codes(gt[box]), neighbour_codes(pred[box])
    border_gt = (codes_gt != 0) & (codes_gt != 255)
    border_pred = (codes_pred != 0) & (codes_pred != 255)

    def distance_to(border: np.ndarray) -> np.ndarray:
        if not border.any():
            return np.full(border.shape, np.inf)
        return ndimage.distance_transform_edt(~border, sampling=[float(s) for s in spacing])

    return SurfaceDistances(gt_to_pred=distance_to(border_pred)[border_gt], gt_areas=areas[codes_gt[border_gt]],
                            pred_to_gt=distance_to(border_gt)[border_pred], pred_areas=areas[codes_pred[border_pred]])


# ----------------------------------------------------------------------------------------- semantic scores

def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Dice similarity coefficient of two boolean masks; NaN when both are empty."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    total = int(gt.sum()) + int(pred.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.count_nonzero(gt & pred)) / total


def normalized_surface_dice(gt: np.ndarray, pred: np.ndarray, spacing, tolerance_mm: float = NSD_TOLERANCE_MM
                            ) -> float:
    """Normalized surface Dice: the share of both surfaces' area lying within `tolerance_mm` of the other.

    NaN when both masks are empty; 0 when exactly one is.
    """
    d = surface_distances(gt, pred, spacing)
    total = d.gt_areas.sum() + d.pred_areas.sum()
    if total == 0:
        return float("nan")
    close = d.gt_areas[d.gt_to_pred <= tolerance_mm].sum() + d.pred_areas[d.pred_to_gt <= tolerance_mm].sum()
    return float(close / total)


def semantic_scores(gt_labels: np.ndarray, pred_labels: np.ndarray, spacing, label_values,
                    tolerance_mm: float = NSD_TOLERANCE_MM) -> dict[int, dict[str, float]]:
    """DSC and NSD of each prompted label value present in the ground truth: {value: {"dsc", "nsd"}}.

    The challenge scores the labels both present in the ground truth and prompted; the case score is the
    NaN-mean over them (`case_mean`).
    """
    present = set(np.unique(gt_labels).tolist())
    scores = {}
    for value in label_values:
        if int(value) in present and int(value) != 0:
            gt, pred = gt_labels == value, pred_labels == value
            scores[int(value)] = {"dsc": dice(gt, pred),
                                  "nsd": normalized_surface_dice(gt, pred, spacing, tolerance_mm)}
    return scores


def case_mean(scores: dict[int, dict[str, float]], metric: str) -> float:
    """NaN-mean of one metric over the scored labels (NaN when none was scored)."""
    values = np.array([s[metric] for s in scores.values()], dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


# ----------------------------------------------------------------------------------------- instance scores

def split_instances(labels: np.ndarray) -> np.ndarray:
    """Label the 6-connected components of each nonzero value of `labels` 1..n (int32, same shape).

    A boolean mask gives its components; voxels of different values never join one component.
    """
    labels = np.asarray(labels)
    instances, found = np.zeros(labels.shape, np.int32), 0
    for value in np.unique(labels[labels != 0]):
        components, count = ndimage.label(labels == value, structure=FACE_CONNECTIVITY)
        instances[components > 0] = components[components > 0] + found
        found += count
    return instances


def prediction_instances(prediction: np.ndarray) -> np.ndarray:
    """A predicted instance map as the challenge scores it: split into components when it holds exactly two
    values (a binary mask), otherwise used as given (each value one instance, connected or not)."""
    prediction = np.asarray(prediction)
    return split_instances(prediction) if len(np.unique(prediction)) == 2 else prediction


@dataclass
class InstanceScores:
    """Instance matching result: counts, F1 and the mean Dice of the true-positive pairs."""

    tp: int
    fp: int
    fn: int
    f1: float
    dsc_tp: float


def match_instances(iou: np.ndarray, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the true-positive pairs of an IoU matrix (ground truth × prediction).

    The assignment maximises the number of pairs with IoU ≥ `iou_threshold` and, among those, the total IoU:
    every pair scores 1 when it reaches the threshold plus IoU / (2·min(n_gt, n_pred)), a bonus that adds up to
    less than one pair. (Maximising the total IoU alone can trade one true positive for two weak pairs.)
    """
    if min(iou.shape) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    score = (iou >= iou_threshold).astype(np.float64) + iou / (2 * min(iou.shape))
    rows, cols = linear_sum_assignment(score, maximize=True)
    hits = iou[rows, cols] >= iou_threshold
    return rows[hits], cols[hits]


def instance_scores(gt_instances: np.ndarray, pred_instances: np.ndarray, iou_threshold: float = 0.5
                    ) -> InstanceScores:
    """Score two instance label maps (0 = background, each other value one instance, used as given).

    Pairs come from `match_instances`; a pair is a true positive when its IoU ≥ `iou_threshold`.
    F1 = 2TP / (2TP + FP + FN), 0 when there is no true positive; DSC-TP is the mean Dice over true-positive
    pairs, 0 when there are none.
    """
    gt_ids, gt_inverse = np.unique(gt_instances, return_inverse=True)
    pred_ids, pred_inverse = np.unique(pred_instances, return_inverse=True)
    gt_sizes = np.bincount(gt_inverse.ravel())[gt_ids != 0]
    pred_sizes = np.bincount(pred_inverse.ravel())[pred_ids != 0]
    gt_index = gt_inverse.ravel() - int(gt_ids[0] == 0)  # instance index, −1 for background
    pred_index = pred_inverse.ravel() - int(pred_ids[0] == 0)
    n_gt, n_pred = len(gt_sizes), len(pred_sizes)

    both = (gt_index >= 0) & (pred_index >= 0)
    intersection = np.bincount(gt_index[both] * n_pred + pred_index[both], minlength=n_gt * n_pred)
    intersection = intersection.reshape(n_gt, n_pred).astype(np.float64)
    union = gt_sizes[:, None] + pred_sizes[None, :] - intersection
    iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)

    rows, cols = match_instances(iou, iou_threshold)
    tp = len(rows)
    fp, fn = n_pred - tp, n_gt - tp
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    pair_dice = 2 * intersection[rows, cols] / (gt_sizes[rows] + pred_sizes[cols])
    return InstanceScores(tp, fp, fn, f1, float(pair_dice.mean()) if tp else 0.0)
