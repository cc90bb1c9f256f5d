"""`medals evaluate PRED GT`: score segmentations against ground truths as the challenge's evaluation does.

PRED and GT are two label-map files, or two folders whose files are paired by case name (the file name without
its extension, so `case1.nii.gz` pairs with `case1.nrrd`). Each pair must share a voxel grid.

* Semantic cases: DSC and NSD at 2 mm for each label both prompted and present in the ground truth, one CSV row
  per (case, label); the case score is their NaN-mean.
* Instance cases (a challenge npz whose `text_prompts` say `instance_label: 1`, or every case with `--instance`):
  the ground truth's values are its instances, as given; a binary prediction is split into 6-connected
  components, any other prediction is an instance map as given. One row per case with TP, FP, FN, F1, DSC-TP.

Spacing: ITK formats (NIfTI, NRRD, MetaImage) use their header. A challenge npz stores `spacing` in (H, W, D)
order for (D, H, W) arrays; the official evaluation applies it to the arrays' axes in stored order, which
`--npz-spacing official` (the default) reproduces; `--npz-spacing physical` pairs each axis with its own spacing.
A prediction npz holding only `segs` takes its case's spacing. The official evaluation reads spacing and prompts
from the case's image npz: `--images FOLDER` does the same.
"""
from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import Volume, case_name, kji_spacing_to_npz, list_volume_files, read_labels, read_volume
from ..metrics import NSD_TOLERANCE_MM, case_mean, instance_scores, prediction_instances, semantic_scores

COLUMNS = ("case", "label", "name", "dsc", "nsd", "tp", "fp", "fn", "f1", "dsc_tp")
CASE_COLUMNS = ("case", "dsc", "nsd", "f1", "dsc_tp")
NPZ_SPACING_ORDERS = ("official", "physical")


def parse_labels(items: list[str] | None) -> dict[int, str] | None:
    """`["1=liver", "2"]` → {1: "liver", 2: ""}; None when no labels were given."""
    if not items:
        return None
    labels = {}
    for item in items:
        value, _, name = item.partition("=")
        try:
            number = int(value)
        except ValueError:
            raise InputError(f"--labels: {item!r} is not VALUE or VALUE=NAME with an integer VALUE") from None
        if number <= 0:
            raise InputError(f"--labels: label values must be positive (got {number})")
        labels[number] = name.strip()
    return labels


def pair_cases(pred: Path, gt: Path) -> list[tuple[str, Path, Path]]:
    """(case name, prediction path, ground-truth path) for two files or two folders matched by case name."""
    if pred.is_dir() != gt.is_dir():
        raise InputError(f"PRED {pred} and GT {gt} must both be files or both be folders")
    if not pred.is_dir():
        return [(case_name(gt), pred, gt)]
    predictions = {case_name(p): p for p in list_volume_files(pred)}
    truths = {case_name(p): p for p in list_volume_files(gt)}
    if not truths:
        raise InputError(f"{gt}: no label maps found in this folder")
    missing = sorted(set(truths) - set(predictions))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"{pred}: no prediction for {len(missing)} ground-truth case(s): {shown}")
    return [(name, predictions[name], truths[name]) for name in sorted(truths)]


def read_pair(pred_path: Path, gt_path: Path, image_path: Path | None = None) -> tuple[Volume, Volume]:
    """The prediction and ground truth of one case, checked to lie on one grid.

    With the case's challenge image (`image_path`), its spacing and prompts are the case's, as in the official
    evaluation; the ground truth then needs neither.
    """
    image = read_volume(image_path) if image_path is not None else None
    gt = read_labels(gt_path, spacing_if_absent=image.spacing if image else None)
    if image is not None:
        if image.shape != gt.shape:
            raise InputError(f"{gt.source}: shape {gt.shape} differs from its image's {image.shape} ({image.source})")
        gt.spacing = image.spacing
        if "text_prompts" in image.extras:
            gt.extras["text_prompts"] = image.extras["text_prompts"]
    pred = read_labels(pred_path, spacing_if_absent=gt.spacing)
    check_same_grid(pred, gt)
    return pred, gt


def check_same_grid(pred: Volume, gt: Volume) -> None:
    """Raise InputError unless both label maps lie on the same voxel grid, saying what differs.

    Two challenge npz files carry no geometry: only their shapes must agree, and the ground truth's spacing is
    the case's (the official evaluation never reads a prediction's spacing).
    """
    if pred.shape != gt.shape:
        raise InputError(f"{pred.source}: shape {pred.shape} differs from the ground truth's {gt.shape} "
                         f"({gt.source})")
    both_npz = pred.extras.get("format") == gt.extras.get("format") == "npz"
    if not both_npz and not pred.same_grid(gt):
        raise InputError(f"{pred.source}: geometry differs from the ground truth {gt.source} (spacing "
                         f"{_rounded(pred.spacing)} vs {_rounded(gt.spacing)} mm, origin {_rounded(pred.origin)} vs "
                         f"{_rounded(gt.origin)})")
    if min(gt.spacing) <= 0:
        raise InputError(f"{gt.source}: spacing {_rounded(gt.spacing)} mm must be positive to measure distances")


def _rounded(values) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


def axis_spacing(gt: Volume, npz_spacing: str) -> tuple[float, float, float]:
    """The spacing (mm) applied to the arrays' axes (k, j, i) when measuring surface distances.

    For a challenge npz under the official convention this is the stored spacing as it lies in the file
    (spacing[0] on the slice axis D), not the spacing of each axis.
    """
    if gt.extras.get("format") == "npz" and npz_spacing == "official":
        return kji_spacing_to_npz(gt.spacing)
    return tuple(gt.spacing)


def case_prompts(gt: Volume, pred: Volume) -> dict:
    """The challenge `text_prompts` of a case (the ground truth's, else the prediction's; {} for other formats)."""
    return gt.extras.get("text_prompts") or pred.extras.get("text_prompts") or {}


def label_names(labels: dict[int, str] | None, prompts: dict, gt: Volume) -> dict[int, str]:
    """Labels to score with their names: --labels, else the prompts of a challenge npz, else those in GT."""
    if labels is not None:
        return labels
    prompted = {int(k): str(v) for k, v in prompts.items() if k != "instance_label" and str(k).isdigit()}
    if prompted:
        return prompted
    return {int(v): "" for v in np.unique(gt.array) if v != 0}


def score_case(name: str, pred: Volume, gt: Volume, labels: dict[int, str] | None,
               pred_instances: np.ndarray | None, npz_spacing: str) -> tuple[list[dict], dict]:
    """The CSV rows of one case and its case-level scores (DSC, NSD, F1, DSC-TP; NaN where not applicable).

    An instance case comes with the prediction's instance map (`pred_instances`); a semantic one with None.
    """
    names = label_names(labels, case_prompts(gt, pred), gt)
    if pred_instances is not None:
        scores = instance_scores(gt.array, pred_instances)
        row = {"case": name, "name": "; ".join(n for n in names.values() if n), "tp": scores.tp, "fp": scores.fp,
               "fn": scores.fn, "f1": scores.f1, "dsc_tp": scores.dsc_tp}
        return [row], {"case": name, "dsc": math.nan, "nsd": math.nan, "f1": scores.f1, "dsc_tp": scores.dsc_tp}
    scores = semantic_scores(gt.array, pred.array, axis_spacing(gt, npz_spacing), names, NSD_TOLERANCE_MM)
    rows = [{"case": name, "label": value, "name": names[value], **scores[value]} for value in scores]
    return rows, {"case": name, "dsc": case_mean(scores, "dsc"), "nsd": case_mean(scores, "nsd"),
                  "f1": math.nan, "dsc_tp": math.nan}


def official_differences(pred: Volume, gt: Volume, pred_instances: np.ndarray | None) -> list[str]:
    """Where the official evaluation's reading of a case departs from the stored labels (its scores differ)."""
    notes = []
    largest = max(int(gt.array.max(initial=0)), int(pred.array.max(initial=0)))
    if pred_instances is not None and pred_instances is not pred.array:
        # A split binary prediction: the official code numbers its components from the mask's value up.
        largest = max(largest, int(pred.array.max()) + int(pred_instances.max()))
    if largest > 255:
        notes.append(f"label value {largest}: the official evaluation reads labels as 8-bit (values wrap at 256)")
    if pred_instances is None and gt.array.size and np.all(gt.array != 0):
        notes.append("the ground truth has no background: the official evaluation skips its smallest label")
    return notes


@dataclass
class Evaluation:
    """Scores of a set of cases: CSV rows, one summary per case, unreadable cases, departures from the official
    evaluation's reading."""

    rows: list[dict] = field(default_factory=list)
    cases: list[dict] = field(default_factory=list)
    failures: list[tuple[str, InputError]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def evaluate_cases(cases, labels: dict[int, str] | None = None, instance: bool = False,
                   npz_spacing: str = "official", images: Path | None = None) -> Evaluation:
    """Score every (name, prediction, ground truth) case; `images` is a folder of the cases' challenge images."""
    result = Evaluation()
    for name, pred_path, gt_path in cases:
        try:
            pred, gt = read_pair(pred_path, gt_path, images / f"{name}.npz" if images else None)
        except InputError as error:
            result.failures.append((name, error))
            continue
        is_instance = instance or int(case_prompts(gt, pred).get("instance_label", 0)) == 1
        pred_instances = prediction_instances(pred.array) if is_instance else None
        rows, summary = score_case(name, pred, gt, labels, pred_instances, npz_spacing)
        result.rows.extend(rows)
        result.cases.append(summary)
        result.notes.extend(f"{name}: {note}" for note in official_differences(pred, gt, pred_instances))
    return result


def write_csv(rows: list[dict], columns: tuple[str, ...], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.8f}" if isinstance(v, float) else v for k, v in row.items()})


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def print_summary(rows: list[dict], case_rows: list[dict]) -> None:
    semantic = [row for row in rows if "dsc" in row]
    if semantic:
        print(f"{'label':>5}  {'name':<28} {'cases':>5}  {'DSC':>7}  {'NSD':>7}")
        # A label value means one structure per dataset: challenge cases of several datasets share values.
        for value, name in sorted({(row["label"], row["name"]) for row in semantic}):
            mine = [row for row in semantic if (row["label"], row["name"]) == (value, name)]
            print(f"{value:>5}  {name[:28]:<28} {len(mine):>5}  "
                  f"{_nanmean(r['dsc'] for r in mine):>7.4f}  {_nanmean(r['nsd'] for r in mine):>7.4f}")
    means = {metric: _nanmean(row[metric] for row in case_rows) for metric in CASE_COLUMNS[1:]}
    shown = [f"{label} {means[metric]:.4f}" for metric, label in
             (("dsc", "DSC"), ("nsd", "NSD"), ("f1", "F1"), ("dsc_tp", "DSC-TP")) if not math.isnan(means[metric])]
    print(f"mean over {len(case_rows)} case(s): {'  '.join(shown) or 'nothing scored'}")


def run_evaluate(args) -> int:
    cases = pair_cases(Path(args.pred), Path(args.gt))
    images = Path(args.images) if args.images else None
    if images is not None and not images.is_dir():
        raise InputError(f"--images {images}: not a folder")
    result = evaluate_cases(cases, parse_labels(args.labels), args.instance, args.npz_spacing, images)
    if result.failures and len(cases) == 1:
        raise result.failures[0][1]
    output = Path(args.output)
    write_csv(result.rows, COLUMNS, output)
    if args.case_output:
        write_csv(result.cases, CASE_COLUMNS, Path(args.case_output))
    print_summary(result.rows, result.cases)
    print(f"wrote {output}" + (f" and {args.case_output}" if args.case_output else ""))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if result.failures:
        for name, error in result.failures:
            print(f"{name}: {error}", file=sys.stderr)
        raise InputError(f"{len(result.failures)} of {len(cases)} case(s) could not be scored (listed above)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score predictions against ground truths (DSC, NSD; instance F1, DSC-TP)",
        description="Score label maps with the CVPR 2025 BiomedSegFM metrics, as the challenge's official "
                    "evaluation computes them. PRED and GT are files or folders (files paired by name without "
                    "extension); any supported format.")
    parser.add_argument("pred", metavar="PRED", help="predicted label map, or a folder of them")
    parser.add_argument("gt", metavar="GT", help="ground-truth label map, or a folder of them")
    parser.add_argument("--labels", nargs="+", metavar="VALUE[=NAME]",
                        help="label values to score, optionally named (default: the npz prompts, else every "
                             "label present in the ground truth)")
    parser.add_argument("--instance", action="store_true",
                        help="score every case as an instance task (F1, DSC-TP); by default only challenge npz "
                             "cases whose prompts say instance_label 1")
    parser.add_argument("--npz-spacing", choices=NPZ_SPACING_ORDERS, default="official",
                        help="challenge npz: apply the stored spacing to the array axes in stored order, as the "
                             "official evaluation does (official, default), or give each axis its own spacing "
                             "(physical)")
    parser.add_argument("--images", metavar="FOLDER",
                        help="the cases' challenge image npz files (same names): spacing and prompts are read "
                             "from them, as the official evaluation does")
    parser.add_argument("-o", "--output", default="metrics.csv",
                        help="CSV of label (semantic) and case (instance) scores (default: metrics.csv)")
    parser.add_argument("--case-output", metavar="CSV",
                        help="also write one row per case: DSC, NSD, F1, DSC-TP (the official table's columns)")
    parser.set_defaults(func=run_evaluate)
