"""`medals demo`: the README's first command. Segments the bundled brain MRI with the bundled demo model by text
alone, then refines it with a corrected structure as spatial prompt (hybrid mode), and writes both label maps, a
report and a PNG figure.

The sample is the MNI ICBM152 template, a brain the demo model never saw in training; its tissue reference
(nilearn's gray and white matter probability maps > 0.5) lets the demo score itself. See
medals/models/medals-demo/MODEL_CARD.md for what the demo model can and cannot do.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .cli.segment import StageBars
from .device import pick_device
from .figure import overview_png
from .io import read_labels, read_volume, write_labels
from .metrics import dice
from .pipeline import Prompt, SegmentOptions, segment

PACKAGE = Path(__file__).resolve().parent
DEMO_MODEL = PACKAGE / "models" / "medals-demo"
SAMPLES = PACKAGE / "data" / "samples"
PROMPTS = (Prompt("gray matter", 1), Prompt("white matter", 2))
"""Label values equal the reference's (medals/data/samples/mni152_tissue_reference.nii.gz)."""
CORRECTED = PROMPTS[1]
"""The structure a person corrected before the hybrid run: the text-only white matter redrawn on three slices
(medals/data/samples/mni152_white_matter_correction.nii.gz, made by scripts/make_demo_sample.py)."""
HYBRID = SegmentOptions(merge_masks_with_coarse=False)
"""The correction is a whole structure, so it replaces the coarse stage's prompt rather than adding to it."""


def run_demo(args) -> int:
    from .weights import load_model

    output = Path(args.output)
    device = pick_device(args.device)
    model = load_model(DEMO_MODEL, device)
    volume = read_volume(SAMPLES / "mni152_t1.nii.gz")
    correction = read_labels(SAMPLES / "mni152_white_matter_correction.nii.gz").array > 0
    reference = read_labels(SAMPLES / "mni152_tissue_reference.nii.gz").array
    image = volume.array.astype(np.float32)
    print(f"MedalS demo: {model.config.name} on {device}, image {volume.shape} (k, j, i) at {volume.spacing} mm")
    print("prompts: " + ", ".join(f'"{p.text}" → {p.label}' for p in PROMPTS))

    report, panels, bars = {}, {}, StageBars(not args.quiet)
    runs = {"text-only": (None, SegmentOptions()), "hybrid": ({CORRECTED.label: correction}, HYBRID)}
    for mode, (masks, options) in runs.items():
        note = "" if masks is None else \
            f" (\"{CORRECTED.text}\" as corrected on 3 slices: {int(correction.sum())} voxels)"
        print(f"\n{mode}{note}")
        start = time.perf_counter()
        try:
            result = segment(model, image, volume.spacing, list(PROMPTS), direction=volume.direction,
                             modality="mri", masks=masks, options=options, progress=bars, device=device)
        finally:
            bars.close()
        path = write_labels(result.labels, volume, output / f"{mode}.nii.gz")
        scores = {p.text: dice(reference == p.label, result.labels == p.label) for p in PROMPTS}
        report[mode] = {"labels": str(path), "seconds": round(time.perf_counter() - start, 1),
                        "dice_vs_reference": {name: round(score, 4) for name, score in scores.items()},
                        "classes": {str(k): v for k, v in result.stats.items()}}
        panels[f"{mode} ({CORRECTED.text} Dice {scores[CORRECTED.text]:.3f})"] = result.labels
        for stats in result.stats.values():
            print(f"  {stats['name']:<14} {stats['volume_ml']:8.1f} ml   confidence {stats['mean_confidence']:.2f}   "
                  f"Dice against the reference {scores[stats['name']]:.4f}")
        print(f"  ({report[mode]['seconds']} s)")

    figure = overview_png(image, volume.spacing, panels, {p.label: p.text for p in PROMPTS},
                          output / "demo.png", title="MedalS demo model on the MNI152 T1 (held out)")
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {output / 'text-only.nii.gz'}, {output / 'hybrid.nii.gz'}, {figure} and {output / 'report.json'}")
    return 0


def register(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="segment the bundled brain MRI by text, then refine it (hybrid)")
    demo.add_argument("-o", "--output", default="demo-output", help="folder for the results (default demo-output)")
    demo.add_argument("--device", help="cuda, cuda:N or cpu (default: CUDA when present)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=run_demo)
