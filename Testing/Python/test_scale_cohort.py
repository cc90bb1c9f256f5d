"""Cohorts with torchrun: `torchrun --nproc_per_node 2 -m medals.cli segment FOLDER` on real brain MRIs.

The folder holds the bundled MNI152 sample and two real T1 scans from the Debian data packages (Colin27 from
mricron-data, the ITK k-means test brain from insighttoolkit5-examples; installed by `make setup`), plus a
truncated file. The shipped demo model segments gray and white matter in each (coarse stage: minutes on a busy
CPU otherwise). Two gloo processes must give the labels of one process bit for bit and the same report, each
image segmented by exactly one rank, the broken one reported without stopping the others. Every run uses one
CPU thread per process, as torchrun sets, so the two runs do the same arithmetic.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medals.cli import main
from medals.cohort import assign
from medals.demo import DEMO_MODEL, SAMPLES
from medals.io import Volume, read_volume, write_volume
from medals.weights.testing import make_tiny_model

REAL_IMAGES = (SAMPLES / "mni152_t1.nii.gz", Path("/usr/share/mricron/templates/ch2bet.nii.gz"),
               Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz"))
BROKEN = "truncated.nii.gz"
SEGMENT = ["segment", "-p", "gray matter", "-p", "white matter", "--modality", "mri", "--model", str(DEMO_MODEL),
           "--device", "cpu", "--stages", "coarse", "-q"]


def test_cases_go_largest_first_to_the_least_loaded_rank():
    assert assign([5, 9, 1, 4, 3], 2) == [1, 0, 1, 1, 0]  # 9 → 0, 5 → 1, 4 → 1, 3 → 0 (a tie), 1 → 1
    assert assign([None, 7, None], 3) == [None, 0, None]  # finished cases are nobody's
    assert assign([2, 2, 2, 2], 2) == [0, 1, 0, 1]


def test_every_case_has_exactly_one_rank_and_the_loads_stay_even():
    sizes = list(np.random.default_rng(0).integers(1, 1000, 200))
    owners = assign(sizes, 4)
    loads = [sum(size for size, owner in zip(sizes, owners) if owner == rank) for rank in range(4)]
    assert set(owners) == {0, 1, 2, 3} and max(loads) - min(loads) <= max(sizes)


def medals(*args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    """`medals ARGS` in one process, or under torchrun with `ranks` gloo processes on this machine."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else []
    return subprocess.run([sys.executable, *launcher, "-m", "medals.cli", *args], capture_output=True, text=True,
                          encoding="utf-8", env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=1200)


def comparable(report: list[dict], output: Path) -> list[dict]:
    """Report entries without their run times, output paths relative to their folder."""
    return [{key: str(value).replace(str(output), "OUT") if key in ("labels", "error") else value
             for key, value in entry.items() if key != "seconds"} for entry in report]


def segmented_by_rank(stdout: str) -> dict[str, list[int]]:
    """Image name → the ranks that reported an outcome for it ("rank R: IMAGE → LABELS ..." or ": failed: ...")."""
    ranks: dict[str, list[int]] = {}
    for rank, image in re.findall(r"^rank (\d+): (\S+?)(?: →|: failed:)", stdout, re.MULTILINE):
        ranks.setdefault(Path(image).name, []).append(int(rank))
    return ranks


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    images = folder / "images"
    images.mkdir()
    for path in REAL_IMAGES:
        shutil.copyfile(path, images / path.name)
    (images / BROKEN).write_bytes(REAL_IMAGES[0].read_bytes()[:3000])
    single = medals(*SEGMENT, str(images), "-o", str(folder / "single"))
    spread = medals(*SEGMENT, str(images), "-o", str(folder / "ranks"), ranks=2)
    return folder, single, spread


@pytest.mark.slow
def test_two_ranks_write_the_labels_and_report_of_one_process(cohort):
    folder, single, spread = cohort
    assert single.returncode == 1 and BROKEN in single.stderr  # one image failed: said so, the others done
    assert spread.returncode != 0, spread.stdout[-2000:] + spread.stderr[-3000:]
    one = json.loads((folder / "single" / "report.json").read_text())
    two = json.loads((folder / "ranks" / "report.json").read_text())
    assert comparable(two, folder / "ranks") == comparable(one, folder / "single")
    assert [Path(entry["image"]).name for entry in two] == sorted(p.name for p in (*REAL_IMAGES, Path(BROKEN)))
    assert "error" in two[[Path(entry["image"]).name for entry in two].index(BROKEN)]
    for path in REAL_IMAGES:
        alone, shared = (read_volume(folder / out / path.name) for out in ("single", "ranks"))
        assert shared.same_grid(alone) and shared.array.dtype == alone.array.dtype
        np.testing.assert_array_equal(shared.array, alone.array)
        assert set(np.unique(shared.array)) == {0, 1, 2}  # both tissues found: real output, not an empty map


@pytest.mark.slow
def test_each_image_is_segmented_by_exactly_one_rank_and_both_ranks_work(cohort):
    folder, single, spread = cohort
    ranks = segmented_by_rank(spread.stdout)
    assert sorted(ranks) == sorted(p.name for p in (*REAL_IMAGES, Path(BROKEN)))
    assert all(len(owners) == 1 for owners in ranks.values()), ranks
    assert {owners[0] for owners in ranks.values()} == {0, 1}


@pytest.mark.slow
def test_resume_segments_only_the_missing_images_and_keeps_the_report(cohort):
    folder, single, spread = cohort
    missing = REAL_IMAGES[2].name
    (folder / "ranks" / missing).unlink()
    resumed = medals(*SEGMENT, str(folder / "images"), "-o", str(folder / "ranks"), "--resume", ranks=2)
    assert sorted(segmented_by_rank(resumed.stdout)) == sorted([missing, BROKEN])  # the failed one is retried
    one = json.loads((folder / "single" / "report.json").read_text())
    again = json.loads((folder / "ranks" / "report.json").read_text())
    assert comparable(again, folder / "ranks") == comparable(one, folder / "single")
    np.testing.assert_array_equal(read_volume(folder / "ranks" / missing).array,
                                  read_volume(folder / "single" / missing).array)


def test_resume_in_one_process_keeps_finished_outputs_and_their_report_entries(tmp_path):
    """The same --resume without torchrun, quickly: the tiny model on two small images."""
    model = make_tiny_model(tmp_path / "tiny")
    images = tmp_path / "images"
    for seed, name in enumerate(("a.nii.gz", "b.nii.gz")):
        array = np.random.default_rng(seed).integers(0, 255, (12, 24, 24)).astype(np.uint8)
        write_volume(Volume(array, (2.0, 1.5, 1.5)), images / name)
    command = ["segment", str(images), "-p", "brain", "--modality", "mri", "--model", str(model), "--device", "cpu",
               "-q", "-o", str(tmp_path / "out")]
    assert main(command) == 0
    first = json.loads((tmp_path / "out" / "report.json").read_text())
    kept = (tmp_path / "out" / "a.nii.gz").stat().st_mtime_ns
    (tmp_path / "out" / "b.nii.gz").unlink()
    assert main([*command, "--resume"]) == 0
    again = json.loads((tmp_path / "out" / "report.json").read_text())
    assert again[0] == first[0] and (tmp_path / "out" / "a.nii.gz").stat().st_mtime_ns == kept
    assert comparable(again[1:], tmp_path / "out") == comparable(first[1:], tmp_path / "out")
    (tmp_path / "out" / "report.json").unlink()  # without the earlier report, a skipped image is still listed
    assert main([*command, "--resume"]) == 0
    skipped = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [entry.get("skipped") for entry in skipped] == ["its output exists"] * 2
    assert [Path(entry["image"]).name for entry in skipped] == ["a.nii.gz", "b.nii.gz"]
