"""`medals evaluate PRED GT`: score segmentations against ground truths with the challenge metrics.

PRED and GT are two label-map files, or two folders whose files are paired by case name (the file name without
its extension, so `case1.nii.gz` pairs with `case1.nrrd`). Each pair must share a voxel grid. Semantic mode writes
one CSV row per (case, label) with DSC and NSD at 2 mm and prints per-label means; `--instance` scores instance
tasks (6-connected components of the prediction) with F1 and DSC-TP, one row per case.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import Volume, case_name, list_volume_files, read_labels
from ..metrics import NSD_TOLERANCE_MM, instance_scores, semantic_scores, split_instances

SEMANTIC_COLUMNS = ("case", "label", "name", "dsc", "nsd")
INSTANCE_COLUMNS = ("case", "tp", "fp", "fn", "f1", "dsc_tp")


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


def check_same_grid(pred: Volume, gt: Volume) -> None:
    """Raise InputError unless both label maps lie on the same voxel grid, saying what differs."""
    if pred.shape != gt.shape:
        raise InputError(f"{pred.source}: shape {pred.shape} differs from the ground truth's {gt.shape} "
                         f"({gt.source})")
    if not pred.same_grid(gt):
        raise InputError(f"{pred.source}: geometry differs from the ground truth {gt.source} (spacing "
                         f"{_rounded(pred.spacing)} vs {_rounded(gt.spacing)} mm, origin {_rounded(pred.origin)} vs "
                         f"{_rounded(gt.origin)})")
    if min(gt.spacing) <= 0:
        raise InputError(f"{gt.source}: spacing {_rounded(gt.spacing)} mm must be positive to measure distances")


def _rounded(values) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


def label_names(labels: dict[int, str] | None, gt: Volume, pred: Volume) -> dict[int, str]:
    """Labels to score with their names: --labels, else the prompts of a challenge npz, else those in GT."""
    if labels is not None:
        return labels
    prompts = gt.extras.get("text_prompts") or pred.extras.get("text_prompts") or {}
    prompted = {int(k): str(v) for k, v in prompts.items() if k != "instance_label" and str(k).isdigit()}
    if prompted:
        return prompted
    return {int(v): "" for v in np.unique(gt.array) if v != 0}


def evaluate_semantic(cases, labels) -> list[dict]:
    rows = []
    for name, pred_path, gt_path in cases:
        gt, pred = read_labels(gt_path), read_labels(pred_path)
        check_same_grid(pred, gt)
        names = label_names(labels, gt, pred)
        scores = semantic_scores(gt.array, pred.array, gt.spacing, names, NSD_TOLERANCE_MM)
        rows.extend({"case": name, "label": value, "name": names[value], **scores[value]} for value in scores)
    return rows


def evaluate_instances(cases) -> list[dict]:
    rows = []
    for name, pred_path, gt_path in cases:
        gt, pred = read_labels(gt_path), read_labels(pred_path)
        check_same_grid(pred, gt)
        # A ground truth with several values is an instance map already; a binary one is split like the prediction.
        gt_instances = gt.array if len(np.unique(gt.array[gt.array > 0])) > 1 else split_instances(gt.array > 0)
        scores = instance_scores(gt_instances, split_instances(pred.array > 0))
        rows.append({"case": name, "tp": scores.tp, "fp": scores.fp, "fn": scores.fn, "f1": scores.f1,
                     "dsc_tp": scores.dsc_tp})
    return rows


def write_csv(rows: list[dict], columns: tuple[str, ...], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def print_semantic_summary(rows: list[dict]) -> None:
    print(f"{'label':>5}  {'name':<28} {'cases':>5}  {'DSC':>7}  {'NSD':>7}")
    for value in sorted({row["label"] for row in rows}):
        mine = [row for row in rows if row["label"] == value]
        print(f"{value:>5}  {mine[0]['name'][:28]:<28} {len(mine):>5}  {_nanmean(r['dsc'] for r in mine):>7.4f}  "
              f"{_nanmean(r['nsd'] for r in mine):>7.4f}")
    cases = sorted({row["case"] for row in rows})
    case_dsc = [_nanmean(r["dsc"] for r in rows if r["case"] == c) for c in cases]
    case_nsd = [_nanmean(r["nsd"] for r in rows if r["case"] == c) for c in cases]
    print(f"mean over {len(cases)} case(s): DSC {_nanmean(case_dsc):.4f}  NSD {_nanmean(case_nsd):.4f}")


def run_evaluate(args) -> int:
    cases = pair_cases(Path(args.pred), Path(args.gt))
    output = Path(args.output)
    if args.instance:
        rows = evaluate_instances(cases)
        write_csv(rows, INSTANCE_COLUMNS, output)
        print(f"instance scores over {len(rows)} case(s): F1 {_nanmean(r['f1'] for r in rows):.4f}  "
              f"DSC-TP {_nanmean(r['dsc_tp'] for r in rows):.4f}")
    else:
        rows = evaluate_semantic(cases, parse_labels(args.labels))
        write_csv(rows, SEMANTIC_COLUMNS, output)
        if rows:
            print_semantic_summary(rows)
        else:
            print("no prompted label is present in the ground truth: nothing scored")
    print(f"wrote {output}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score predictions against ground truths (DSC, NSD; or instance F1, DSC-TP)",
        description="Score label maps with the CVPR 2025 BiomedSegFM metrics. PRED and GT are files or folders "
                    "(files paired by name without extension); any supported format.")
    parser.add_argument("pred", metavar="PRED", help="predicted label map, or a folder of them")
    parser.add_argument("gt", metavar="GT", help="ground-truth label map, or a folder of them")
    parser.add_argument("--labels", nargs="+", metavar="VALUE[=NAME]",
                        help="label values to score, optionally named (default: the npz prompts, else every "
                             "label present in the ground truth)")
    parser.add_argument("--instance", action="store_true",
                        help="instance task: F1 and DSC-TP over 6-connected components")
    parser.add_argument("-o", "--output", default="metrics.csv", help="CSV to write (default: metrics.csv)")
    parser.set_defaults(func=run_evaluate)
