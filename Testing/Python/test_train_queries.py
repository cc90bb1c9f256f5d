"""Query sampling (spec §6.3): which structures a sample asks for, with negatives, and how they are phrased."""
import random

from medals.train.queries import QuerySampling, phrase_queries, select_structures

SETTINGS = QuerySampling(max_queries=8, negative_ratio=0.33)
SYNONYMS = [[f"s{s} phrasing {k}" for k in range(4)] for s in range(20)]


def test_a_patch_without_positives_asks_only_for_negatives_up_to_the_limit():
    chosen = select_structures([], list(range(12)), SETTINGS, random.Random(0))
    assert len(chosen) == 8 and len(set(chosen)) == 8


def test_negatives_join_at_about_a_third_of_the_positives():
    chosen = select_structures([0, 1, 2, 3, 4, 5], [10, 11, 12], SETTINGS, random.Random(0))
    assert chosen[:6] == [0, 1, 2, 3, 4, 5] and len(chosen) == 6 + 1 and chosen[6] in (10, 11, 12)


def test_fewer_than_four_positives_get_no_negatives():
    assert select_structures([3, 4, 5], [7, 8], SETTINGS, random.Random(0)) == [3, 4, 5]


def test_negatives_never_push_the_selection_past_the_limit():
    chosen = select_structures(list(range(7)), [10, 11, 12], SETTINGS, random.Random(0))
    assert len(chosen) == 8


def test_more_positives_than_the_limit_are_subsampled_without_negatives():
    chosen = select_structures(list(range(12)), [15], SETTINGS, random.Random(0))
    assert len(chosen) == 8 and set(chosen) <= set(range(12))


def test_a_full_selection_gets_one_synonym_each():
    queries = phrase_queries(list(range(8)), SYNONYMS, SETTINGS, random.Random(0))
    assert [s for s, _ in queries] == list(range(8))
    assert all(text in SYNONYMS[s] for s, text in queries)


def test_a_single_structure_is_asked_in_all_its_phrasings():
    queries = phrase_queries([5], SYNONYMS, SETTINGS, random.Random(0))
    assert sorted(text for _, text in queries) == sorted(SYNONYMS[5])
    assert all(s == 5 for s, _ in queries)


def test_round_robin_covers_every_structure_before_repeating_one():
    queries = phrase_queries([1, 2, 3], SYNONYMS, SETTINGS, random.Random(0))
    assert len(queries) == 8
    assert {s for s, _ in queries[:3]} == {1, 2, 3}
    assert len({text for _, text in queries}) == 8  # never the same phrasing twice
