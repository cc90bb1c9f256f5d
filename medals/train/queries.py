"""Which structures a training sample asks for, and in which words (spec §6.3).

Structures are indices into a prompt set; a structure is positive in a patch when any of its voxels is there.
`select_structures` picks the structures: every positive (or a random `max_queries` of them) plus a few absent
ones as negatives (about `negative_ratio` per positive, so negatives appear once a patch holds ≥ 4 positives), or
only negatives when nothing is present. `phrase_queries` then words them: one random synonym each when the
selection is full, otherwise a round robin over the shuffled selection that draws a new synonym each time until
`max_queries` queries or every synonym is used — so a patch with one structure is asked about it in several
phrasings, each with the same target.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class QuerySampling:
    max_queries: int = 32
    negative_ratio: float = 0.33

    def __post_init__(self):
        if self.max_queries < 1:
            raise ValueError(f"max_queries must be ≥ 1, got {self.max_queries}")
        if self.negative_ratio < 0:
            raise ValueError(f"negative_ratio must be ≥ 0, got {self.negative_ratio}")


def select_structures(positives: list[int], negatives: list[int], settings: QuerySampling,
                      rng: random.Random) -> list[int]:
    """Structure indices to query, positives first."""
    limit = settings.max_queries
    if not positives:
        return rng.sample(negatives, min(limit, len(negatives)))
    if len(positives) > limit:
        return rng.sample(positives, limit)
    n_negatives = min(int(settings.negative_ratio * len(positives)), limit - len(positives), len(negatives))
    return list(positives) + rng.sample(negatives, n_negatives)


def phrase_queries(selected: list[int], synonyms: list[list[str]], settings: QuerySampling,
                   rng: random.Random) -> list[tuple[int, str]]:
    """(structure index, prompt text) per query for the `selected` structures; `synonyms[s]` lists s's phrasings."""
    if len(selected) >= settings.max_queries:
        return [(s, rng.choice(synonyms[s])) for s in selected]
    unused = {s: rng.sample(synonyms[s], len(synonyms[s])) for s in selected}
    order = rng.sample(selected, len(selected))
    queries = []
    while len(queries) < settings.max_queries and any(unused.values()):
        for s in order:
            if unused[s] and len(queries) < settings.max_queries:
                queries.append((s, unused[s].pop()))
    return queries
