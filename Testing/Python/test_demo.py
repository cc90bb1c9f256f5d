"""`medals demo`, the README's first command, with the bundled demo model on the bundled held-out brain."""
from __future__ import annotations

import json

import numpy as np
import pytest

from medals.cli import main
from medals.demo import CORRECTED, DEMO_MODEL, PROMPTS
from medals.io import read_volume
from medals.metrics import dice
from medals.weights import load_model

pytestmark = pytest.mark.slow


def test_the_bundled_demo_model_is_small_and_loads_strictly():
    size = sum(path.stat().st_size for path in DEMO_MODEL.rglob("*") if path.is_file())
    assert size <= 30e6
    model = load_model(DEMO_MODEL)
    assert set(model.nets) == {"coarse", "fine"} and (DEMO_MODEL / "MODEL_CARD.md").is_file()


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--device", "cpu", "-q", "-o", str(output)]) == 0
    return output


def test_demo_writes_both_label_maps_a_figure_and_a_report(demo_output):
    report = json.loads((demo_output / "report.json").read_text())
    assert set(report) == {"text-only", "hybrid"}
    image = read_volume(DEMO_MODEL.parent.parent / "data" / "samples" / "mni152_t1.nii.gz")
    for mode in report:
        labels = read_volume(demo_output / f"{mode}.nii.gz")
        assert labels.same_grid(image)
        assert set(np.unique(labels.array)) <= {0} | {p.label for p in PROMPTS}
    assert (demo_output / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_segments_held_out_tissue_by_text_and_the_correction_improves_it(demo_output):
    """Held-out Dice ≥ 0.80 for both tissues by text alone; the corrected white matter raises both Dice scores."""
    report = json.loads((demo_output / "report.json").read_text())
    text_only, hybrid = report["text-only"]["dice_vs_reference"], report["hybrid"]["dice_vs_reference"]
    assert text_only["gray matter"] >= 0.80 and text_only["white matter"] >= 0.80
    assert hybrid["gray matter"] > text_only["gray matter"] and hybrid["white matter"] > text_only["white matter"]


def test_the_correction_spreads_beyond_the_slices_it_was_drawn_on(demo_output):
    """Not a copy of the prompt: white matter improves on the slices nobody corrected too."""
    samples = DEMO_MODEL.parent.parent / "data" / "samples"
    reference = read_volume(samples / "mni152_tissue_reference.nii.gz").array == CORRECTED.label
    correction = read_volume(samples / "mni152_white_matter_correction.nii.gz").array > 0
    text_only, hybrid = (read_volume(demo_output / f"{mode}.nii.gz").array == CORRECTED.label
                         for mode in ("text-only", "hybrid"))
    untouched = ~(correction != text_only).any(axis=(1, 2))  # k-slices where the correction equals the result
    assert untouched.sum() > 0.9 * len(untouched)
    assert dice(reference[untouched], hybrid[untouched]) > dice(reference[untouched], text_only[untouched]) + 0.003
