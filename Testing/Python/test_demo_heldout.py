"""The shipped demo model on held-out brains it never saw (MNI152 from nilearn, the ITK T1 from Debian): the
model card's numbers, recomputed from the real images by the scripts that produced them."""
import importlib.util
import math
from pathlib import Path

import pytest

from medals.demo import DEMO_MODEL
from medals.weights import load_model

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    heldout = tmp_path_factory.mktemp("heldout")
    _script("prepare_demo_data").build_heldout_set(heldout)
    rows = _script("evaluate_heldout").evaluate(load_model(DEMO_MODEL), heldout)
    return {(row["task"].split("_")[0], row["structure"]): row for row in rows}


def test_every_structure_of_every_check_is_scored(scores):
    assert {case for case, _ in scores} == {"mni152", "itk"}
    assert all(math.isfinite(row["dsc"]) and math.isfinite(row["nsd"]) for row in scores.values())


@pytest.mark.parametrize("structure", ["brain", "gray matter", "white matter", "cerebellum"])
def test_held_out_mni152_dice_reaches_080(scores, structure):
    assert scores["mni152", structure]["dsc"] >= 0.80
