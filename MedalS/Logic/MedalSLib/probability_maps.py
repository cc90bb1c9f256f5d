"""Engine probability maps → one scalar volume per structure, on the input volume's grid, updated in place.

Each map is a float32 volume named "<segmentation> – <structure> probability" with values in [0, 1], under
the input volume's parent transform, shown with a fixed 0–1 window. A rerun for the same segmentation and
structure writes into the volume it wrote before (found by the node attributes below, so a renamed volume is
still found); a refinement rewrites only its box. Undo leaves the maps alone: keeping a float copy of every
map per undo step would cost more memory than the segments themselves.
"""
from __future__ import annotations

import numpy as np
import slicer

from .prompts import structure_key
from .results import check_box
from .scene import Box, VolumeGeometry, volume_geometry, write_volume

SEGMENTATION_ATTRIBUTE = "MedalS.ProbabilityOf.Segmentation"
"""The ID of the segmentation whose result a probability volume belongs to."""
STRUCTURE_ATTRIBUTE = "MedalS.ProbabilityOf.Structure"
"""The `structure_key` of the prompt whose probability it holds."""


def probability_map_name(segmentation_node, prompt: str) -> str:
    return f"{segmentation_node.GetName()} – {prompt} probability"


def find_probability_map(scene, segmentation_node, prompt: str):
    """The volume a previous result wrote this prompt's probability into for this segmentation, or None."""
    volumes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    for index in range(volumes.GetNumberOfItems()):
        node = volumes.GetItemAsObject(index)
        if node.GetAttribute(SEGMENTATION_ATTRIBUTE) == segmentation_node.GetID() \
                and node.GetAttribute(STRUCTURE_ATTRIBUTE) == structure_key(prompt):
            return node
    return None


def write_probability_maps(segmentation_node, volume_node, probabilities: dict[str, np.ndarray], box: Box,
                           only_inside_box: bool = False) -> dict[str, object]:
    """Write each prompt's probability into its volume; returns prompt → volume node.

    probabilities: prompt → float32 (k, j, i) in [0, 1] over `box` of `volume_node`'s grid.
    only_inside_box: False replaces the whole map (0 outside the box); True rewrites only the box of the map a
        previous result wrote (a refinement), the rest kept.
    """
    scene = volume_node.GetScene()
    geometry = volume_geometry(volume_node)
    nodes = {}
    for prompt, probability in probabilities.items():
        check_box(probability, box, geometry)
        node = find_probability_map(scene, segmentation_node, prompt)
        voxels = _previous(node, geometry) if only_inside_box else None
        if voxels is None:
            voxels = np.zeros(geometry.shape, np.float32)
        voxels[box.slices] = probability
        node = write_volume(scene, voxels, geometry, probability_map_name(segmentation_node, prompt), node)
        node.SetName(probability_map_name(segmentation_node, prompt))
        node.SetAttribute(SEGMENTATION_ATTRIBUTE, segmentation_node.GetID())
        node.SetAttribute(STRUCTURE_ATTRIBUTE, structure_key(prompt))
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        display = node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
        nodes[prompt] = node
    return nodes


def _previous(node, geometry: VolumeGeometry) -> np.ndarray | None:
    """A float32 copy of the map `node` holds when it lies on `geometry`'s grid, else None (start afresh)."""
    if node is None or node.GetImageData() is None or not volume_geometry(node).same_grid(geometry):
        return None
    return np.array(slicer.util.arrayFromVolume(node), dtype=np.float32, copy=True)
