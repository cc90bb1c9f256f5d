"""MRML volumes ⇄ numpy arrays with their geometry.

Every array here is in numpy (k, j, i) order — slices, rows, columns — which is the order
`slicer.util.arrayFromVolume` returns; spacings and shapes are given in the same order. Slicer's own
IJK→RAS matrices keep VTK's (i, j, k) column order; `VolumeGeometry` is the one place that converts.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .errors import InputError

Vector3 = tuple[float, float, float]


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a (k, j, i) voxel array sits in patient space (RAS, millimetres).

    shape:   voxel counts along (k, j, i).
    spacing: voxel size in mm along (k, j, i).
    origin:  RAS position of the centre of voxel (0, 0, 0).
    axes:    three rows, the unit RAS direction of array axes k, j and i (oblique volumes have non-axis rows).
    """

    shape: tuple[int, int, int]
    spacing: Vector3
    origin: Vector3
    axes: tuple[Vector3, Vector3, Vector3]

    @classmethod
    def from_ijk_to_ras(cls, ijk_to_ras: np.ndarray, shape: tuple[int, int, int]) -> "VolumeGeometry":
        """Geometry of an array of `shape` (k, j, i) whose voxel (i, j, k) maps to RAS by the 4×4 `ijk_to_ras`."""
        columns_ijk = np.asarray(ijk_to_ras, dtype=float)[:3, :3]
        spacing_ijk = np.linalg.norm(columns_ijk, axis=0)
        if np.any(spacing_ijk <= 0):
            raise InputError("the volume's IJK to RAS matrix has a zero-length axis")
        axes_ijk = columns_ijk / spacing_ijk
        return cls(shape=tuple(int(n) for n in shape),
                   spacing=tuple(float(s) for s in spacing_ijk[::-1]),
                   origin=tuple(float(x) for x in np.asarray(ijk_to_ras, dtype=float)[:3, 3]),
                   axes=tuple(tuple(float(x) for x in axes_ijk[:, column]) for column in (2, 1, 0)))

    def ijk_to_ras(self) -> np.ndarray:
        """The 4×4 matrix Slicer uses: column c is the RAS step of one voxel along i, j, k (c = 0, 1, 2)."""
        matrix = np.eye(4)
        for column, (axis, step) in enumerate(zip(self.axes[::-1], self.spacing[::-1])):
            matrix[:3, column] = np.asarray(axis) * step
        matrix[:3, 3] = self.origin
        return matrix

    def lps_direction(self) -> tuple[float, ...]:
        """The ITK direction matrix, row-major (column c = LPS direction of axis c of (i, j, k)), as the engine
        takes it to turn the volume to a model's training orientation."""
        columns = np.asarray(self.axes[::-1], dtype=float).T * np.array([-1.0, -1.0, 1.0])[:, None]
        return tuple(float(x) for x in columns.ravel())

    def kji_to_ras(self, points: np.ndarray) -> np.ndarray:
        """RAS positions (n, 3) of voxel positions (n, 3) given as (k, j, i) indices (fractions allowed)."""
        points = np.atleast_2d(np.asarray(points, dtype=float))
        return points[:, ::-1] @ self.ijk_to_ras()[:3, :3].T + np.asarray(self.origin)

    def ras_to_kji(self, points: np.ndarray) -> np.ndarray:
        """Voxel positions (n, 3) as fractional (k, j, i) indices of RAS positions (n, 3)."""
        points = np.atleast_2d(np.asarray(points, dtype=float))
        ijk = np.linalg.solve(self.ijk_to_ras()[:3, :3], (points - np.asarray(self.origin)).T).T
        return ijk[:, ::-1]

    def same_grid(self, other: "VolumeGeometry", tolerance_mm: float = 1e-4) -> bool:
        """True when both geometries put every voxel at the same place (within `tolerance_mm`)."""
        return self.shape == other.shape and np.allclose(self.ijk_to_ras(), other.ijk_to_ras(), atol=tolerance_mm)


@dataclass(frozen=True)
class Box:
    """A box of voxels: `start` inclusive and `stop` exclusive, both (k, j, i)."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @classmethod
    def bounding(cls, mask: np.ndarray) -> "Box | None":
        """The smallest box holding every non-zero voxel of `mask` (k, j, i); None when there is none."""
        nonzero = np.nonzero(mask)
        if nonzero[0].size == 0:
            return None
        return cls(tuple(int(axis.min()) for axis in nonzero), tuple(int(axis.max()) + 1 for axis in nonzero))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Index an array (k, j, i) with this to get the box's voxels."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def grown(self, margin: tuple[int, int, int], shape: tuple[int, int, int]) -> "Box":
        """This box enlarged by `margin` voxels on every side, clipped to an array of `shape` (all (k, j, i))."""
        return Box(tuple(max(0, a - m) for a, m in zip(self.start, margin)),
                   tuple(min(n, b + m) for b, m, n in zip(self.stop, margin, shape)))

    def union(self, other: "Box | None") -> "Box":
        if other is None:
            return self
        return Box(tuple(map(min, self.start, other.start)), tuple(map(max, self.stop, other.stop)))


def volume_geometry(volume_node) -> VolumeGeometry:
    """The geometry of a scalar volume node's voxel array (its own IJK→RAS; parent transforms are not applied)."""
    image = volume_node.GetImageData()
    if image is None:
        raise InputError(f"volume '{volume_node.GetName()}' has no voxels")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return VolumeGeometry.from_ijk_to_ras(_numpy_from_vtk_matrix(matrix), image.GetDimensions()[::-1])


def read_volume(volume_node) -> tuple[np.ndarray, VolumeGeometry]:
    """A copy of the volume's voxels, shape (k, j, i), in their own dtype, and their geometry."""
    geometry = volume_geometry(volume_node)
    components = volume_node.GetImageData().GetNumberOfScalarComponents()
    if components != 1:
        raise InputError(f"volume '{volume_node.GetName()}' has {components} components per voxel; MedalS needs a "
                         "single-component (greyscale) volume")
    return np.array(slicer.util.arrayFromVolume(volume_node), copy=True), geometry


def volume_fingerprint(volume_node) -> str:
    """What identifies a volume's content for re-upload decisions: node ID, voxel MTime and geometry.

    Voxel edits bump the image data's MTime; moving or resampling the node changes only its IJK→RAS,
    which leaves that MTime alone, so the geometry goes into the fingerprint as well.
    """
    geometry = volume_geometry(volume_node)
    digest = hashlib.sha1(np.round(geometry.ijk_to_ras(), 6).tobytes() + repr(geometry.shape).encode())
    return f"{volume_node.GetID()}|{volume_node.GetImageData().GetMTime()}|{digest.hexdigest()[:12]}"


def write_volume(scene, array: np.ndarray, geometry: VolumeGeometry, name: str, volume_node=None):
    """A scalar volume node holding `array` (k, j, i) on `geometry`; reuses `volume_node` when given."""
    if tuple(array.shape) != geometry.shape:
        raise InputError(f"array shape {tuple(array.shape)} does not match the grid {geometry.shape}")
    if volume_node is None:
        volume_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        volume_node.CreateDefaultDisplayNodes()
    slicer.util.updateVolumeFromArray(volume_node, np.ascontiguousarray(array))
    volume_node.SetIJKToRASMatrix(_vtk_matrix_from_numpy(geometry.ijk_to_ras()))
    return volume_node


def oriented_image(geometry: VolumeGeometry, array: np.ndarray | None = None, offset=(0, 0, 0)):
    """A vtkOrientedImageData on `geometry`'s grid.

    Without `array` it carries the geometry and full extent only (a resampling reference). With `array`
    (k, j, i) it holds a copy of those voxels over the box that starts at voxel `offset` (k, j, i).
    """
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(_vtk_matrix_from_numpy(geometry.ijk_to_ras()))
    if array is None:
        image.SetExtent(0, geometry.shape[2] - 1, 0, geometry.shape[1] - 1, 0, geometry.shape[0] - 1)
        return image
    array = np.ascontiguousarray(array, dtype=np.uint8 if array.dtype == bool else array.dtype)
    (k0, j0, i0), (nk, nj, ni) = offset, array.shape
    image.SetExtent(i0, i0 + ni - 1, j0, j0 + nj - 1, k0, k0 + nk - 1)
    scalars = numpy_support.numpy_to_vtk(array.reshape(-1), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def array_from_oriented_image(image) -> np.ndarray:
    """A copy of an oriented image's voxels, shape (k, j, i) of its extent."""
    dimensions = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars is None or min(dimensions) < 1:
        return np.zeros(dimensions[::-1], dtype=np.uint8)
    return numpy_support.vtk_to_numpy(scalars).reshape(dimensions[::-1]).copy()


def segment_labelmap(segmentation_node, segment_id: str):
    """A segment's voxels as a 0/1 uint8 vtkOrientedImageData in the segmentation's own geometry.

    Segments that share a labelmap layer come back from Slicer as the whole layer, with one label value
    per segment; only this segment's value is kept. None when the segment has no voxels at all.
    """
    layer = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentation_node, segment_id, layer, False):
        raise InputError(f"segment '{segment_id}' of '{segmentation_node.GetName()}' has no binary labelmap; open "
                         "the segmentation in the Segment Editor once so Slicer creates one")
    if layer.GetPointData().GetScalars() is None or min(layer.GetDimensions()) < 1:
        return None
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    binary = slicer.vtkOrientedImageData()
    binary.ShallowCopy(layer)
    mask = (array_from_oriented_image(layer) == label).astype(np.uint8)
    binary.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.reshape(-1), deep=True))
    return binary


def segmentation_reference(segmentation_node, fallback: VolumeGeometry):
    """A geometry-only vtkOrientedImageData of the grid the segmentation keeps its labelmaps on.

    That is the segmentation's reference image geometry (what the Segment Editor paints on); `fallback`'s
    grid when it has none.
    """
    converter = slicer.vtkSegmentationConverter
    serialized = segmentation_node.GetSegmentation().GetConversionParameter(
        converter.GetReferenceImageGeometryParameterName())
    reference = slicer.vtkOrientedImageData()
    if serialized and converter.DeserializeImageGeometry(serialized, reference, False):
        return reference
    return oriented_image(fallback)


def check_same_transform(volume_node, segmentation_node) -> None:
    """InputError unless both nodes sit under the same parent transform (or none).

    Segments and voxels are exchanged in the volume's own IJK→RAS; a transform on only one of the two
    would shift every mask, so it is refused rather than silently misaligned.
    """
    volume_transform = volume_node.GetParentTransformNode()
    segmentation_transform = segmentation_node.GetParentTransformNode()
    if _node_id(volume_transform) != _node_id(segmentation_transform):
        names = [node.GetName() if node else "none" for node in (volume_transform, segmentation_transform)]
        raise InputError(f"volume '{volume_node.GetName()}' is under transform {names[0]} but segmentation "
                         f"'{segmentation_node.GetName()}' is under {names[1]}; put both under the same transform "
                         "or harden it")


def _node_id(node) -> str | None:
    return node.GetID() if node is not None else None


def _numpy_from_vtk_matrix(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _vtk_matrix_from_numpy(array: np.ndarray):
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix
