"""Write the evaluation comparison cases: challenge-format npz pairs in gt/ and pred/ (see README.md).

    python Testing/Data/evaluate/make_cases.py Testing/Data/evaluate

Ground truths hold `gts`, `spacing` (the challenge's stored order) and `text_prompts`; predictions hold `segs`
and, except where a case says otherwise, the same `spacing`. Everything is built from fixed seeds, and the real
atlas case from the tissue reference bundled with medals.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from medals.io import read_labels

ATLAS = Path(__file__).resolve().parents[3] / "medals" / "data" / "samples" / "mni152_tissue_reference.nii.gz"
SEMANTIC = {"instance_label": 0}
LESIONS = {"1": "lesions", "instance_label": 1}


def ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def blobs(shape, rng, level, smooth=2.0) -> np.ndarray:
    """Irregular foreground: smoothed noise above `level` (standard deviations)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), smooth)
    return field > level * field.std()


def box(shape, *regions) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    for value, region in enumerate(regions, start=1):
        labels[region] = value
    return labels


def semantic_cases(rng):
    # Two organs and a small structure on an anisotropic grid; the prediction shifted, eroded and dilated.
    shape = (20, 48, 40)
    gt = np.zeros(shape, np.uint8)
    gt[ellipsoid(shape, (9, 20, 18), (6, 12, 10))] = 1
    gt[ellipsoid(shape, (10, 34, 26), (5, 8, 8))] = 2
    gt[ellipsoid(shape, (14, 10, 32), (2, 3, 3))] = 4
    pred = np.zeros(shape, np.uint8)
    pred[np.roll(gt == 1, (1, 0, 2), axis=(0, 1, 2))] = 1
    pred[ndimage.binary_erosion(gt == 2)] = 2
    pred[ndimage.binary_dilation(gt == 4, iterations=2)] = 4
    yield "anisotropic_organs", gt, pred, (0.7, 0.9, 3.0), {"1": "liver", "2": "spleen", "4": "gallbladder"}

    # Irregular shapes, every axis a different spacing; the prediction is the truth with 3 % of voxels changed.
    shape = (36, 30, 24)
    gt = np.zeros(shape, np.uint8)
    for value, level in ((1, 0.8), (2, 1.2), (3, 1.6)):
        gt[blobs(shape, rng, level)] = value
    pred = gt.copy()
    flip = rng.random(shape) < 0.03
    pred[flip] = rng.integers(0, 4, int(flip.sum()))
    yield "anisotropic_irregular", gt, pred, (4.0, 0.5, 1.5), {"1": "kidney", "2": "cyst", "3": "tumour"}

    # A prompted structure the prediction misses entirely.
    gt = box((12, 16, 16), np.s_[2:8, 3:9, 3:9], np.s_[3:6, 10:14, 10:14])
    pred = gt.copy()
    pred[pred == 2] = 0
    yield "empty_prediction", gt, pred, (1.0, 1.0, 2.0), {"1": "liver", "2": "spleen"}

    # An empty ground truth: no prompted label present, the case scores NaN.
    pred = box((10, 12, 12), np.s_[2:5, 2:6, 2:6])
    yield "empty_ground_truth", np.zeros_like(pred), pred, (0.8, 0.8, 2.5), {"1": "liver", "2": "spleen"}

    # Label 3 is prompted but absent from the truth (not scored); label 5 is present but not prompted.
    gt = box((12, 16, 16), np.s_[2:8, 3:9, 3:9], np.s_[0:0], np.s_[0:0], np.s_[0:0], np.s_[8:11, 10:14, 10:14])
    pred = box((12, 16, 16), np.s_[3:8, 3:10, 3:9], np.s_[0:0], np.s_[1:3, 12:15, 1:4], np.s_[0:0],
               np.s_[8:11, 10:13, 10:14])
    yield "prompt_absent_from_truth", gt, pred, (0.9, 0.9, 1.8), {"1": "liver", "2": "spleen", "3": "aorta"}

    # Single voxels: diagonal neighbours inside the grid, and a pair at the grid's corner.
    gt = np.zeros((9, 9, 9), np.uint8)
    pred = np.zeros_like(gt)
    gt[4, 4, 4], pred[5, 5, 4] = 1, 1
    gt[0, 0, 0], pred[0, 0, 1] = 2, 2
    yield "single_voxels", gt, pred, (0.6, 1.1, 2.5), {"1": "node", "2": "corner"}

    # Single voxels three slices apart: 1.5 mm under the official spacing order, 9 mm under the physical one.
    gt = np.zeros((12, 8, 8), np.uint8)
    pred = np.zeros_like(gt)
    gt[3, 4, 4], pred[6, 4, 4] = 1, 1
    yield "single_voxels_slices_apart", gt, pred, (0.5, 0.5, 3.0), {"1": "node"}

    # Label values far from 1..n (up to 255, the largest the official evaluation's 8-bit reading keeps).
    gt = np.zeros((14, 20, 20), np.uint8)
    gt[ellipsoid(gt.shape, (6, 7, 7), (4, 5, 5))] = 7
    gt[ellipsoid(gt.shape, (7, 13, 13), (3, 4, 5))] = 120
    gt[2:4, 15:19, 2:6] = 255
    pred = np.roll(gt, 1, axis=2)
    yield "sparse_label_values", gt, pred, (1.2, 1.2, 2.0), {"7": "a", "120": "b", "255": "c"}

    # A real atlas (MNI152 tissue classes, every second slice: 2 mm slices) and a perturbed copy: shifted one
    # voxel, grey matter dilated in the upper half, 2 % of the boundary voxels flipped.
    atlas = read_labels(ATLAS).array[40:150:2, 20:210, 15:180].astype(np.uint8)
    pred = np.roll(atlas, 1, axis=1)
    upper = np.zeros(atlas.shape, bool)
    upper[atlas.shape[0] // 2:] = True
    pred[ndimage.binary_dilation(pred == 1) & upper & (pred == 0)] = 1
    boundary = ndimage.morphological_gradient(atlas, size=3) > 0
    flip = boundary & (rng.random(atlas.shape) < 0.02)
    pred[flip] = rng.integers(0, 3, int(flip.sum()))
    yield "atlas_mni152_perturbed", atlas, pred, (1.0, 1.0, 2.0), {"1": "gray matter", "2": "white matter"}


def instance_cases(rng):
    shape = (8, 24, 40)
    # Two touching instances (a face apart) become one component of the binary prediction.
    gt = box(shape, np.s_[2:6, 4:12, 4:16], np.s_[2:6, 4:12, 16:20], np.s_[2:6, 16:22, 26:34])
    yield "touching_instances", gt, (gt > 0).astype(np.uint8)

    # One instance predicted as two components (a slab missing in between).
    gt = box(shape, np.s_[1:7, 4:20, 4:30])
    pred = (gt > 0).astype(np.uint8)
    pred[:, :, 18:20] = 0
    yield "split_instance", gt, pred

    # An instance map whose instance 1 covers two truth instances (disconnected, one id: used as given).
    gt = box(shape, np.s_[2:6, 4:12, 4:16], np.s_[2:6, 14:18, 4:8], np.s_[2:6, 16:22, 26:34])
    pred = box(shape, np.s_[2:6, 4:12, 4:16], np.s_[2:6, 16:22, 27:34])
    pred[2:6, 14:18, 4:8] = 1
    yield "merged_instances_map", gt, pred

    # The assignment that keeps the one pair at IoU 0.5 rather than two weaker pairs of larger total IoU.
    gt = box(shape, np.s_[2:6, 4:12, 0:4], np.s_[2:6, 4:12, 4:16])
    pred = box(shape, np.s_[2:6, 4:12, 0:12], np.s_[2:6, 4:12, 12:16])
    yield "most_true_positives", gt, pred

    # Components touching only along an edge are separate under 6-connectivity.
    gt = box(shape, np.s_[2:5, 4:8, 4:8], np.s_[5:8, 8:12, 4:8])
    yield "edge_touching_components", gt, (gt > 0).astype(np.uint8)

    # Empty prediction; empty truth.
    gt = box(shape, np.s_[2:6, 4:12, 4:16])
    yield "instance_empty_prediction", gt, np.zeros_like(gt)
    yield "instance_empty_truth", np.zeros_like(gt), gt.copy()

    # A binary truth with three blobs is one instance (the official evaluation takes truths as given).
    gt = (box(shape, np.s_[1:7, 4:14, 4:20], np.s_[2:4, 16:20, 24:28], np.s_[5:7, 18:22, 32:36]) > 0)
    yield "binary_truth", gt.astype(np.uint8), gt.astype(np.uint8)

    # A binary prediction labelled 3 rather than 1.
    gt = box(shape, np.s_[2:6, 4:12, 4:16], np.s_[2:6, 16:22, 26:34])
    pred = ((gt > 0) * 3).astype(np.uint8)
    pred[2:6, 4:12, 4:7] = 0
    yield "binary_prediction_value_3", gt, pred

    # Many lesions: spheres at random places (some merged where they meet), a perturbed binary prediction that
    # misses some, adds some and shifts the rest.
    shape = (32, 64, 64)
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for value in range(1, 31):
        centre = rng.integers((3, 5, 5), (29, 59, 59))
        radii = rng.uniform(2.5, 5.0, 3)
        gt[ellipsoid(shape, centre, radii)] = value
        if value % 7:
            pred[ellipsoid(shape, centre + rng.integers(-1, 2, 3), radii * rng.uniform(0.85, 1.2, 3))] = 1
    for _ in range(5):
        pred[ellipsoid(shape, rng.integers((3, 5, 5), (29, 59, 59)), rng.uniform(1.0, 3.0, 3))] = 1
    yield "many_lesions", gt, pred


def write_case(folder: Path, name: str, gt, pred, spacing, prompts, pred_spacing="same") -> None:
    prompts = np.array(prompts, dtype=object)
    np.savez_compressed(folder / "gt" / f"{name}.npz", gts=gt, spacing=np.asarray(spacing, np.float64),
                        text_prompts=prompts)
    arrays = {"segs": pred.astype(np.uint8)}
    if pred_spacing == "same":
        arrays["spacing"] = np.asarray(spacing, np.float64)
    elif pred_spacing is not None:
        arrays["spacing"] = np.asarray(pred_spacing, np.float64)
    np.savez_compressed(folder / "pred" / f"{name}.npz", **arrays)


def main(folder: Path) -> None:
    rng = np.random.default_rng(2025)
    for sub in ("gt", "pred"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name, gt, pred, spacing, prompts in semantic_cases(rng):
        # Two predictions store no spacing, one a spacing of its own: the case's spacing counts.
        pred_spacing = {"sparse_label_values": None, "single_voxels": None,
                        "anisotropic_organs": (3.0, 0.9, 0.7)}.get(name, "same")
        write_case(folder, name, gt, pred, spacing, {**prompts, **SEMANTIC}, pred_spacing)
    for name, gt, pred in instance_cases(rng):
        write_case(folder, name, gt, pred, (0.8, 0.8, 2.0), LESIONS)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
