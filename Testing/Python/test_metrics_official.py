"""`medals evaluate` against the challenge's official evaluation code, on the cases of Testing/Data/evaluate.

The expected values were computed once by the official code (CVPR25_text_eval.py, SurfaceDice.py) outside the
repository; Testing/Data/evaluate/README.md says how.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from medals.cli import main

CASES = Path(__file__).resolve().parents[1] / "Data" / "evaluate"
EXPECTED = json.loads((CASES / "expected.json").read_text())
METRICS = ("dsc", "nsd", "f1", "dsc_tp")
TOLERANCE = 1e-6


def case_scores(tmp_path, *options, gt=CASES / "gt") -> dict[str, dict[str, float]]:
    """Run `medals evaluate` on the case folders; {case: {metric: value}} from its per-case table."""
    table = tmp_path / "cases.csv"
    code = main(["evaluate", str(CASES / "pred"), str(gt), "-o", str(tmp_path / "metrics.csv"),
                 "--case-output", str(table), *options])
    assert code == 0
    with open(table, newline="") as stream:
        return {row["case"]: {m: float(row[m]) for m in METRICS} for row in csv.DictReader(stream)}


def assert_matches(scores: dict, expected: dict) -> None:
    assert sorted(scores) == sorted(expected)
    for case, values in expected.items():
        for metric in METRICS:
            wanted, got = values[metric], scores[case][metric]
            if wanted is None:
                assert math.isnan(got), f"{case} {metric}: {got}, official NaN"
            else:
                assert abs(got - wanted) <= TOLERANCE, f"{case} {metric}: {got}, official {wanted}"


def test_every_case_matches_the_official_evaluation(tmp_path):
    assert_matches(case_scores(tmp_path), EXPECTED["official"])


def test_physical_spacing_matches_the_official_code_given_each_axis_its_spacing(tmp_path):
    assert_matches(case_scores(tmp_path, "--npz-spacing", "physical"), EXPECTED["physical"])


def test_the_spacing_order_changes_anisotropic_scores():
    # The comparison above could not tell the conventions apart if the cases did not.
    official, physical = EXPECTED["official"], EXPECTED["physical"]
    assert official["single_voxels_slices_apart"]["nsd"] == 1.0 and physical["single_voxels_slices_apart"]["nsd"] == 0.0
    assert abs(official["anisotropic_organs"]["nsd"] - physical["anisotropic_organs"]["nsd"]) > 0.01


def test_cases_include_predictions_without_spacing_or_with_a_wrong_one():
    # The premise of the comparison for predictions: their own spacing never counts, the case's does.
    def spacing(sub, case):
        with np.load(CASES / sub / f"{case}.npz") as arrays:
            return arrays["spacing"] if "spacing" in arrays.files else None
    assert spacing("pred", "single_voxels") is None and spacing("pred", "sparse_label_values") is None
    assert not np.array_equal(spacing("pred", "anisotropic_organs"), spacing("gt", "anisotropic_organs"))


def test_spacing_and_prompts_from_the_case_images(tmp_path):
    # As the official evaluation reads them: ground truths holding only `gts`, images holding spacing and prompts.
    for sub in ("gt", "images"):
        (tmp_path / sub).mkdir()
    for path in sorted((CASES / "gt").glob("*.npz")):
        with np.load(path, allow_pickle=True) as case:
            np.savez_compressed(tmp_path / "gt" / path.name, gts=case["gts"])
            np.savez_compressed(tmp_path / "images" / path.name, imgs=np.zeros_like(case["gts"]),
                                spacing=case["spacing"], text_prompts=case["text_prompts"])
    assert_matches(case_scores(tmp_path, "--images", str(tmp_path / "images"), gt=tmp_path / "gt"),
                   EXPECTED["official"])
