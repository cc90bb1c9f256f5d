"""Shared by the Slicer-module tests: MedalSLib on sys.path, and real MRML scenes built with slicer-core.

slicer-core has the MRML and segmentation classes but no application: the segmentations module logic must
be created and given the scene by hand before segments can be added (Slicer does this at start-up).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import slicer

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "MedalS"
sys.path.insert(0, str(MODULE_DIR / "Logic"))

from MedalSLib.client import Structure  # noqa: E402
from MedalSLib.scene import VolumeGeometry, write_volume  # noqa: E402


@pytest.fixture
def scene():
    """An empty MRML scene with the segmentations logic attached, as in a running Slicer."""
    mrml_scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(mrml_scene)
    yield mrml_scene
    del logic


def rotation(angle_x: float, angle_z: float) -> np.ndarray:
    """A 3×3 rotation: `angle_z` radians about S, then `angle_x` about R."""
    cx, sx, cz, sz = np.cos(angle_x), np.sin(angle_x), np.cos(angle_z), np.sin(angle_z)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_x @ about_z


def oblique_geometry(shape=(6, 9, 11), spacing=(2.5, 0.7, 0.9), origin=(-12.0, 30.5, 7.25),
                     angles=(0.35, -0.6)) -> VolumeGeometry:
    """An anisotropic grid whose (k, j, i) axes are rotated away from every patient axis."""
    columns_ijk = rotation(*angles)
    axes_kji = tuple(tuple(columns_ijk[:, column]) for column in (2, 1, 0))
    return VolumeGeometry(shape=shape, spacing=spacing, origin=origin, axes=axes_kji)


def finer_geometry(geometry: VolumeGeometry) -> VolumeGeometry:
    """A grid three times finer along every axis whose voxel 3c+1 is centred on `geometry`'s voxel c."""
    return VolumeGeometry(shape=tuple(3 * n for n in geometry.shape), spacing=tuple(s / 3 for s in geometry.spacing),
                          origin=tuple(geometry.kji_to_ras([[-1 / 3, -1 / 3, -1 / 3]])[0]), axes=geometry.axes)


def transposed_geometry(geometry: VolumeGeometry) -> VolumeGeometry:
    """The same voxels on a grid whose k axis is `geometry`'s i and whose i axis runs against its k.

    An array `a` on this grid holds the voxels `a.transpose(2, 1, 0)[::-1]` of `geometry`'s grid.
    """
    nk, nj, ni = geometry.shape
    axis_k, axis_j, axis_i = (np.asarray(axis) for axis in geometry.axes)
    return VolumeGeometry(shape=(ni, nj, nk), spacing=geometry.spacing[::-1],
                          origin=tuple(geometry.kji_to_ras([[nk - 1, 0, 0]])[0]),
                          axes=(tuple(axis_i), tuple(axis_j), tuple(-axis_k)))


def add_volume(scene, geometry: VolumeGeometry, array: np.ndarray | None = None, name: str = "CT"):
    """A scalar volume node on `geometry`, with `array` (default: each voxel holds its flat index)."""
    if array is None:
        array = np.arange(np.prod(geometry.shape), dtype=np.int16).reshape(geometry.shape)
    return write_volume(scene, array, geometry, name)


def add_segmentation(scene, reference_volume, name: str = "Segmentation"):
    """An empty segmentation node whose labelmaps live on `reference_volume`'s grid."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    return node


def structure(name: str, synonyms=(), laterality=None, sct=None, color=(10, 20, 30),
              category=("123037004", "Anatomical Structure")) -> Structure:
    """One entry of an engine's vocabulary, as the client parses it from the info endpoint."""
    return Structure(name, tuple(synonyms), laterality, ("ct",), category, sct, color)
