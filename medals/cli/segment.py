"""`medals segment`: segment images from the command line by text prompt (and optional masks).

    medals segment CT.nii.gz -p "liver" -p "spleen" -o labels.nii.gz
    medals segment case.npz -o out/case.npz                 # challenge case: prompts from its text_prompts
    medals segment scans/ -p "liver" -o results/            # every image of a folder
    medals segment CT.nii.gz -p "liver" -o out.nii.gz --server http://gpu-box:8765 --token T   # a remote engine

Each run writes the label map(s), a JSON report (per class: voxels, volume in ml, mean confidence) and, with
--probabilities, one probability map per class. Progress bars show every window of every stage.
"""
from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import numpy as np

from ..device import PRECISIONS
from ..errors import InputError
from ..intensity import resolve_window, to_model_range
from ..io import Volume, case_name, format_of, list_volume_files, read_volume, write_labels, write_volume
from ..modality import detect_modality
from ..pipeline import Prompt, SegmentOptions, segment
from ..pipeline.request import ProgressEvent
from ..pipeline.zoom import repair_spacing
from ..weights import load_model

DEFAULT_SUFFIX = ".nii.gz"


def _prompts_from_arguments(texts: list[str], labels: list[int] | None) -> list[Prompt]:
    if labels and len(labels) != len(texts):
        raise InputError(f"{len(labels)} --label values for {len(texts)} prompts; give one per -p, or none")
    return [Prompt(text, label) for text, label in zip(texts, labels or range(1, len(texts) + 1))]


def _challenge_prompts(volume) -> tuple[list[Prompt], bool]:
    """Prompts and the instance flag of a challenge case's text_prompts ({"1": text, ..., "instance_label": 0})."""
    entries = dict(volume.extras.get("text_prompts") or {})
    instance = bool(int(entries.pop("instance_label", 0) or 0))
    prompts = []
    for key, text in entries.items():
        try:
            prompts.append(Prompt(str(text), int(key)))
        except ValueError:
            raise InputError(f"{volume.source}: text_prompts key {key!r} is not a label value") from None
    return prompts, instance


def _masks(specifications: list[str], volume) -> dict[int, np.ndarray]:
    """--mask LABEL=FILE → {label: bool mask}; each mask file must lie on the image's grid."""
    masks = {}
    for specification in specifications:
        label, separator, path = specification.partition("=")
        if not separator or not label.strip().isdigit():
            raise InputError(f"--mask {specification!r}: expected LABEL=FILE, e.g. --mask 2=spleen_seed.nii.gz")
        mask = read_volume(path)
        if mask.shape != volume.shape:
            raise InputError(f"--mask {specification!r}: shape {mask.shape} differs from the image's {volume.shape}")
        masks[int(label)] = mask.array > 0
    return masks


class StageBars:
    """One tqdm progress bar per stage of the current image, advanced once per window."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.stage = enabled, None, None

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if event.stage != self.stage:
            self.close()
            self.stage = event.stage
            self.bar = tqdm(total=event.total, desc=f"  {event.stage} stage", unit="window", leave=False)
        self.bar.update(event.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None


def _output_paths(inputs: list[Path], output: Path, batch: bool) -> list[Path]:
    if not batch:
        format_of(output)  # a supported label-map format, checked before any work
        return [output]
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: a folder is needed for the outputs of a folder of images")
    return [output / (case_name(path) + (".npz" if format_of(path) == "npz" else DEFAULT_SUFFIX)) for path in inputs]


def segment_file(run, path: Path, output: Path, args, bars: StageBars) -> dict:
    """Segment one image file with `run` (pipeline.segment's signature without model and device), write its
    label map (and probability maps); returns its report entry."""
    volume = read_volume(path)
    challenge = volume.extras.get("format") == "npz" and not args.prompt
    if challenge:
        prompts, instance = _challenge_prompts(volume)
        if not prompts:
            raise InputError(f"{path}: no -p prompts given and the file has no text_prompts")
    else:
        if not args.prompt:
            raise InputError("give at least one prompt with -p TEXT")
        prompts, instance = _prompts_from_arguments(args.prompt, args.label), args.instance
    npz = volume.extras.get("format") == "npz"
    # A challenge npz may store zero spacing; its own rule (values < 0.1 mm mean 1 mm) applies at this edge.
    spacing = repair_spacing(volume.shape, volume.spacing) if npz else volume.spacing
    modality = detect_modality([p.text for p in prompts], volume.array, explicit=args.modality)
    window = resolve_window(args.ct_window) if args.ct_window else None
    image = to_model_range(volume.array, modality, challenge_input=npz, window=window)
    options = SegmentOptions(stages=tuple(args.stages), instance=instance, keep_largest=args.keep_largest,
                             refine_iterations=args.refine if args.refine is not None else int(instance),
                             probabilities=args.probabilities, window_batch=args.window_batch)
    start = time.perf_counter()
    try:
        result = run(image, spacing, prompts, direction=None if npz else volume.direction, modality=modality,
                     masks=_masks(args.mask, volume), options=options, progress=bars)
    finally:
        bars.close()
    seconds = time.perf_counter() - start
    write_labels(result.labels, volume, output)
    report = {"image": str(path), "labels": str(output), "modality": result.modality,
              "box": list(result.box), "seconds": round(seconds, 2),
              "classes": {str(label): stats for label, stats in result.stats.items()}}
    if result.probabilities:
        stem = output.parent / case_name(output)
        report["probabilities"] = {}
        for label, probability in result.probabilities.items():
            target = stem.parent / f"{stem.name}_probability_{label}{DEFAULT_SUFFIX}"
            write_volume(Volume(probability, volume.spacing, volume.origin, volume.direction), target)
            report["probabilities"][str(label)] = str(target)
    return report


def _summary(report: dict) -> str:
    lines = [f"{report['image']} → {report['labels']} ({report['modality']}, {report['seconds']} s)"]
    for label, stats in report["classes"].items():
        lines.append(f"  {label:>5} {stats['name']:<30} {stats['volume_ml']:>10.2f} ml   "
                     f"confidence {stats['mean_confidence']:.2f}")
    return "\n".join(lines)


def run_segment(args) -> int:
    from ..device import check_precision, pick_device

    source, output = Path(args.image), Path(args.output)
    batch = source.is_dir() and bool(list_volume_files(source))
    inputs = list_volume_files(source) if batch else [source]
    outputs = _output_paths(inputs, output, batch)
    if args.server:
        from ..server.remote import segment_remote

        if args.precision != "auto":
            raise InputError("--precision sets this process's engine; a server's is set when it starts "
                             "(medals serve --precision)")
        run = functools.partial(segment_remote, args.server, token=args.token or os.environ.get("MEDALS_SERVER_TOKEN"))
    else:
        device = pick_device(args.device)
        precision = check_precision(args.precision, device)
        run = functools.partial(segment, load_model(args.model, device), device=device, precision=precision)
    bars = StageBars(not args.quiet)
    reports = []
    for number, (path, target) in enumerate(zip(inputs, outputs), start=1):
        if batch and not args.quiet:
            print(f"[{number}/{len(inputs)}] {path.name}", flush=True)
        reports.append(segment_file(run, path, target, args, bars))
        print(_summary(reports[-1]), flush=True)
    report_path = Path(args.report) if args.report else \
        (output / "report.json" if batch else output.parent / f"{case_name(output)}_report.json")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(reports if batch else reports[0], indent=2) + "\n")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("segment", help="segment an image (or a folder of images) by text prompts",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="image file (.nii.gz, .nrrd, .mha, .npz, DICOM folder) or a folder of images")
    parser.add_argument("-p", "--prompt", action="append", default=[], metavar="TEXT",
                        help="structure to segment, e.g. -p liver -p 'left kidney' (challenge .npz: optional)")
    parser.add_argument("--label", action="append", type=int, metavar="N",
                        help="label value for each -p, in order (default 1, 2, ...)")
    parser.add_argument("--mask", action="append", default=[], metavar="LABEL=FILE",
                        help="a seed mask for a prompt's label on the image grid (hybrid mode); repeatable")
    parser.add_argument("--modality", help="ct, mri, us, pet or microscopy (default: from the prompts, then the "
                                           "image)")
    parser.add_argument("--model", help="installed model name or model folder (default: the only installed one)")
    parser.add_argument("-o", "--output", required=True,
                        help="label map file (format from its extension), or a folder for a folder of images")
    parser.add_argument("--report", help="JSON report path (default: beside the output)")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: CUDA when present)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: half precision on CUDA, float32 on the CPU; fp32: float32 everywhere; bf16: "
                             "bfloat16, up to 3.5× faster on a CPU with AMX, at a small accuracy cost (default auto)")
    parser.add_argument("--server", metavar="URL", help="run on the engine server at URL instead of in this process")
    parser.add_argument("--token", help="the server's token (default: $MEDALS_SERVER_TOKEN)")
    parser.add_argument("--stages", nargs="+", default=["coarse", "fine"], choices=["coarse", "fine"],
                        help="stages to run (default: both)")
    parser.add_argument("--instance", action="store_true",
                        help="instance task: number each connected component (challenge .npz: from the file)")
    parser.add_argument("--refine", type=int, metavar="N",
                        help="self-refinement passes per window (default 1 for instance tasks, else 0)")
    parser.add_argument("--keep-largest", action="store_true", help="keep only the largest component of each label")
    parser.add_argument("--probabilities", action="store_true", help="also write one probability map per class")
    parser.add_argument("--ct-window", metavar="PRESET", help="CT window preset for HU images (default soft tissue)")
    parser.add_argument("--window-batch", type=int, default=1, metavar="N", help="windows per forward (GPU)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_segment)
