"""The parity tests take every constant from the fixture files.

They run unchanged (`pytest -k parity`, in a child process with MEDALS_PARITY_DIR) on a second fixture set whose
weight seeds, prompts, label values, shapes, spacings and crops all differ from the recorded set's
(`parity_sets.derive_fixture_set`), and they fail when a seed in a fixture's metadata no longer matches its arrays.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, load_fixture
from parity_sets import DERIVED_NETS, DERIVED_PIPELINE, derive_fixture_set

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def derived(tmp_path_factory, parity):
    return derive_fixture_set(parity, tmp_path_factory.mktemp("derived-parity"))


def run_parity_tests(folder: Path, *selection: str) -> subprocess.CompletedProcess:
    """`pytest -k parity` (or `selection`) on the fixture set in `folder`, in a child process."""
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", f"--ignore={Path(__file__)}",
               *(selection or ("-k", "parity")), str(TESTS)]
    return subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "MEDALS_PARITY_DIR": str(folder)},
                          capture_output=True, text=True, encoding="utf-8", timeout=1200)


def test_the_derived_set_differs_in_every_constant_the_tests_read(derived, parity):
    recorded, other = (load_fixture(folder, "text")[0] for folder in (parity, derived))
    assert other["weights_seed"] != recorded["weights_seed"] and other["prompts"] != recorded["prompts"]
    recorded, other = load_fixture(parity, "pipeline_small")[0], load_fixture(derived, DERIVED_PIPELINE["name"])[0]
    for key in ("text_seed", "stage_seeds", "prompts", "stages", "repaired_spacing", "stage1", "stage2"):
        assert other[key] != recorded[key], key
    assert other["case"]["shape"] != recorded["case"]["shape"]
    assert set(other["prompts"]).isdisjoint(recorded["prompts"])  # other label values
    recorded_nets = {json.loads(path.read_text())["weights_seed"] for path in parity.glob("net_*.json")}
    recorded_sizes = [json.loads(path.read_text())["image_size"] for path in parity.glob("net_*.json")]
    for spec in DERIVED_NETS.values():
        assert spec["weights_seed"] not in recorded_nets and spec["image_size"] not in recorded_sizes


def test_parity_tests_pass_unchanged_on_the_derived_set(derived):
    run = run_parity_tests(derived)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    for case in (*DERIVED_NETS, DERIVED_PIPELINE["name"]):
        assert f"[{case}] PASSED" in run.stdout, case
    assert "test_text_parity_pooled_features PASSED" in run.stdout
    assert "SKIPPED" not in run.stdout and "pipeline_small" not in run.stdout


def test_a_seed_that_no_longer_matches_the_arrays_fails_the_parity_tests(derived, tmp_path):
    """Edit only the JSON (the network case's weight seed, the text fixture's seed): the tests that read them fail."""
    edited = shutil.copytree(derived, tmp_path / "edited")
    net_case = next(iter(DERIVED_NETS))
    for name in (net_case, "text"):
        meta = json.loads((edited / f"{name}.json").read_text())
        meta["weights_seed"] += 1
        (edited / f"{name}.json").write_text(json.dumps(meta))
    run = run_parity_tests(edited, "-k", f"(logits and {net_case}) or pooled_features")
    assert run.returncode == 1, run.stdout[-4000:]
    assert f"test_parity_logits_with_all_prompt_forms[{net_case}] FAILED" in run.stdout
    assert "test_text_parity_pooled_features FAILED" in run.stdout
