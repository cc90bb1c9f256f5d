"""A training dataset: images on the 0–255 scale, label maps, and prompt sets that say what each label means.

Folder layout (paths in dataset.json are relative to its folder):

```
dataset.json
  {"format": "medals-dataset/1",
   "prompt_sets": {
     "<set>": {"modality": "mri", "instance": false,
               "structures": [{"name": "brain", "values": [1, 2, 3], "synonyms": ["brain", "whole brain", ...]},
                              ...],
               "mirror_pairs": [["left hemisphere", "right hemisphere"]]}},
   "cases": [{"name": "colin27", "image": "images/colin27.nii.gz", "labels": "labels/colin27.nii.gz",
              "prompt_set": "<set>", "weight": 1.0}, ...]}
```

A structure is the union of one or more label values, so structures may overlap (brain ⊃ white matter) while the
label map stays one disjoint parcellation. An instance set has exactly one structure and no `values`: every
non-zero label is an instance of it (the official binarisation of instance datasets). `mirror_pairs` names
structures that trade places when a training patch is mirrored (left ↔ right). `weight` (default 1) is the
case's relative sampling frequency.

Images and label maps are read with `medals.io` (any format it reads), must share one grid, and images must
already be on the 0–255 scale the network expects. In memory every volume is in network order (h, w, d).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import MODALITIES
from ..errors import InputError
from ..io import read_volume
from ..orientation import reorientation
from ..pipeline.axes import to_network_order, volume_to_network
from ..pipeline.zoom import repair_spacing

FORMAT = "medals-dataset/1"
LOCATIONS_PER_STRUCTURE = 10_000
"""Stored voxel positions per structure for foreground oversampling (nnU-Net keeps up to 10,000 per class)."""
MAX_LABEL = 2 ** 24
"""Largest label value: labels are held as float32 for resampling, exact up to 2^24."""


@dataclass(frozen=True)
class Structure:
    """A named structure: the label values that make it up (empty for an instance set) and its phrasings."""

    name: str
    values: tuple[int, ...]
    synonyms: tuple[str, ...]


@dataclass(frozen=True)
class PromptSet:
    """What the labels of a group of cases mean: modality, structures, instance flag and left/right pairs.

    `mirror_pairs` holds pairs of structure indices.
    """

    name: str
    modality: str
    instance: bool
    structures: tuple[Structure, ...]
    mirror_pairs: tuple[tuple[int, int], ...] = ()

    def structure_table(self, max_label: int) -> torch.Tensor:
        """(max_label + 1, S) bool: row v says which structures label value v belongs to."""
        table = torch.zeros(max_label + 1, len(self.structures), dtype=torch.bool)
        if self.instance:
            table[1:, 0] = True
            return table
        for index, structure in enumerate(self.structures):
            values = [v for v in structure.values if v <= max_label]
            table[values, index] = True
        return table


@dataclass
class Case:
    """One training volume in network order (h, w, d).

    image: float32 (h, w, d) on 0–255; labels: float32 (h, w, d) holding integer values (so that grid_sample can
    read them by nearest neighbour); spacing: repaired (h, w, d) mm;
    table: (max label + 1, S) bool from label value to structures; locations[s]: (K, 3) int64 voxel positions of
    structure s (K = 0 when absent); boxes[s]: ((lo_h, lo_w, lo_d), (hi_h, hi_w, hi_d)) inclusive, or None.
    """

    name: str
    image: torch.Tensor
    labels: torch.Tensor
    spacing: tuple[float, float, float]
    prompt_set: PromptSet
    weight: float
    table: torch.Tensor
    locations: list[torch.Tensor]
    boxes: list[tuple[tuple[int, ...], tuple[int, ...]] | None]

    @property
    def present(self) -> list[int]:
        """Indices of the structures that have voxels in this case."""
        return [s for s, box in enumerate(self.boxes) if box is not None]

    def structure_masks(self, labels: torch.Tensor) -> torch.Tensor:
        """Label patch (*spatial) with this case's values → structure masks (S, *spatial) bool."""
        return self.table[labels.long()].movedim(-1, 0)


@dataclass
class Dataset:
    folder: Path
    prompt_sets: dict[str, PromptSet]
    cases: list[Case]

    def phrasings(self) -> list[str]:
        """Every distinct phrasing of every prompt set, in file order."""
        seen = {}
        for prompt_set in self.prompt_sets.values():
            for structure in prompt_set.structures:
                for text in structure.synonyms:
                    seen.setdefault(text, None)
        return list(seen)


def _field(values: dict, name: str, kind, where: str, default=None):
    if name not in values:
        if default is not None:
            return default
        raise InputError(f"{where}: missing field {name!r}")
    value = values[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise InputError(f"{where}: field {name!r} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _parse_structure(values, where: str, instance: bool) -> Structure:
    if not isinstance(values, dict):
        raise InputError(f"{where}: a structure must be an object with name, values and synonyms")
    name = _field(values, "name", str, where)
    where = f"{where} ({name})"
    synonyms = _field(values, "synonyms", list, where)
    if not synonyms or not all(isinstance(s, str) and s.strip() for s in synonyms):
        raise InputError(f"{where}: synonyms must be a non-empty list of non-empty strings")
    if len(set(synonyms)) != len(synonyms):
        raise InputError(f"{where}: synonyms repeat a phrasing")
    if instance:
        if "values" in values:
            raise InputError(f"{where}: an instance set's structure takes every non-zero label; drop 'values'")
        return Structure(name, (), tuple(synonyms))
    label_values = _field(values, "values", list, where)
    if not label_values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in label_values):
        raise InputError(f"{where}: values must be a non-empty list of positive integer labels")
    return Structure(name, tuple(sorted(set(label_values))), tuple(synonyms))


def parse_prompt_set(name: str, values, where: str) -> PromptSet:
    """A PromptSet from its dataset.json entry; InputError naming the field on anything malformed."""
    where = f"{where}: prompt set {name!r}"
    if not isinstance(values, dict):
        raise InputError(f"{where} must be an object")
    modality = _field(values, "modality", str, where).strip().lower()
    if modality not in MODALITIES:
        raise InputError(f"{where}: unknown modality {modality!r}; one of {', '.join(MODALITIES)}")
    instance = _field(values, "instance", bool, where, default=False)
    raw = _field(values, "structures", list, where)
    structures = tuple(_parse_structure(s, f"{where} structure {k + 1}", instance) for k, s in enumerate(raw))
    if not structures:
        raise InputError(f"{where}: no structures")
    if instance and len(structures) != 1:
        raise InputError(f"{where}: an instance set has exactly one structure, got {len(structures)}")
    names = [s.name for s in structures]
    if len(set(names)) != len(names):
        raise InputError(f"{where}: structure names repeat")
    pairs = []
    for pair in _field(values, "mirror_pairs", list, where, default=[]):
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in names for p in pair) and pair[0] != pair[1]):
            raise InputError(f"{where}: mirror pair {pair!r} must name two different structures of the set")
        pairs.append((names.index(pair[0]), names.index(pair[1])))
    return PromptSet(name, modality, instance, structures, tuple(pairs))


def _structure_geometry(mask_of, n_structures: int, generator: torch.Generator):
    """Per structure: up to LOCATIONS_PER_STRUCTURE random voxel positions (K, 3) and the bounding box (or None)."""
    locations, boxes = [], []
    for s in range(n_structures):
        voxels = torch.nonzero(mask_of(s))
        boxes.append((tuple(voxels.amin(0).tolist()), tuple(voxels.amax(0).tolist())) if len(voxels) else None)
        if len(voxels) > LOCATIONS_PER_STRUCTURE:
            voxels = voxels[torch.randperm(len(voxels), generator=generator)[:LOCATIONS_PER_STRUCTURE]]
        locations.append(voxels)
    return locations, boxes


def load_case(folder: Path, values: dict, prompt_sets: dict[str, PromptSet], where: str,
              generator: torch.Generator, orientation: str | None = None) -> Case:
    """One case of dataset.json, turned to `orientation` (a code of `medals.orientation`) when one is given."""
    name = _field(values, "name", str, where)
    where = f"{where} ({name})"
    set_name = _field(values, "prompt_set", str, where)
    if set_name not in prompt_sets:
        raise InputError(f"{where}: unknown prompt set {set_name!r}; defined: {', '.join(prompt_sets)}")
    weight = float(_field(values, "weight", (int, float), where, default=1.0))
    if weight <= 0:
        raise InputError(f"{where}: weight must be positive, got {weight}")
    image = read_volume(folder / _field(values, "image", str, where))
    labels = read_volume(folder / _field(values, "labels", str, where))
    if image.shape != labels.shape or not np.allclose(image.spacing, labels.spacing, rtol=1e-4):
        raise InputError(f"{where}: image {image.shape} @ {image.spacing} mm and labels {labels.shape} @ "
                         f"{labels.spacing} mm are not on one grid")
    if min(image.shape) < 2:
        raise InputError(f"{where}: every axis needs at least 2 voxels, got {image.shape}")
    low, high = float(image.array.min()), float(image.array.max())
    if low < 0 or high > 255:
        raise InputError(f"{where}: image values span {low:g}..{high:g}; map them to 0–255 first (the network "
                         "sees 0–255 intensities)")
    if not np.issubdtype(labels.array.dtype, np.integer) or labels.array.min() < 0:
        raise InputError(f"{where}: labels must be non-negative integers, got {labels.array.dtype}")
    prompt_set = prompt_sets[set_name]
    turn = reorientation(image.direction, orientation)
    label_array = turn.apply(labels.array.astype(np.int64))
    if label_array.max() > MAX_LABEL:
        raise InputError(f"{where}: label values above {MAX_LABEL} are not supported (found {label_array.max()})")
    label_tensor = volume_to_network(torch.from_numpy(label_array)).contiguous()
    table = prompt_set.structure_table(int(label_tensor.max()))
    locations, boxes = _structure_geometry(lambda s: table[:, s][label_tensor], len(prompt_set.structures),
                                           generator)
    return Case(name=name,
                image=volume_to_network(torch.from_numpy(turn.apply(image.array.astype(np.float32)))).contiguous(),
                labels=label_tensor.float(),
                spacing=to_network_order(repair_spacing(label_array.shape, turn.permute(image.spacing))),
                prompt_set=prompt_set, weight=weight, table=table, locations=locations, boxes=boxes)


def load_dataset(folder, seed: int = 0, orientation: str | None = None) -> Dataset:
    """Read `folder/dataset.json` and every case it lists, each turned to `orientation` when given; InputError (one
    line) on anything unusable."""
    folder = Path(folder)
    path = folder / "dataset.json"
    if not path.is_file():
        raise InputError(f"{path}: not found (a training dataset folder holds dataset.json)")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        raise InputError(f"{path}: not a MedalS dataset (expected \"format\": \"{FORMAT}\")")
    raw_sets = _field(values, "prompt_sets", dict, str(path))
    prompt_sets = {name: parse_prompt_set(name, v, str(path)) for name, v in raw_sets.items()}
    raw_cases = _field(values, "cases", list, str(path))
    if not raw_cases:
        raise InputError(f"{path}: no cases")
    generator = torch.Generator().manual_seed(seed)
    cases = [load_case(folder, c, prompt_sets, f"{path}: case {k + 1}", generator, orientation)
             for k, c in enumerate(raw_cases)]
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise InputError(f"{path}: case names repeat")
    return Dataset(folder, prompt_sets, cases)
