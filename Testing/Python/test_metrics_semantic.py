"""DSC and NSD on hand-made masks whose answers are derived in the tests."""
from __future__ import annotations

import math

import numpy as np
import pytest

from medals.metrics import (case_mean, dice, neighbour_codes, normalized_surface_dice, semantic_scores,
                            surface_distances, surfel_area_table)

L = 6  # cube side in voxels


def cube(shape=(16, 12, 12), start=(2, 3, 3), side=L) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + side) for s in start)] = True
    return mask


def test_identical_cubes_score_one():
    assert dice(cube(), cube()) == 1.0
    assert normalized_surface_dice(cube(), cube(), (1.0, 1.0, 1.0)) == 1.0


def test_disjoint_cubes_score_zero():
    far = cube(shape=(30, 12, 12), start=(20, 3, 3))
    near = cube(shape=(30, 12, 12))
    assert dice(near, far) == 0.0
    assert normalized_surface_dice(near, far, (1.0, 1.0, 1.0)) == 0.0


def test_two_empty_masks_are_nan():
    empty = np.zeros((4, 4, 4), bool)
    assert math.isnan(dice(empty, empty))
    assert math.isnan(normalized_surface_dice(empty, empty, (1.0, 1.0, 1.0)))


def test_empty_prediction_scores_zero():
    empty = np.zeros((16, 12, 12), bool)
    assert normalized_surface_dice(cube(), empty, (1.0, 1.0, 1.0)) == 0.0
    assert dice(cube(), empty) == 0.0


def test_dice_of_half_overlap():
    # 6³ cubes shifted by 3 along k share half their voxels: DSC = 2·108 / 432.
    assert dice(cube(), cube(start=(5, 3, 3))) == pytest.approx(0.5)


def test_cube_shifted_one_voxel_is_within_two_mm():
    assert normalized_surface_dice(cube(), cube(start=(3, 3, 3)), (1.0, 1.0, 1.0), 2.0) == 1.0


def test_cube_shifted_three_voxels():
    # Surface elements sit on the (L+1)³ nodes of the cube's boundary: face nodes carry area 1, edge nodes √2/2,
    # corner nodes √3/8. Shifted by 3 along k, a cube's low face is 3 mm from the other surface (> 2 mm) with its
    # 4 edges and 4 corners, and the centre node of its high face is 3 mm from every other surface element; every
    # other node is ≤ 2 mm away. Both surfaces are mirror images, so NSD is the share of one surface.
    total = 6 * (L - 1) ** 2 + 12 * (L - 1) * math.sqrt(2) / 2 + 8 * math.sqrt(3) / 8
    far = (L - 1) ** 2 + 4 * (L - 1) * math.sqrt(2) / 2 + 4 * math.sqrt(3) / 8 + 1
    expected = (total - far) / total  # ≈ 0.7888
    assert normalized_surface_dice(cube(), cube(start=(5, 3, 3)), (1.0, 1.0, 1.0), 2.0) == pytest.approx(expected)


def test_anisotropic_spacing_weights_areas_and_distances():
    # Shift by one voxel along k with 3 mm slices: the low face (and its edges and corners) is 3 mm away; the
    # high face's centre node is 3 mm from everything. Areas with spacing (3, 1, 1): a face ⊥k is 1 mm², a face
    # ⊥j or ⊥i is 3 mm²; an edge node along k has area |(0, 1.5, 1.5)|, along j or i |(0.5, 0, 1.5)|; a corner
    # |(0.125, 0.375, 0.375)|.
    n = L - 1
    edge_k, edge_ji, corner = math.hypot(1.5, 1.5), math.hypot(0.5, 1.5), math.sqrt(0.125 ** 2 + 2 * 0.375 ** 2)
    total = 2 * n * n * 1 + 4 * n * n * 3 + 4 * n * edge_k + 8 * n * edge_ji + 8 * corner
    far = n * n * 1 + 4 * n * edge_ji + 4 * corner + 1
    shifted = normalized_surface_dice(cube(), cube(start=(3, 3, 3)), (3.0, 1.0, 1.0), 2.0)
    assert shifted == pytest.approx((total - far) / total)


def test_tolerance_is_inclusive():
    # Shift by 2 voxels at 1 mm: the farthest surface elements are exactly 2 mm away.
    assert normalized_surface_dice(cube(), cube(start=(4, 3, 3)), (1.0, 1.0, 1.0), 2.0) == 1.0
    assert normalized_surface_dice(cube(), cube(start=(4, 3, 3)), (1.0, 1.0, 1.0), 1.9) < 1.0


def test_surface_elements_lie_between_voxels():
    single = np.zeros((3, 3, 3), bool)
    single[1, 1, 1] = True
    codes = neighbour_codes(single)
    assert codes.shape == (4, 4, 4)
    border = (codes != 0) & (codes != 255)
    assert border.sum() == 8  # the 8 cubes around one voxel each hold one corner


def test_area_of_a_configuration_equals_its_complement():
    table = surfel_area_table((1.3, 0.7, 2.1))
    assert np.allclose(table, table[::-1])
    assert table[0] == table[255] == 0


def test_flat_face_area_is_the_product_of_the_in_plane_spacings():
    table = surfel_area_table((2.0, 3.0, 5.0))
    lower_k_face = 0b00001111  # the four corners with a = 0
    assert table[lower_k_face] == pytest.approx(3.0 * 5.0)
    single_corner_unit = surfel_area_table((1.0, 1.0, 1.0))[1]
    assert single_corner_unit == pytest.approx(math.sqrt(3) / 8)


def test_surface_distances_of_empty_prediction_are_infinite():
    d = surface_distances(cube(), np.zeros((16, 12, 12), bool), (1.0, 1.0, 1.0))
    assert len(d.pred_to_gt) == 0 and np.all(np.isinf(d.gt_to_pred))


def test_semantic_scores_cover_prompted_labels_present_in_ground_truth():
    gt = np.zeros((16, 12, 12), np.uint8)
    gt[cube()] = 1
    gt[cube(start=(10, 3, 3), side=4)] = 2
    pred = gt.copy()
    pred[pred == 2] = 0
    scores = semantic_scores(gt, pred, (1.0, 1.0, 1.0), label_values=[1, 2, 3])
    assert sorted(scores) == [1, 2]  # 3 was prompted but is absent from the ground truth
    assert scores[1] == {"dsc": 1.0, "nsd": 1.0}
    assert scores[2] == {"dsc": 0.0, "nsd": 0.0}
    assert case_mean(scores, "dsc") == 0.5
