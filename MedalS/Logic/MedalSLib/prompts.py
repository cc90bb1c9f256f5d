"""Prompts and painted seeds: the text the user typed, and the segments that carry their spatial hints.

A prompt is one structure name ("liver", "left kidney"). A painted segment is matched to the prompt of the
same name (ignoring case, punctuation and repeated spaces) unless the user mapped it explicitly. Masks come
back on the input volume's own voxel grid, (k, j, i), resampled from the segmentation's geometry when the two
differ.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np
import slicer

from .client import Structure
from .errors import InputError
from .scene import Box, VolumeGeometry, array_from_oriented_image, check_same_transform, oriented_image, \
    segment_labelmap, volume_geometry

REFINE_MARGIN_MM = 10.0
"""Context kept around an edit when refining: the engine recomputes the edit's bounding box grown by this."""


def parse_prompts(text: str) -> list[str]:
    """Prompts from the editor's text: one per line, spaces trimmed and collapsed, blank lines dropped.

    A name repeated (in any letter case) is kept once, at its first line, because two segments with the
    same name could not be told apart.
    """
    prompts, seen = [], set()
    for line in text.splitlines():
        prompt = " ".join(line.split())
        if prompt and structure_key(prompt) not in seen:
            seen.add(structure_key(prompt))
            prompts.append(prompt)
    return prompts


def completion_names(vocabulary: Iterable[Structure]) -> list[str]:
    """Every name and synonym the engine knows (`EngineClient.vocabulary`), once each (case-insensitively),
    sorted for a completer."""
    names = {}
    for structure in vocabulary:
        for name in structure.terms:
            names.setdefault(structure_key(name), " ".join(name.split()))
    return sorted(names.values(), key=str.casefold)


def structure_key(name: str) -> str:
    """What two names must share to denote the same structure: lower case, runs of anything but letters and
    digits as one space ("Left_Kidney " and "left-kidney" → "left kidney"), as the engine's vocabulary does."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", name.lower()).split())


def segments_by_prompt(segmentation_node, prompts: list[str], overrides: dict[str, str] | None = None) \
        -> dict[str, str]:
    """Segment ID that carries each prompt's seeds; prompts without a painted segment are left out.

    By default a prompt takes the segment of the same name (`structure_key`). `overrides` maps a prompt to
    the name of another segment, or to "" for "no seeds for this prompt" (the editable mapping table).
    """
    segmentation = segmentation_node.GetSegmentation()
    ids_by_key = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        ids_by_key.setdefault(structure_key(segmentation.GetSegment(segment_id).GetName()), segment_id)
    overrides = {structure_key(prompt): name for prompt, name in (overrides or {}).items()}
    mapping = {}
    for prompt in prompts:
        name = overrides.get(structure_key(prompt), prompt)
        if not name:
            continue
        segment_id = ids_by_key.get(structure_key(name))
        if segment_id is None and structure_key(prompt) in overrides:
            raise InputError(f"prompt '{prompt}' is mapped to segment '{name}', which is not in segmentation "
                             f"'{segmentation_node.GetName()}'")
        if segment_id is not None:
            mapping[prompt] = segment_id
    return mapping


def painted_masks(segmentation_node, segment_ids: dict[str, str], volume_node) -> dict[str, np.ndarray]:
    """Each prompt's painted segment as a uint8 0/1 mask (k, j, i) on `volume_node`'s voxel grid.

    Segments are resampled (nearest neighbour) from the segmentation's own geometry, whatever its spacing,
    extent or orientation; a segment with nothing painted inside the volume is left out.
    """
    check_same_transform(volume_node, segmentation_node)
    reference = oriented_image(volume_geometry(volume_node))
    masks = {}
    for prompt, segment_id in segment_ids.items():
        labelmap = segment_labelmap(segmentation_node, segment_id)
        if labelmap is None:
            continue
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, reference,
                                                                                          resampled)
        mask = array_from_oriented_image(resampled)
        if mask.any():
            masks[prompt] = mask
    return masks


def margin_voxels(geometry: VolumeGeometry, margin_mm: float = REFINE_MARGIN_MM) -> tuple[int, int, int]:
    """`margin_mm` as whole voxels along (k, j, i), rounded up."""
    return tuple(int(math.ceil(margin_mm / spacing)) for spacing in geometry.spacing)


def edited_region(current: dict[str, np.ndarray], baseline: dict[str, np.ndarray], geometry: VolumeGeometry,
                  margin_mm: float = REFINE_MARGIN_MM) -> Box | None:
    """The box around every voxel where the painted masks differ from the last result, with a margin.

    `current` and `baseline` map prompts to masks (k, j, i) on `geometry`'s grid; a prompt missing from one
    side counts as empty there, so first seeds and fully erased segments are edits too. None: nothing changed.
    """
    region = None
    for prompt in set(current) | set(baseline):
        now, before = current.get(prompt), baseline.get(prompt)
        if now is None:
            changed = before
        elif before is None:
            changed = now
        else:
            changed = now != before
        box = Box.bounding(changed)
        if box is not None:
            region = box.union(region)
    if region is None:
        return None
    return region.grown(margin_voxels(geometry, margin_mm), geometry.shape)
