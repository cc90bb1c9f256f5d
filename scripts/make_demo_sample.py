"""Build the demo's bundled sample (medals/data/samples/) from the held-out set of prepare_demo_data.py.

    python scripts/prepare_demo_data.py build/demo-data --heldout build/demo-heldout
    python scripts/make_demo_sample.py build/demo-heldout medals/data/samples

The sample is the MNI ICBM152 2009 T1 template (a brain the demo model never saw in training) with:
- the reference tissue map (gray matter 1, white matter 2: nilearn's probability maps > 0.5) the demo scores
  itself against;
- a seed mask standing in for a person's strokes: the reference gray matter on three axial slices.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from medals.io import read_labels, write_labels

SEED_SLICES = 3


def seed_strokes(structure: np.ndarray) -> np.ndarray:
    """The structure's (k, j, i) mask on SEED_SLICES evenly spaced k-slices across its extent."""
    slices = np.flatnonzero(structure.any(axis=(1, 2)))
    chosen = np.linspace(slices[0], slices[-1], SEED_SLICES + 2).round().astype(int)[1:-1]
    seed = np.zeros_like(structure, dtype=bool)
    seed[chosen] = structure[chosen]
    return seed


def main(heldout: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(heldout / "images" / "mni152.nii.gz", target / "mni152_t1.nii.gz")
    reference = read_labels(heldout / "labels" / "mni152_tissue.nii.gz")
    write_labels(reference.array.astype(np.uint8), reference, target / "mni152_tissue_reference.nii.gz")
    seed = seed_strokes(reference.array == 1)
    write_labels(seed.astype(np.uint8), reference, target / "mni152_gray_matter_seed.nii.gz")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
