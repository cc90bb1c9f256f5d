"""The shipped vocabulary: lookup, suggestions, completion, colours, and the data file's own consistency."""
from __future__ import annotations

import json
import re

import pytest

from medals import vocabulary
from medals.vocabulary import VOCABULARY_PATH, Vocabulary, hashed_color, normalize, singular

DEMO_BRAIN_STRUCTURES = ["brain", "white matter", "gray matter", "cerebellum", "cerebrospinal fluid", "ventricles",
                         "left cerebral hemisphere", "right cerebral hemisphere", "thalamus", "caudate", "putamen",
                         "hippocampus", "skull", "bone", "head", "skin"]


@pytest.mark.parametrize("text, name", [
    ("Liver", "liver"), ("  LEFT   kidney ", "left kidney"), ("kidney, left", "left kidney"),
    ("Kidneys", "kidney"), ("vertebrae", "vertebra"), ("Lung nodules", "lung nodule"), ("masses", "mass"),
    ("hippocampi", "hippocampus"), ("CSF", "cerebrospinal fluid"), ("grey matter", "gray matter"),
    ("Liver in abdominal CT", "liver"), ("Ground-glass opacity", "lung infection"),
])
def test_lookup_tolerates_case_spacing_punctuation_and_plurals(text, name):
    assert vocabulary.lookup(text).name == name


def test_lookup_of_unknown_text_is_none():
    assert vocabulary.lookup("flux capacitor") is None


def test_exact_names_win_over_plural_folding():
    # "ventricles" (the brain's ventricular system) is its own entry, not a plural of a heart "ventricle".
    assert vocabulary.lookup("ventricles").name == "ventricles"


def test_singular_keeps_latin_singulars():
    assert [singular(w) for w in ("thalamus", "pelvis", "mass", "ribs", "arteries")] == \
        ["thalamus", "pelvis", "mass", "rib", "artery"]


def test_suggest_offers_close_names_for_typos():
    assert vocabulary.suggest("pancraes")[0] == "pancreas"
    assert vocabulary.suggest("hipocampus")[0] == "hippocampus"
    assert len(vocabulary.suggest("spleeen", n=2)) <= 2


def test_suggest_offers_nothing_for_gibberish():
    assert vocabulary.suggest("qqqzzzx") == []


def test_complete_puts_names_starting_with_the_prefix_first():
    completions = vocabulary.complete("kid")
    assert completions[0] == "kidney"
    assert {"left kidney", "right kidney", "kidney tumor"} <= set(completions)


def test_complete_matches_inner_words_after_prefixes():
    completions = vocabulary.complete("nodule", limit=50)
    assert "lung nodule" in completions and "thyroid nodule" in completions


def test_complete_of_nothing_is_empty():
    assert vocabulary.complete("  ") == []


def test_colour_of_an_entry_with_a_colour():
    entry = vocabulary.lookup("liver")
    assert vocabulary.color("Liver") == entry.color


def test_lateral_entries_share_their_bilateral_colour():
    assert vocabulary.color("left kidney") == vocabulary.color("kidney") == vocabulary.lookup("kidney").color


def test_colour_of_unknown_names_is_stable_and_valid():
    first = vocabulary.color("My Custom Structure")
    assert first == vocabulary.color("my custom  structure") == hashed_color("my custom structure")
    assert all(0 <= c <= 255 for c in first)
    assert vocabulary.color("another structure") != first


def test_data_file_terms_are_unique_after_normalisation():
    data = json.loads(VOCABULARY_PATH.read_text())
    terms = [normalize(t) for e in data["entries"] for t in [e["name"], *e["synonyms"]]]
    assert len(terms) == len(set(terms))


def test_data_file_codes_are_well_formed():
    data = json.loads(VOCABULARY_PATH.read_text())
    assert 100 <= len(data["entries"]) <= 250
    for entry in data["entries"]:
        assert entry["category"] in data["categories"]
        assert entry["laterality"] in (None, "left", "right")
        if entry["sct"] is not None:
            assert re.fullmatch(r"[1-9][0-9]{5,17}", entry["sct"]["code"]) and entry["sct"]["meaning"]
        if "anatomy" in entry:
            assert vocabulary.lookup(entry["anatomy"]) is not None
        if "color" in entry:
            assert len(entry["color"]) == 3 and all(0 <= c <= 255 for c in entry["color"])


def test_lateral_entries_carry_the_bilateral_code():
    left, both = vocabulary.lookup("left kidney"), vocabulary.lookup("kidney")
    assert left.laterality == "left" and left.sct == both.sct == ("64033007", "Kidney")


@pytest.mark.parametrize("name", DEMO_BRAIN_STRUCTURES)
def test_demo_model_structures_are_known(name):
    assert vocabulary.lookup(name) is not None


def test_vocabulary_format_is_checked(tmp_path):
    (tmp_path / "v.json").write_text(json.dumps({"format": "other", "entries": []}))
    with pytest.raises(ValueError, match="not a MedalS vocabulary"):
        Vocabulary.load(tmp_path / "v.json")
