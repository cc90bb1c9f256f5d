"""Build the demo's bundled sample (medals/data/samples/) from the held-out set of prepare_demo_data.py.

    python scripts/prepare_demo_data.py --heldout build/demo-heldout
    python scripts/make_demo_sample.py build/demo-heldout medals/data/samples

The sample is the MNI ICBM152 2009 T1 template (a brain the demo model never saw in training) with:
- the reference tissue map (gray matter 1, white matter 2: nilearn's probability maps > 0.5) the demo scores
  itself against;
- a seed mask standing in for a person's correction before Refine in Slicer: the demo model's own text-only white
  matter, redrawn on three axial slices to match the reference there (added where it missed, erased where it
  overshot). It depends on the shipped demo model: rebuild it whenever the model changes.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from medals.demo import CORRECTED, DEMO_MODEL, PROMPTS
from medals.io import read_labels, read_volume, write_labels
from medals.pipeline import segment
from medals.weights import load_model

SEED_SLICES = 3


def corrected_slices(result: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`result` (k, j, i bool) with SEED_SLICES evenly spaced k-slices across the reference's extent replaced by
    the reference's."""
    slices = np.flatnonzero(reference.any(axis=(1, 2)))
    chosen = np.linspace(slices[0], slices[-1], SEED_SLICES + 2).round().astype(int)[1:-1]
    corrected = result.copy()
    corrected[chosen] = reference[chosen]
    return corrected


def main(heldout: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(heldout / "images" / "mni152.nii.gz", target / "mni152_t1.nii.gz")
    reference = read_labels(heldout / "labels" / "mni152_tissue.nii.gz")
    write_labels(reference.array.astype(np.uint8), reference, target / "mni152_tissue_reference.nii.gz")
    volume = read_volume(target / "mni152_t1.nii.gz")
    text_only = segment(load_model(DEMO_MODEL), volume.array.astype(np.float32), volume.spacing, list(PROMPTS),
                        direction=volume.direction, modality="mri").labels
    seed = corrected_slices(text_only == CORRECTED.label, reference.array == CORRECTED.label)
    write_labels(seed.astype(np.uint8), reference, target / "mni152_white_matter_correction.nii.gz")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
