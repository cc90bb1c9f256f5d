"""`medals bench prompts` on a small window: every row measured, the summary's last line as documented."""
from __future__ import annotations

import re

import pytest

from medals.cli import main


@pytest.mark.slow  # about a minute: 21 official-width forwards in 4 child processes
def test_bench_prompts_reports_each_mode_and_class_count_and_ends_with_the_ratio(capsys):
    assert main(["bench", "prompts", "--crop", "32", "32", "32", "--classes", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line.split() for line in lines if line.startswith(("unprompted ", "prompted "))]
    assert [(row[0], row[1]) for row in rows] == [("unprompted", "2"), ("prompted", "2")]
    assert all(float(row[2]) > 0 and float(row[3]) > 0 and float(row[5]) > 0 for row in rows)
    assert re.fullmatch(r"2 classes: \d+\.\dx", lines[-1])


@pytest.mark.slow  # about a minute: two full passes and a refinement of the demo sample
def test_bench_refine_reports_each_run_and_ends_with_the_refine_to_full_ratio(capsys):
    assert main(["bench", "refine", "--cases", "demo", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line[6:18].strip(): line[18:].split() for line in lines if line.startswith("demo  ")}
    assert set(rows) == {"full", "whole fine", "refine"}
    assert int(rows["refine"][1]) <= 2 < int(rows["whole fine"][1])
    assert all(float(row[0]) > 0 and float(row[2]) > 0 for row in rows.values())
    agreement = re.search(r"edited structure's Dice against the whole fine pass (\d\.\d+)$", lines[-2])
    assert agreement and float(agreement.group(1)) >= 0.99 and "NOT REFINED" not in lines[-2]
    ratio = re.fullmatch(r"refine/full: (\d+\.\d+)x", lines[-1])
    assert ratio and float(ratio.group(1)) <= 0.1
