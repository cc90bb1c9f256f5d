"""`medals bench refine`: what a refinement after a small edit costs against running again.

Per case, in one fresh child process: a full two-stage hybrid run (which keeps the refinement state), the final
stage run over its whole region with the edited masks (a whole-volume hybrid fine pass), and the refinement after
a 20×20×20-voxel edit; the time, the fine windows each ran, and each one's peak memory (the process's peak resident
set size reset before each, or the CUDA allocator's peak).

Cases: `demo`, the bundled MNI152 sample with the demo model, white matter corrected on three slices as the first
masks; `ct`, a synthetic 512×512×300 CT at 0.8×0.8×1.5 mm
with the official configuration (crops 224×224×128 and 192³, full network width, random weights), a liver-sized
ellipsoid as the first mask (on two CPU cores about 75 minutes with --precision bf16, over two hours in float32).
The edit is a cube painted on the border of the structure the full run found. Each case also reports the edited
structure's Dice inside the refined box against the whole-volume pass. Progress (a line per window) goes to stderr.
"""
from __future__ import annotations

import sys
import time

from .child import in_child, peak_memory_mb, reset_peak_memory

CASES = ("demo", "ct")
EDIT = 20
"""Edge of the edited cube, voxels."""
CT_SHAPE, CT_SPACING = (300, 512, 512), (1.5, 0.8, 0.8)


def _demo_case(device):
    import numpy as np

    from ..demo import DEMO_MODEL, PROMPTS, SAMPLES
    from ..io import read_labels, read_volume
    from ..weights import load_model

    model = load_model(DEMO_MODEL, device)
    sample = read_volume(SAMPLES / "mni152_t1.nii.gz")
    correction = read_labels(SAMPLES / "mni152_white_matter_correction.nii.gz").array > 0
    return (model, sample.array.astype(np.float32), sample.spacing, sample.direction, list(PROMPTS), "mri",
            {2: correction}, 2)


class _RandomQueries:
    """Text queries for a random-weight model: one fixed random vector per prompt (no text tower needed)."""

    def __init__(self, dim: int):
        self.dim = dim

    def encode(self, texts, modality):
        import torch

        generator = torch.Generator().manual_seed(len(texts))
        return torch.randn(len(texts), self.dim, generator=generator)


def _ct_case(device):
    from types import SimpleNamespace

    import numpy as np
    import torch

    from ..config import ModelConfig
    from ..modeling import MedalSNet
    from ..pipeline import Prompt

    config = ModelConfig("official-size-random")
    torch.manual_seed(0)
    nets = {name: MedalSNet(stage.net).eval().to(device) for name, stage in config.stages.items()}
    model = SimpleNamespace(config=config, nets=nets,
                            text_encoder=_RandomQueries(config.stages["fine"].net.query_dim))
    k, j, i = np.ogrid[:CT_SHAPE[0], :CT_SHAPE[1], :CT_SHAPE[2]]
    body = ((j - 256) / 220) ** 2 + ((i - 256) / 180) ** 2 <= 1
    liver = ((k - 150) / 60) ** 2 + ((j - 230) / 70) ** 2 + ((i - 180) / 80) ** 2 <= 1
    noise = np.random.default_rng(0).normal(0, 8, CT_SHAPE).astype(np.float32)
    image = np.clip(np.where(body, 120, 0) + np.where(liver, 40, 0) + noise, 0, 255).astype(np.float32)
    return model, image, CT_SPACING, None, [Prompt("liver", 1)], "ct", {1: liver}, 1


def _edited(masks: dict, label: int, labels):
    """The masks with a cube painted for `label`, centred on the border of that label in the full run's `labels`
    (of the first mask when the run found none): half the cube redraws the structure, half extends it."""
    import numpy as np

    structure = labels == label if (labels == label).any() else masks[label]
    border = np.argwhere(structure & ~np.roll(structure, 1, axis=1))
    centre = border[len(border) // 2]
    corner = [max(0, min(c - EDIT // 2, n - EDIT)) for c, n in zip(centre, structure.shape)]
    mask = masks[label].copy()
    mask[tuple(slice(c, c + EDIT) for c in corner)] = True
    return {**masks, label: mask}


def measure(spec: dict) -> dict:
    """One case in this process: seconds, fine windows and peak memory (MB) of each of the three runs."""
    import numpy as np
    import torch

    from ..metrics import dice
    from ..orientation import reorientation
    from ..pipeline import segment
    from ..pipeline.refine import RefinementCache
    from ..pipeline.roi import box_slices
    from ..pipeline.sliding_window import Execution
    from ..pipeline.stage import StageModel, run_stage
    from ..pipeline.zoom import repair_spacing

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    model, image, spacing, direction, prompts, modality, masks, label = \
        (_demo_case if spec["case"] == "demo" else _ct_case)(device)
    states = RefinementCache(64 << 30)
    rows = {}

    def timed(name, run):
        events = []
        reset_peak_memory(device)
        start = time.perf_counter()

        def progress(event):  # a line per window on stderr: a long case shows where it is
            events.append(event)
            print(f"  {spec['case']} {name}: {event.message} done at {time.perf_counter() - start:.1f} s",
                  file=sys.stderr, flush=True)

        output = run(progress)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rows[name] = {"seconds": time.perf_counter() - start, "windows": sum(e.stage == "fine" for e in events),
                      "peak_mb": peak_memory_mb(device)}
        print(f"  {spec['case']} {name}: {rows[name]}", file=sys.stderr, flush=True)
        return output

    precision = spec.get("precision", "auto")
    request = dict(direction=direction, modality=modality, device=device, precision=precision, states=states)
    full = timed("full", lambda progress: segment(model, image, spacing, prompts, masks=masks, progress=progress,
                                                  **request))
    state = next(iter(states._states.values()))
    edited = _edited(masks, label, full.labels)
    turn = reorientation(direction, getattr(model.config, "orientation", None))

    def whole_fine(progress):
        """The final stage over the kept region with the edited masks; labels on the input grid."""
        index = box_slices(state.region)
        painted = np.zeros(turn.apply(image).shape, np.int16)
        for value, mask in edited.items():
            painted[turn.apply(mask)] = value
        prompt = np.where(painted[index] > 0, painted[index], state.base).astype(np.int16)
        with torch.no_grad():
            queries = model.text_encoder.encode([p.text for p in prompts], modality).float()
            whole = run_stage(StageModel(model.nets["fine"], model.config.stages["fine"]), queries,
                              turn.apply(image)[index], repair_spacing(painted.shape, turn.permute(spacing)),
                              [p.label for p in prompts], prompt,
                              execution=Execution(device, progress=progress, precision=precision), name="fine")
        labels = np.zeros(painted.shape, np.int16)
        labels[index] = whole.labels
        return turn.undo(labels)

    reference = timed("whole fine", whole_fine)
    refined = timed("refine", lambda progress: segment(model, image, spacing, prompts, masks=edited,
                                                       progress=progress, **request))
    box = box_slices(refined.box)
    rows["refine"]["refined"] = refined.refined
    rows["refine"]["dice_in_box"] = dice(reference[box] == label, refined.labels[box] == label)
    return rows


def run_refine(args) -> int:
    import torch

    from ..device import check_precision, pick_device

    device = pick_device(args.device)
    precision = check_precision(args.precision, device)
    threads = args.threads or torch.get_num_threads()
    print(f"medals bench refine: a refinement after a {EDIT}×{EDIT}×{EDIT}-voxel edit against a full run, {device}"
          f"{'' if device.type == 'cuda' else f', {threads} threads'}, precision {precision}; one child process "
          "per case")
    print(f"{'case':<6}{'run':<12}{'seconds':>10}{'fine windows':>14}{'peak MB':>10}")
    ratios = []
    for case in args.cases:
        spec = {"case": case, "device": str(device), "threads": threads, "precision": precision}
        rows = in_child("medals.bench.refine:measure", spec, echo=True)
        for name, row in rows.items():
            print(f"{case:<6}{name:<12}{row['seconds']:>10.2f}{row['windows']:>14}{row['peak_mb']:>10.0f}",
                  flush=True)
        ratios.append(rows["refine"]["seconds"] / rows["full"]["seconds"])
        print(f"{case}: refine/full {ratios[-1]:.3f}, refine/whole fine "
              f"{rows['refine']['seconds'] / rows['whole fine']['seconds']:.3f}; inside the refined box the edited "
              f"structure's Dice against the whole fine pass {rows['refine']['dice_in_box']:.4f}"
              f"{'' if rows['refine']['refined'] else ' (NOT REFINED: the request ran in full)'}", flush=True)
    print(f"refine/full: {max(ratios):.3f}x")
    return 0


def register(kinds) -> None:
    """Add `refine` to the `medals bench` subcommands."""
    from ..device import add_precision_option

    refine = kinds.add_parser("refine", help="a refinement after a small edit against a full run",
                              description=__doc__.split("\n\n")[0])
    refine.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                        help="demo (MNI152, demo model) and/or ct (512×512×300, official size; default both)")
    refine.add_argument("--device", help="cuda, cuda:N or cpu (default: CUDA when present)")
    add_precision_option(refine)
    refine.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    refine.set_defaults(func=run_refine)
