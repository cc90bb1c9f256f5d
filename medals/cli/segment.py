"""`medals segment`: segment images from the command line by text prompt (and optional masks).

    medals segment CT.nii.gz -p "liver" -p "spleen" -o labels.nii.gz
    medals segment case.npz -o out/case.npz                 # challenge case: prompts from its text_prompts
    medals segment scans/ -p "liver" -o results/            # every image of a folder
    medals segment CT.nii.gz -p "liver" -o out.nii.gz --server http://gpu-box:8765 --token T   # a remote engine
    torchrun --nproc_per_node 4 -m medals.cli segment scans/ -p "liver" -o results/ --resume    # 4 GPUs share a folder

Each run writes the label map(s), a JSON report (per class: voxels, volume in ml, mean confidence) and, with
--probabilities, one probability map per class. Progress bars show every window of every stage.

Every destination is checked before any work: none may be an input (however it is spelled or linked), no two
outputs may share a path, and each must be writable. Files are written beside their destination and renamed
into place. A folder run goes on past a case that fails, and its report says which failed and why. A prompt the
vocabulary does not know is segmented as free text (the model reads any text), with a warning naming the closest
known structures, and is marked `"in_vocabulary": false` in the report.

Under torchrun the processes share a folder's images (`medals.cohort`): each image is segmented by one of them and
rank 0 writes the one report a single process would. `--resume` skips the images whose outputs exist.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..cohort import Cohort, assign
from ..device import add_precision_option, check_precision
from ..errors import InputError, MedalSError
from ..intensity import resolve_window, to_model_range
from ..io import (MAX_VOXELS, Volume, case_name, check_writable, format_of, list_volume_files, read_volume,
                  write_labels, write_volume)
from ..modality import detect_modality
from ..pipeline import Prompt, SegmentOptions, segment
from ..pipeline.request import ProgressEvent
from ..pipeline.zoom import repair_spacing
from ..vocabulary import out_of_vocabulary_warning, vocabulary_marks
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


def _masks(specifications: list[str], volume, max_voxels: int) -> dict[int, np.ndarray]:
    """--mask LABEL=FILE → {label: bool mask}; each mask file must lie on the image's grid."""
    masks = {}
    for specification in specifications:
        label, separator, path = specification.partition("=")
        if not separator or not label.strip().isdigit():
            raise InputError(f"--mask {specification!r}: expected LABEL=FILE, e.g. --mask 2=spleen_seed.nii.gz")
        mask = read_volume(path, max_voxels)
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


def probability_path(output: Path, label: int) -> Path:
    """Where the probability map of `label` goes beside the label map `output`."""
    return output.parent / f"{case_name(output)}_probability_{label}{DEFAULT_SUFFIX}"


class Destinations:
    """The paths a run writes, each claimed before anything is written: never an input (compared as resolved
    paths and as files, so `./../dir/a.nii.gz`, links and hard links count), never twice, always writable."""

    def __init__(self, inputs: list[Path]):
        self.inputs = {os.path.realpath(path): path for path in inputs}
        self.input_files = {_file_identity(path): path for path in inputs if path.is_file()}
        self.claimed: dict[str, str] = {}

    def claim(self, path: Path, what: str) -> Path:
        key = os.path.realpath(path)
        source = self.inputs.get(key) or self.input_files.get(_file_identity(path))
        if source is not None:
            raise InputError(f"{path}: {what} would overwrite the input {source}; choose another output")
        if key in self.claimed:
            raise InputError(f"{path}: {self.claimed[key]} and {what} would both be written there; rename an input "
                             "or choose another output")
        check_writable(path)
        self.claimed[key] = what
        return path


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _mask_files(specifications: list[str]) -> list[Path]:
    return [Path(specification.partition("=")[2]) for specification in specifications if "=" in specification]


def segment_file(run, path: Path, output: Path, args, bars: StageBars, destinations: Destinations) -> dict:
    """Segment one image file with `run` (pipeline.segment's signature without model and device), write its
    label map (and probability maps); returns its report entry."""
    volume = read_volume(path, args.max_voxels)
    challenge = volume.extras.get("format") == "npz" and not args.prompt
    if challenge:
        prompts, instance = _challenge_prompts(volume)
        if not prompts:
            raise InputError(f"{path}: no -p prompts given and the file has no text_prompts")
        for prompt in prompts if args.probabilities else []:  # known only now: claimed before the run
            destinations.claim(probability_path(output, prompt.label), f"the probability map {prompt.label} of "
                                                                      f"{path.name}")
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
                     masks=_masks(args.mask, volume, args.max_voxels), options=options, progress=bars)
    finally:
        bars.close()
    seconds = time.perf_counter() - start
    write_labels(result.labels, volume, output)
    texts = {prompt.label: prompt.text for prompt in prompts}
    report = {"image": str(path), "labels": str(output), "modality": result.modality,
              "box": list(result.box), "seconds": round(seconds, 2),
              "classes": {str(label): {**stats, **vocabulary_marks(texts.get(label, stats["name"]))}
                          for label, stats in result.stats.items()}}
    if result.probabilities:
        report["probabilities"] = {}
        for label, probability in result.probabilities.items():
            target = probability_path(output, label)
            write_volume(Volume(probability, volume.spacing, volume.origin, volume.direction), target)
            report["probabilities"][str(label)] = str(target)
    return report


def _summary(report: dict) -> str:
    if "error" in report:
        return f"{report['image']}: failed: {report['error']}"
    lines = [f"{report['image']} → {report['labels']} ({report['modality']}, {report['seconds']} s)"]
    for label, stats in report["classes"].items():
        free_text = "" if stats.get("in_vocabulary", True) else "   (free text, not in the vocabulary)"
        lines.append(f"  {label:>5} {stats['name']:<30} {stats['volume_ml']:>10.2f} ml   "
                     f"confidence {stats['mean_confidence']:.2f}{free_text}")
    return "\n".join(lines)


def _plan(args, source: Path, output: Path, batch: bool) -> tuple[list[Path], list[Path], Path, Destinations]:
    """Inputs, their label-map outputs, the report path and the claimed destinations, all checked before the
    run: an output that is an input, two outputs on one path, or an unwritable place is an error now."""
    inputs = list_volume_files(source) if batch else [source]
    outputs = _output_paths(inputs, output, batch)
    report_path = Path(args.report) if args.report else \
        (output / "report.json" if batch else output.parent / f"{case_name(output)}_report.json")
    destinations = Destinations([*inputs, *_mask_files(args.mask)])
    for path, target in zip(inputs, outputs):
        destinations.claim(target, f"the label map of {path.name}")
        labels = args.label or range(1, len(args.prompt) + 1)
        for label in labels if args.probabilities and args.prompt else []:
            destinations.claim(probability_path(target, label), f"the probability map {label} of {path.name}")
    destinations.claim(report_path, "the report")
    return inputs, outputs, report_path, destinations


def _write_report(reports: list[dict], path: Path, batch: bool) -> None:
    """The JSON report, written beside its place and renamed into it."""
    staged = path.with_name(f".{path.name}.partial")
    staged.write_text(json.dumps(reports if batch else reports[0], indent=2) + "\n")
    os.replace(staged, path)


def _finished(args, outputs: list[Path], report_path: Path) -> dict[int, dict]:
    """With --resume, the cases whose label map (and asked-for probability maps) exist already, by index, each with
    its entry from the earlier report when that lists it, else one that says it was skipped."""
    if not args.resume:
        return {}
    earlier = {}
    try:
        listed = json.loads(report_path.read_text()) if report_path.is_file() else []
        earlier = {entry["labels"]: entry for entry in listed if isinstance(entry, dict) and "labels" in entry}
    except (OSError, ValueError, TypeError):  # an unreadable earlier report only costs the skipped cases' details
        pass
    labels = args.label or range(1, len(args.prompt) + 1)
    finished = {}
    for index, output in enumerate(outputs):
        wanted = [output, *(probability_path(output, label) for label in labels if args.probabilities)]
        if all(path.is_file() for path in wanted):
            finished[index] = earlier.get(str(output)) or {"labels": str(output), "skipped": "its output exists"}
    return finished


def run_segment(args) -> int:
    source, output = Path(args.image), Path(args.output)
    batch = source.is_dir() and bool(list_volume_files(source))
    inputs, outputs, report_path, destinations = _plan(args, source, output, batch)
    cohort = Cohort.join(args.device, needs_device=not args.server)
    try:
        return _run_cases(args, cohort, batch, inputs, outputs, report_path, destinations)
    finally:
        cohort.leave()


def _run_cases(args, cohort, batch: bool, inputs: list[Path], outputs: list[Path], report_path: Path,
               destinations: Destinations) -> int:
    """This process's share of the cases; rank 0 (the only one without torchrun) writes the report of all."""
    for text in filter(str.strip, args.prompt) if cohort.is_main else ():  # a blank prompt is refused by the run
        warning = out_of_vocabulary_warning(text)
        if warning:
            print(f"medals: warning: {warning}", file=sys.stderr, flush=True)
    # Rank 0 alone looks at which outputs exist and shares out the rest, so every case is segmented once.
    finished, owners = cohort.decide(lambda: _share(args, inputs, outputs, report_path, cohort.world_size))
    if args.server:
        from ..server.remote import segment_remote

        if args.precision != "auto":
            raise InputError("--precision sets this process's engine; a server's is set when it starts "
                             "(medals serve --precision)")
        run = functools.partial(segment_remote, args.server, token=args.token or os.environ.get("MEDALS_SERVER_TOKEN"))
    else:
        precision = check_precision(args.precision, cohort.device)
        run = functools.partial(segment, load_model(args.model, cohort.device), device=cohort.device,
                                precision=precision)
    bars = StageBars(not args.quiet)
    mine = [index for index, owner in enumerate(owners) if owner == cohort.rank]
    where = f"rank {cohort.rank}: " if cohort.world_size > 1 else ""
    reports = {index: {"image": str(inputs[index]), **entry} for index, entry in finished.items()} \
        if cohort.is_main else {}
    try:
        for number, index in enumerate(mine, start=1):
            path, target = inputs[index], outputs[index]
            if batch and not args.quiet:
                print(f"{where}[{number}/{len(mine)}] {path.name}", flush=True)
            try:
                reports[index] = segment_file(run, path, target, args, bars, destinations)
            except Exception as error:  # noqa: BLE001 - one bad case must not end a folder run
                if not batch:
                    raise
                kind = "" if isinstance(error, MedalSError) else f"internal error ({type(error).__name__}): "
                reports[index] = {"image": str(path), "error": f"{kind}{error}"}
            print(where + _summary(reports[index]), flush=True)
        reports = cohort.gather(reports)
    finally:
        if reports and cohort.is_main:
            _write_report([reports[index] for index in sorted(reports)], report_path, batch)
    if not cohort.is_main:
        return 0
    failed = [report["image"] for report in reports.values() if "error" in report]
    if failed:
        raise MedalSError(f"{len(failed)} of {len(inputs)} images failed ({', '.join(failed)}); {report_path} says why")
    return 0


def _share(args, inputs: list[Path], outputs: list[Path], report_path: Path, ranks: int):
    """(the finished cases with their entries, the rank of every other case): the decision rank 0 hands out."""
    finished = _finished(args, outputs, report_path)
    return finished, assign([None if index in finished else _size(path) for index, path in enumerate(inputs)],
                            ranks)


def _size(path: Path) -> int:
    """Bytes of an image file (or DICOM folder): the work it stands for when cases are shared out."""
    return sum(part.stat().st_size for part in path.rglob("*") if part.is_file()) if path.is_dir() \
        else path.stat().st_size


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
    parser.add_argument("--model", help="model name or model folder (default: the only installed model, else the "
                                        "bundled demo model)")
    parser.add_argument("-o", "--output", required=True,
                        help="label map file (format from its extension), or a folder for a folder of images")
    parser.add_argument("--report", help="JSON report path (default: beside the output)")
    parser.add_argument("--resume", action="store_true",
                        help="skip the images whose outputs exist already (an interrupted folder run, a cohort)")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: CUDA when present)")
    add_precision_option(parser)
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
    parser.add_argument("--max-voxels", type=int, default=MAX_VOXELS, metavar="N",
                        help=f"refuse larger images, from their header (default {MAX_VOXELS})")
    parser.add_argument("--window-batch", type=int, default=1, metavar="N", help="windows per forward (GPU)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_segment)
