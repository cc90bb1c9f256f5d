"""Modality: explicit names and aliases, whole-word prompt keywords, Hounsfield-like images, the default."""
from __future__ import annotations

import numpy as np
import pytest

from medals.config import MODALITIES
from medals.errors import InputError
from medals.modality import detect_modality, modality_code, modality_of_prompt


@pytest.mark.parametrize("alias, name", [("CT", "ct"), ("MR", "mri"), ("mri", "mri"), ("Ultrasound", "us"),
                                         ("PET", "pet"), ("electron-microscopy", "microscopy"), (" em ", "microscopy")])
def test_explicit_aliases(alias, name):
    assert detect_modality(["liver in CT"], explicit=alias) == name


def test_explicit_overrides_prompt_keywords():
    assert detect_modality(["liver in CT"], explicit="mri") == "mri"


def test_unknown_explicit_name_lists_the_valid_ones():
    with pytest.raises(InputError) as caught:
        detect_modality([], explicit="xray")
    assert "xray" in str(caught.value) and all(name in str(caught.value) for name in MODALITIES)


@pytest.mark.parametrize("prompt, name", [
    ("Liver in abdominal CT", "ct"),
    ("liver in ct", "ct"),
    ("Brain tumor in T1-weighted MRI", "mri"),
    ("Prostate in MR", "mri"),
    ("Stroke lesion on DWI", "mri"),
    ("Kidney in ultrasound", "us"),
    ("Thyroid nodule in US images", "us"),
    ("Lesion in PET/CT", "pet"),  # the official priority: PET before CT
    ("Mitochondria in EM", "microscopy"),
    ("Nuclei in light-sheet microscopy", "microscopy"),
])
def test_prompt_keywords(prompt, name):
    assert modality_of_prompt(prompt) == name


@pytest.mark.parametrize("prompt", ["USB-connected device", "THUS the liver", "Liver in SYSTEM scan",
                                    "the ACT of segmentation", "show us the spleen", "my pet's heart",
                                    "MRSA abscess", "Liver"])
def test_keywords_inside_other_words_or_in_other_case_do_not_fire(prompt):
    assert modality_of_prompt(prompt) is None


def test_pelvic_does_not_mean_mri():
    assert modality_of_prompt("pelvic bones in CT") == "ct"


def test_most_frequent_prompt_modality_wins():
    assert detect_modality(["liver in CT", "kidney in MRI", "spleen in CT"]) == "ct"


def test_ties_go_to_the_earlier_prompt():
    assert detect_modality(["kidney in MRI", "liver in CT"]) == "mri"


def test_prompts_without_keywords_fall_back_to_hounsfield_like_images():
    ct = np.full((10, 10, 10), 40, np.int16)
    ct[0] = -1024  # air / padding
    assert detect_modality(["liver"], image=ct) == "ct"


def test_non_negative_images_without_keywords_default_to_mri():
    assert detect_modality(["liver"], image=np.random.default_rng(0).random((5, 5, 5))) == "mri"
    assert detect_modality([]) == "mri"


def test_a_few_negative_outliers_do_not_make_a_ct():
    image = np.full((20, 20, 20), 100.0)
    image[0, 0, 0] = -1000  # 1 voxel in 8000 is below the 0.1 % threshold
    assert detect_modality(["liver"], image=image) == "mri"


def test_never_raises_on_odd_prompts_or_images():
    assert detect_modality([None, "", 3], image=np.array([], np.float32)) == "mri"


def test_modality_codes_follow_the_official_table_order():
    assert [modality_code(name) for name in ("CT", "MR", "ultrasound", "PET", "microscopy")] == [0, 1, 2, 3, 4]
