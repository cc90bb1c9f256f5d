"""The demo training set recipe on the real packaged data (mricron-data, invesalius-examples; see
scripts/install_data.sh): labels derived as the model card says."""
import importlib.util
import plistlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medals.train.dataset import load_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prepare_demo_data.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("prepare_demo_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def colin(recipe):
    return recipe.colin27_parcellation()


def test_parcel_values_cover_tissue_side_and_region_once_each(recipe):
    values = recipe.parcel_values()
    assert values == list(range(1, 37))
    assert recipe.parcel_value(2, 1, 5) == 36


def test_colin27_tissue_classes_follow_t1_intensity(recipe, colin):
    labels, facts = colin
    t1 = sitk.GetArrayFromImage(sitk.ReadImage(str(recipe.MRICRON / "ch2.nii.gz"))).astype(np.float32)
    tissue = (labels.astype(int) - 1) % 3
    means = [t1[(labels > 0) & (tissue == t)].mean() for t in range(3)]
    assert means[0] < means[1] < means[2]  # CSF < gray < white matter on T1
    low, high = facts["otsu_thresholds"]
    assert 0 < low < high < 255


def test_colin27_left_hemisphere_is_the_subjects_left(recipe, colin):
    labels, facts = colin
    assert facts["aal_left_regions_at_lps_x_gt_0"] > 0.95
    side = ((labels.astype(int) - 1) // 3) % 2
    x = recipe.lps_x(sitk.ReadImage(str(recipe.MRICRON / "aal.nii.gz")))
    assert (x[(labels > 0) & (side == 0)] > 0).all() and (x[(labels > 0) & (side == 1)] <= 0).all()


def test_head_ct_thresholds_reproduce_the_masks_the_project_stores(recipe):
    hu, spacing = recipe.read_invesalius_ct()
    labels, _ = recipe.head_ct_labels(hu, spacing)
    with tarfile.open(recipe.INVESALIUS) as archive:
        members = {Path(m.name).name: m for m in archive.getmembers()}
        bone_plist = plistlib.load(archive.extractfile(members["mask_0.plist"]))
        stored = np.frombuffer(archive.extractfile(members["mask_0.dat"]).read(), np.uint8)
    assert bone_plist["threshold_range"][0] == recipe.BONE_HU
    stored_bone = stored.reshape(bone_plist["mask_shape"])[1:, 1:, 1:] > 0  # first plane of each axis: flags
    assert np.array_equal(stored_bone, hu >= recipe.BONE_HU)
    assert np.all(stored_bone[labels == 2])  # labelled bone is thresholded bone (inside the head)


def test_the_written_training_set_loads(recipe, tmp_path):
    recipe.build_training_set(tmp_path)
    dataset = load_dataset(tmp_path)
    assert [case.name for case in dataset.cases] == ["colin27_t1", "colin27_t1_stripped", "head_ct"]
    colin = dataset.cases[0]
    names = [s.name for s in colin.prompt_set.structures]
    masks = colin.structure_masks(colin.labels)
    brain, gray, white = (masks[names.index(n)] for n in ("brain", "gray matter", "white matter"))
    assert not (gray & ~brain).any() and not (white & ~brain).any() and not (gray & white).any()
    assert colin.present == list(range(len(names)))
