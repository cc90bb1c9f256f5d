"""Label assembly and the connected-component rules (6-connectivity)."""
from __future__ import annotations

import numpy as np
import torch

from medals.pipeline.labels import (assemble_labels, instance_labels, keep_largest_components,
                                    remove_small_components)


def test_labels_take_the_most_probable_class_when_it_reaches_one_half():
    probabilities = torch.tensor([[0.2, 0.5, 0.7, 0.49], [0.6, 0.5, 0.1, 0.3]]).view(2, 1, 1, 4)
    labels, confidence = assemble_labels(probabilities, [3, 9])
    assert labels.flatten().tolist() == [9, 3, 3, 0]  # tie → first class; below 0.5 → background
    assert confidence.flatten().tolist() == torch.tensor([0.6, 0.5, 0.7, 0.49]).tolist()


def test_components_under_ten_voxels_of_the_union_are_removed():
    labels = np.zeros((5, 5, 12), dtype=np.int16)
    labels[0, 0, :9] = 1           # 9 voxels: removed
    labels[2, 2, :5] = 1           # 5 + 5 voxels of two labels touching: one component of 10, kept
    labels[2, 2, 5:10] = 2
    cleaned = remove_small_components(labels)
    assert not cleaned[0].any()
    np.testing.assert_array_equal(cleaned[2], labels[2])


def test_diagonal_neighbours_are_separate_components():
    labels = np.zeros((3, 3, 20), dtype=np.int16)
    labels[0, 0, :6] = 1
    labels[1, 1, :6] = 1
    assert not remove_small_components(labels).any()


def test_keep_largest_keeps_one_component_per_label():
    labels = np.zeros((4, 4, 10), dtype=np.int16)
    labels[0, 0, :3] = 1
    labels[2, 2, :6] = 1
    labels[3, 3, :2] = 2
    kept = keep_largest_components(labels)
    assert (kept == 1).sum() == 6 and kept[2, 2, :6].all()
    assert (kept == 2).sum() == 2


def test_instances_are_numbered_per_component_in_prompt_order_and_small_ones_dropped():
    labels = np.zeros((6, 6, 12), dtype=np.int16)
    labels[0, 0, :10] = 4
    labels[2, 2, :12] = 4
    labels[4, 4, :3] = 4           # too small
    labels[5, 5, :11] = 2
    instances, sources = instance_labels(labels, [4, 2])
    assert sources == [4, 4, 2]
    assert set(np.unique(instances)) == {0, 1, 2, 3}
    assert (instances[5, 5] == 3).sum() == 11 and not instances[4, 4].any()
