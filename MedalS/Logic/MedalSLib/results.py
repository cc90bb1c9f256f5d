"""Engine results → segments: one named, coloured segment per prompt, other segments untouched, with undo.

The engine answers with int16 labels (k, j, i) over a box of the input volume's grid and the label value of
each prompt. A prompt's segment is found by name (see `prompts.structure_key`) or created; its voxels are
replaced everywhere (a fresh segmentation) or only inside the box (a refinement), in the segmentation's own
geometry. Before anything is written, the affected segments are saved in a `ResultSnapshot`, whose
`restore()` puts the segmentation back as it was.
"""
from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk

from .client import Structure
from .errors import InputError
from .prompts import structure_key
from .scene import Box, VolumeGeometry, check_same_transform, oriented_image, segment_labelmap, \
    segmentation_reference, volume_geometry

TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMY = ("SCT", "123037004", "Anatomical Structure")
ALTERED = ("SCT", "49755003", "Morphologically Altered Structure")
LATERALITY = {"left": ("SCT", "7771000", "Left"), "right": ("SCT", "24028007", "Right")}

# Common structures as Slicer's "General Anatomy" terminology lists them: recommended display colour (0–255),
# SNOMED CT category and type. Left/right variants take the same type with a laterality modifier. The fallback
# while no engine is connected: the engine's vocabulary (medals/data/vocabulary.json) gives every structure here
# the same look, which test_slicer_results checks.
KNOWN_STRUCTURES = {
    "liver": ((221, 130, 101), ANATOMY, ("SCT", "10200004", "Liver")),
    "spleen": ((157, 108, 162), ANATOMY, ("SCT", "78961009", "Spleen")),
    "kidney": ((185, 102, 83), ANATOMY, ("SCT", "64033007", "Kidney")),
    "pancreas": ((249, 180, 111), ANATOMY, ("SCT", "15776009", "Pancreas")),
    "stomach": ((216, 132, 105), ANATOMY, ("SCT", "69695003", "Stomach")),
    "gallbladder": ((139, 150, 98), ANATOMY, ("SCT", "28231008", "Gallbladder")),
    "aorta": ((224, 97, 76), ANATOMY, ("SCT", "15825003", "Aorta")),
    "lung": ((197, 165, 145), ANATOMY, ("SCT", "39607008", "Lung")),
    "heart": ((206, 110, 84), ANATOMY, ("SCT", "80891009", "Heart")),
    "brain": ((250, 250, 225), ANATOMY, ("SCT", "12738006", "Brain")),
    "urinary bladder": ((222, 154, 132), ANATOMY, ("SCT", "89837001", "Bladder")),
    "esophagus": ((211, 171, 143), ANATOMY, ("SCT", "32849002", "Esophagus")),
    "duodenum": ((255, 253, 229), ANATOMY, ("SCT", "38848004", "Duodenum")),
    "small intestine": ((205, 167, 142), ANATOMY, ("SCT", "30315005", "Small Intestine")),
    "colon": ((204, 168, 143), ANATOMY, ("SCT", "71854001", "Colon")),
    "prostate": ((230, 158, 140), ANATOMY, ("SCT", "41216001", "Prostate")),
    "uterus": ((255, 181, 158), ANATOMY, ("SCT", "35039007", "Uterus")),
    "adrenal gland": ((249, 186, 150), ANATOMY, ("SCT", "23451007", "Adrenal gland")),
    "thyroid gland": ((62, 162, 114), ANATOMY, ("SCT", "69748006", "Thyroid")),
    "spinal cord": ((244, 214, 49), ANATOMY, ("SCT", "2748008", "Spinal cord")),
    "trachea": ((182, 228, 255), ANATOMY, ("SCT", "44567001", "Trachea")),
    "white matter": ((250, 250, 210), ANATOMY, ("SCT", "389080008", "White Matter")),
    "gray matter": ((200, 200, 235), ANATOMY, ("SCT", "389081007", "Gray Matter")),
    "cyst": ((205, 205, 100), ALTERED, ("SCT", "367643001", "Cyst")),
    "mass": ((144, 238, 144), ALTERED, ("SCT", "4147007", "Mass")),
}
SYNONYMS = {"bladder": "urinary bladder", "gall bladder": "gallbladder", "oesophagus": "esophagus",
            "thyroid": "thyroid gland", "adrenal": "adrenal gland", "small bowel": "small intestine",
            "grey matter": "gray matter"}


@dataclass(frozen=True)
class SegmentAppearance:
    """How a new segment looks: RGB colour in 0–1 and a Slicer terminology string ("" when unknown)."""

    color: tuple[float, float, float]
    terminology: str = ""


def segment_appearance(name: str, vocabulary: Iterable[Structure] = ()) -> SegmentAppearance:
    """Colour and terminology for a structure name.

    `vocabulary` is the engine's (`EngineClient.vocabulary`): a prompt that is one of its structures' names or
    synonyms takes that structure's colour and codes. Names it lacks (and every name while no engine is
    connected) are looked up in Slicer's General Anatomy values above: "left kidney" is Kidney with the Left
    modifier, and "kidney cyst" falls back on its last word (Cyst). Unknown names get a stable colour hashed
    from the name, as the engine colours them.
    """
    structure = engine_structure(name, vocabulary)
    if structure is not None:
        terminology = ""
        if structure.category is not None and structure.sct is not None:
            terminology = _terminology(("SCT", *structure.category), ("SCT", *structure.sct),
                                       LATERALITY.get(structure.laterality))
        return SegmentAppearance(tuple(channel / 255 for channel in structure.color), terminology)
    key = _canonical(name)
    words = key.split(" ")
    laterality = LATERALITY.get(words[0]) if len(words) > 1 else None
    if laterality is not None:
        key = _canonical(" ".join(words[1:]))
    entry = KNOWN_STRUCTURES.get(key) or KNOWN_STRUCTURES.get(_canonical(key.split(" ")[-1]))
    if entry is None:
        return SegmentAppearance(hashed_color(name))
    rgb, category, structure_type = entry
    return SegmentAppearance(tuple(channel / 255 for channel in rgb), _terminology(category, structure_type,
                                                                                   laterality))


def engine_structure(name: str, vocabulary: Iterable[Structure]) -> Structure | None:
    """The first structure of the engine's vocabulary that has `name` as its name or a synonym (`structure_key`)."""
    key = structure_key(name)
    return next((structure for structure in vocabulary
                 if any(structure_key(term) == key for term in structure.terms)), None)


def hashed_color(name: str) -> tuple[float, float, float]:
    """A colour (RGB, 0–1) fixed by the structure name: the same in every session, and the same as the engine's
    `medals.vocabulary.hashed_color` gives the name (MD5 of the name's `structure_key`)."""
    digest = hashlib.md5(structure_key(name).encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536
    rgb = colorsys.hsv_to_rgb(hue, 0.45 + 0.3 * digest[2] / 255, 0.75 + 0.2 * digest[3] / 255)
    return tuple(round(channel * 255) / 255 for channel in rgb)


def _canonical(name: str) -> str:
    key = structure_key(name)
    return SYNONYMS.get(key, key)


def _terminology(category, structure, modifier) -> str:
    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(TERMINOLOGY_CONTEXT)
    for coded, code in ((entry.GetCategoryObject(), category), (entry.GetTypeObject(), structure),
                        (entry.GetTypeModifierObject(), modifier)):
        if code is not None:
            coded.SetCodingSchemeDesignator(code[0])
            coded.SetCodeValue(code[1])
            coded.SetCodeMeaning(code[2])
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)


@dataclass
class _SavedSegment:
    segment_id: str
    created: bool
    labelmap: object = None
    """The segment's 0/1 labelmap before the write (vtkOrientedImageData), None when it was empty or new."""


@dataclass
class ResultSnapshot:
    """The segments a result touched, as they were before; `restore()` undoes the result."""

    segmentation_node: object
    saved: list[_SavedSegment] = field(default_factory=list)

    def restore(self) -> None:
        """Remove the segments the result created and put back the voxels of those it changed."""
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        segmentation = self.segmentation_node.GetSegmentation()
        was_modifying = self.segmentation_node.StartModify()
        try:
            for saved in self.saved:
                if segmentation.GetSegment(saved.segment_id) is None:
                    continue  # removed by the user since: nothing to restore into
                if saved.created:
                    segmentation.RemoveSegment(saved.segment_id)
                elif saved.labelmap is None:
                    logic.ClearSegment(self.segmentation_node, saved.segment_id)
                else:
                    logic.SetBinaryLabelmapToSegment(saved.labelmap, self.segmentation_node, saved.segment_id,
                                                     logic.MODE_REPLACE)
        finally:
            self.segmentation_node.EndModify(was_modifying)


def new_segmentation(scene, volume_node, name: str | None = None):
    """An empty segmentation for results on `volume_node`: its grid, its parent transform, "<volume> MedalS"."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"{volume_node.GetName()} MedalS")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    return node


def find_segment(segmentation_node, name: str) -> str | None:
    """ID of the first segment whose name denotes the same structure as `name` (see `structure_key`)."""
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        if structure_key(segmentation.GetSegment(segment_id).GetName()) == structure_key(name):
            return segment_id
    return None


def write_results(segmentation_node, volume_node, labels: np.ndarray, box: Box, prompts: dict[int, str],
                  only_inside_box: bool = False, vocabulary: Iterable[Structure] = ()) -> ResultSnapshot:
    """Write each prompt's voxels into the segment of its name; returns what undoes it.

    labels: int (k, j, i) over `box` of `volume_node`'s grid; voxel value v belongs to prompt `prompts[v]`.
    only_inside_box: False replaces each prompt's segment entirely (voxels outside the box become empty);
        True replaces it only inside the box (a refinement) and keeps the rest.
    Segments not named by a prompt are never modified. New segments get the prompt's name, colour and
    terminology (`segment_appearance`, with the engine's `vocabulary`); existing ones keep the user's colour.
    """
    check_same_transform(volume_node, segmentation_node)
    geometry = volume_geometry(volume_node)
    check_box(labels, box, geometry)
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSourceRepresentationName() != "Binary labelmap":
        raise InputError(f"segmentation '{segmentation_node.GetName()}' is stored as "
                         f"'{segmentation.GetSourceRepresentationName()}'; MedalS writes binary labelmaps — pick "
                         "another output segmentation or convert this one in the Segmentations module")
    if not segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole()) \
            and segmentation.GetNumberOfSegments() == 0:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)

    snapshot = ResultSnapshot(segmentation_node)
    was_modifying = segmentation_node.StartModify()
    try:
        for value, prompt in prompts.items():
            segment_id = find_segment(segmentation_node, prompt)
            if segment_id is None:
                look = segment_appearance(prompt, vocabulary)
                segment_id = segmentation.AddEmptySegment("", prompt, look.color)
                if look.terminology:
                    segmentation.GetSegment(segment_id).SetTerminology(look.terminology)
                snapshot.saved.append(_SavedSegment(segment_id, created=True))
            else:
                snapshot.saved.append(_SavedSegment(segment_id, False, segment_labelmap(segmentation_node, segment_id)))
            _write_segment(segmentation_node, segment_id, (labels == value).astype(np.uint8), box, geometry,
                           only_inside_box)
    except Exception:
        snapshot.restore()
        raise
    finally:
        segmentation_node.EndModify(was_modifying)
    return snapshot


def check_box(array: np.ndarray, box: Box, geometry: VolumeGeometry) -> None:
    """InputError unless `array` (k, j, i) fills `box` exactly and the box lies inside `geometry`'s grid."""
    if tuple(array.shape) != box.shape:
        raise InputError(f"a result of shape {tuple(array.shape)} does not fill its box of shape {box.shape}")
    if min(box.start) < 0 or any(stop > n for stop, n in zip(box.stop, geometry.shape)):
        raise InputError(f"the result box {box.start}–{box.stop} lies outside the volume of shape {geometry.shape}")


def _write_segment(segmentation_node, segment_id: str, mask: np.ndarray, box: Box, geometry: VolumeGeometry,
                   only_inside_box: bool) -> None:
    """Replace a segment's voxels by `mask` (over `box`), everywhere or only inside the box.

    The mask is resampled onto the segmentation's reference grid first, so a new segment lives where the
    Segment Editor paints (an empty segment would otherwise adopt the volume's grid). A replace with an
    extent still clears the whole segment, so the in-box replace is an erase (minimum with an image that is
    0 inside the box and 1 around it) then an add (maximum), both limited to the box's footprint.
    """
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    footprint = _footprint(box, geometry, segmentation_reference(segmentation_node, geometry))
    if footprint is None:  # the box lies outside the segmentation's grid: nothing of it can be stored
        ok = only_inside_box or logic.ClearSegment(segmentation_node, segment_id)
    elif not only_inside_box:
        image = _resampled(oriented_image(geometry, mask, offset=box.start), footprint)
        ok = logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_REPLACE)
    else:
        image = _resampled(oriented_image(geometry, mask, offset=box.start), footprint)
        eraser = _resampled(oriented_image(geometry, np.zeros_like(mask), offset=box.start), footprint, outside=1)
        extent = list(footprint.GetExtent())
        ok = logic.SetBinaryLabelmapToSegment(eraser, segmentation_node, segment_id, logic.MODE_MERGE_MIN, extent) \
            and logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_MERGE_MAX, extent)
    if not ok:
        raise InputError(f"Slicer could not write segment '{segment_id}' of '{segmentation_node.GetName()}'")


def _footprint(box: Box, geometry: VolumeGeometry, reference):
    """Geometry-only image: the part of `reference`'s grid that `box` of `geometry`'s grid covers (one voxel
    of slack each side, for the rounding of rotated corners); None when they do not meet."""
    box_image = oriented_image(geometry, np.zeros(box.shape, np.uint8), offset=box.start)
    to_reference = vtk.vtkTransform()
    slicer.vtkOrientedImageDataResample.GetTransformBetweenOrientedImages(box_image, reference, to_reference)
    extent = [0] * 6
    slicer.vtkOrientedImageDataResample.TransformExtent(box_image.GetExtent(), to_reference, extent)
    limits = reference.GetExtent()
    clipped = [max(extent[a] - 1, limits[a]) if a % 2 == 0 else min(extent[a] + 1, limits[a]) for a in range(6)]
    if any(clipped[2 * axis] > clipped[2 * axis + 1] for axis in range(3)):
        return None
    footprint = slicer.vtkOrientedImageData()
    footprint.ShallowCopy(reference)
    footprint.SetExtent(clipped)
    return footprint


def _resampled(image, footprint, outside: int = 0):
    """`image` resampled (nearest neighbour) onto `footprint`'s grid and extent; `outside` where it has no voxels."""
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        image, footprint, resampled, False, False, None, outside)
    return resampled



def result_summary(stats: dict[str, dict]) -> str:
    """One status line for a result's per-prompt statistics (the engine's ClassStats): what was found and its
    volume, what was not, and which prompts the engine read as free text outside its vocabulary."""
    found = [f"{prompt}: {info['volume_ml']:.1f} ml" for prompt, info in stats.items() if info.get("voxels")]
    summary = "; ".join(found) if found else "nothing found"
    empty = [prompt for prompt, info in stats.items() if not info.get("voxels")]
    if empty:
        summary += f". Not found: {', '.join(empty)}"
    for prompt, info in stats.items():
        if info.get("in_vocabulary") is False:
            closest = info.get("suggestions") or []
            hint = f" (did you mean {' or '.join(repr(name) for name in closest)}?)" if closest else ""
            summary += f". '{prompt}' is not in the vocabulary{hint}: segmented as free text, unchecked"
    return summary
