"""Training samples and batches: a patch, its queries, their targets and their simulated spatial prompts.

A sample is drawn in the order of the official data loader: pick a case (by weight), cut and augment a patch,
find which structures it holds, choose and phrase the queries, and simulate the prompts from their targets.
A batch pads every sample to the same number of queries; `query_mask` marks the real ones.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from .dataset import Case
from .intensity import IntensityAugmentation, augment_intensity
from .prompt_simulation import PromptSimulation, simulate_prompts
from .queries import QuerySampling, phrase_queries, select_structures
from .spatial import SpatialAugmentation, cut_patch, plan_placement


@dataclass(frozen=True)
class SampleSettings:
    spatial: SpatialAugmentation = field(default_factory=SpatialAugmentation)
    intensity: IntensityAugmentation = field(default_factory=IntensityAugmentation)
    prompts: PromptSimulation = field(default_factory=PromptSimulation)
    queries: QuerySampling = field(default_factory=QuerySampling)


@dataclass
class Sample:
    """One patch (h, w, d): image (1, …) on 0–255, N queries `texts` of `modality` with targets (N, …) and
    prompts sc (1, …), mc (N, …), all float32 in {0, 1} except the image."""

    image: torch.Tensor
    targets: torch.Tensor
    sc: torch.Tensor
    mc: torch.Tensor
    texts: list[str]
    modality: str


@dataclass
class Batch:
    """B samples padded to N queries: image (B,1,h,w,d), targets and mc (B,N,h,w,d), sc (B,1,h,w,d) float32;
    query_index (B,N) int64 rows of the text bank; query_mask (B,N) bool; modality (B,) int64 codes."""

    image: torch.Tensor
    targets: torch.Tensor
    sc: torch.Tensor
    mc: torch.Tensor
    query_index: torch.Tensor
    query_mask: torch.Tensor
    modality: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(*(getattr(self, name).to(device, non_blocking=True) for name in self.__dataclass_fields__))


def choose_case(cases: list[Case], generator: torch.Generator) -> Case:
    weights = torch.tensor([case.weight for case in cases], dtype=torch.float64)
    return cases[int(torch.multinomial(weights, 1, generator=generator))]


def draw_sample(case: Case, crop, target, settings: SampleSettings, generator: torch.Generator) -> Sample:
    """One augmented patch of `case` for a stage with `crop` and working spacing `target` (h, w, d)."""
    rng = random.Random(int(torch.randint(2 ** 62, (), generator=generator)))
    placement = plan_placement(case, crop, target, settings.spatial, generator)
    image, masks = cut_patch(case, placement, crop)
    image = augment_intensity(image, settings.intensity, generator)
    present = masks.flatten(1).any(1).tolist()
    positives = [s for s, here in enumerate(present) if here]
    negatives = [s for s, here in enumerate(present) if not here]
    structures = case.prompt_set.structures
    selected = select_structures(positives, negatives, settings.queries, rng)
    queries = phrase_queries(selected, [list(s.synonyms) for s in structures], settings.queries, rng)
    targets = masks[[s for s, _ in queries]]
    sc, mc = simulate_prompts(targets, settings.prompts, generator)
    return Sample(image[None], targets.float(), sc, mc, [text for _, text in queries], case.prompt_set.modality)


def collate(samples: list[Sample], text_rows: dict[str, int], modalities) -> Batch:
    """Stack samples, padding queries with zero targets and prompts; `text_rows[text]` is the text bank row of a
    phrasing and `modalities` the modality table (name → code by position)."""
    n_queries = max(len(s.texts) for s in samples)
    spatial = samples[0].image.shape[1:]

    def padded(tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor, tensor.new_zeros((n_queries - len(tensor), *spatial))])

    query_index = torch.zeros(len(samples), n_queries, dtype=torch.int64)
    query_mask = torch.zeros(len(samples), n_queries, dtype=torch.bool)
    for b, sample in enumerate(samples):
        query_index[b, :len(sample.texts)] = torch.tensor([text_rows[t] for t in sample.texts])
        query_mask[b, :len(sample.texts)] = True
    return Batch(image=torch.stack([s.image for s in samples]),
                 targets=torch.stack([padded(s.targets) for s in samples]),
                 sc=torch.stack([s.sc for s in samples]),
                 mc=torch.stack([padded(s.mc) for s in samples]),
                 query_index=query_index, query_mask=query_mask,
                 modality=torch.tensor([list(modalities).index(s.modality) for s in samples]))
