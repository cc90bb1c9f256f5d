"""`medals bench gpu`: the GPU readiness check, run here in its quick CPU form (the CUDA form is the same code at
official sizes), and the pieces that decide its verdicts."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from medals.bench import gpu_windows
from medals.bench.gpu_parity import precision, precisions
from medals.bench.gpu_windows import SimulatedMemoryLimit, largest_batch, measure_out_of_memory
from medals.cli import main
from medals.device import cpu_computes_bf16
from medals.errors import OutOfMemory
from medals.pipeline import sliding_window
from medals.weights.testing import TINY_PLAN


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, parity_fixtures):
    """(exit status, printed lines, JSON report) of the command as CI runs it."""
    output = tmp_path_factory.mktemp("gpu") / "gpu-check.json"
    completed = subprocess.run([sys.executable, "-m", "medals.cli", "bench", "gpu", "--device", "cpu", "--quick",
                                "--parity-dir", str(parity_fixtures.folder), "-o", str(output)],
                               capture_output=True, text=True, encoding="utf-8")
    return completed.returncode, completed.stdout.splitlines(), json.loads(output.read_text())


@pytest.mark.slow  # about a minute on two cores: every part in its own child process
def test_quick_check_prints_one_table_row_per_result_and_passes(quick_run):
    status, lines, report = quick_run
    assert status == 0 and report["passed"] and report["quick"] and report["memory_simulated"]
    rows = [line for line in lines if re.match(r"\([a-e]\) ", line)]
    assert len(rows) == len(report["rows"])
    assert {row["section"] for row in report["rows"]} == set("abcde")
    assert not [row for row in report["rows"] if row["status"] not in ("pass", "info")]
    assert lines[-1].startswith("passed in ") and set(report["sections"]) == {"parity", "forward", "two-stage",
                                                                               "memory", "demo"}


@pytest.mark.slow
def test_quick_check_reports_parity_in_float32_within_tolerance_and_autocast_differences(quick_run):
    rows = quick_run[2]["sections"]["parity"]["data"]["rows"]
    measured = {row["precision"] for row in rows}
    assert measured == set(precisions(torch.device("cpu"))) and "fp16" not in measured
    float32 = [row for row in rows if row["precision"] == "float32"]
    assert float32 and all(row["passed"] and row["logit_diff"] <= row["tolerance"] for row in float32)
    # Autocast changes the numbers (it is measured, not assumed away).
    assert all(not row["logit_diff"] <= float32[0]["logit_diff"] for row in rows if row["precision"] != "float32")


@pytest.mark.slow
def test_quick_check_times_each_window_at_batch_one_and_at_the_largest_batch_that_fits(quick_run):
    windows = quick_run[2]["sections"]["forward"]["data"]["windows"]
    assert [(w["stage"], w["classes"], w["prompted"]) for w in windows] == [("coarse", 2, False),
                                                                            ("coarse", 24, False), ("fine", 24, True)]
    for window in windows:
        assert window["batch_1"]["seconds"] > 0 and window["batch_1"]["peak_mb"] > 0
        assert window["largest"]["batch"] == 2  # the simulated device holds 2.5 windows beside the network


@pytest.mark.slow
def test_quick_check_runs_a_24_class_two_stage_request_and_the_out_of_memory_path(quick_run):
    sections = quick_run[2]["sections"]
    two_stage = sections["two-stage"]["data"]
    assert two_stage["seconds"] > 0 and set(two_stage["stages"]) == {"coarse", "fine"}
    assert all(stage["windows"] >= 1 for stage in two_stage["stages"].values())
    memory = sections["memory"]["data"]
    assert memory["simulated"] and memory["error"] == "OutOfMemory" and "window_batch" in memory["message"]
    assert memory["repeat_difference"] == 0.0 and memory["passed"]


@pytest.mark.slow
def test_quick_check_gives_the_demo_models_cpu_labels(quick_run):
    demo = quick_run[2]["sections"]["demo"]["data"]
    assert demo["labelled_voxels"] > 1000 and demo["differing_voxels"] == 0 and demo["passed"]


def test_absent_fixtures_are_reported_with_where_to_point_the_check(tmp_path, capsys):
    output = tmp_path / "report.json"
    assert main(["bench", "gpu", "--device", "cpu", "--quick", "--only", "parity", "--parity-dir", str(tmp_path),
                 "-o", str(output)]) == 0
    row = json.loads(output.read_text())["rows"][0]
    assert row["status"] == "absent" and str(tmp_path) in row["value"] and "--parity-dir" in row["value"]
    assert "MEDALS_PARITY_DIR" in capsys.readouterr().out


def test_official_sizes_are_refused_on_the_cpu_before_anything_runs(tmp_path, capsys):
    output = tmp_path / "report.json"
    assert main(["bench", "gpu", "--device", "cpu", "-o", str(output)]) == 2
    assert "--quick" in capsys.readouterr().err and not output.exists()


def test_largest_batch_uses_the_memory_beside_the_network():
    assert largest_batch(available_mb=10_000, baseline_mb=1_000, window_mb=800) == 10  # 0.9 × 9000 / 800
    assert largest_batch(available_mb=1_500, baseline_mb=1_000, window_mb=800) == 1


def test_simulated_limit_raises_the_allocators_error_only_past_the_limit():
    net = SimulatedMemoryLimit(lambda queries, image, *prompts: image.sum(), window_mb=100, limit_mb=250)
    assert float(net(None, torch.ones(2, 1, 2, 2, 2))) == 16
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        net(None, torch.ones(3, 1, 2, 2, 2))


def test_precision_overrides_the_engines_autocast_and_restores_tf32():
    device, a = torch.device("cpu"), torch.ones(4, 4)
    before = torch.backends.cudnn.allow_tf32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with precision(device, "float32"):
            assert (a @ a).dtype == torch.float32
        with precision(device, "fp16"):
            assert (a @ a).dtype == torch.float16
    assert torch.backends.cudnn.allow_tf32 == before
    assert precisions(device) == (("float32", "bf16") if cpu_computes_bf16() else ("float32",))  # the engine's


def _out_of_memory_spec():
    return {"device": "cpu", "plan": TINY_PLAN.to_dict(), "crop": [32, 32, 32], "classes": 2}


def _fixed_window_cost(monkeypatch):
    # The test process's peak resident set cannot be reset (a child's can): give each window a fixed cost.
    monkeypatch.setattr(gpu_windows, "peak_memory_mb", lambda device: gpu_windows.current_memory_mb(device) + 50)


def test_out_of_memory_check_passes_when_the_engine_reports_out_of_memory(monkeypatch):
    _fixed_window_cost(monkeypatch)
    outcome = measure_out_of_memory(_out_of_memory_spec())
    assert outcome["error"] == "OutOfMemory" and outcome["passed"] and outcome["windows"] > 2


def test_out_of_memory_check_fails_when_the_allocators_error_escapes(monkeypatch):
    _fixed_window_cost(monkeypatch)
    engine = sliding_window.stage_probabilities

    def leaky(*args, **kwargs):  # an engine that forgot to turn the allocator's error into OutOfMemory
        try:
            return engine(*args, **kwargs)
        except OutOfMemory:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB") from None

    monkeypatch.setattr(sliding_window, "stage_probabilities", leaky)
    outcome = measure_out_of_memory(_out_of_memory_spec())
    assert outcome["error"] == "torch.OutOfMemoryError" and not outcome["passed"]
