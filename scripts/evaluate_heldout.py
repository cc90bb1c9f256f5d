"""Score a model on the held-out checks of prepare_demo_data.py (DSC and NSD at 2 mm per structure).

    python scripts/evaluate_heldout.py MODEL build/demo-heldout [--out heldout.json]

MODEL is an installed model name or a model folder. Each task of tasks.json (image, modality, prompts,
reference label map) runs text-only through `medals.pipeline.segment`; the table printed is what the demo model
card reports.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medals.io import read_labels, read_volume
from medals.metrics import semantic_scores
from medals.pipeline import Prompt, segment
from medals.weights import load_model


def evaluate(model, heldout: Path) -> list[dict]:
    rows = []
    for task in json.loads((heldout / "tasks.json").read_text()):
        volume = read_volume(heldout / task["image"])
        reference = read_labels(heldout / task["reference"])
        prompts = [Prompt(text, int(label)) for label, text in task["prompts"].items()]
        result = segment(model, volume.array.astype(np.float32), volume.spacing, prompts, direction=volume.direction,
                         modality=task["modality"])
        scores = semantic_scores(reference.array, result.labels, volume.spacing, [p.label for p in prompts])
        for prompt in prompts:
            score = scores.get(prompt.label, {"dsc": float("nan"), "nsd": float("nan")})
            rows.append({"task": task["name"], "structure": prompt.text, "dsc": score["dsc"], "nsd": score["nsd"]})
            print(f"{task['name']:<20} {prompt.text:<16} DSC {score['dsc']:.3f}   NSD {score['nsd']:.3f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("heldout", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = evaluate(load_model(args.model), args.heldout)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
