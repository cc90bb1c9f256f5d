"""Prompt tokenization: the official Medal S rule (literal [CLS]/[SEP], id-0 padding) and the tower's own."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_fixture
from medals.text import native_token_ids, official_token_ids
from medals.text.tokenizer import token_ids
from medals.text.towers import load_tower_tokenizer


@pytest.fixture(scope="module")
def tokenizer(parity):
    return load_tower_tokenizer(parity / "tiny_mpnet")


@pytest.fixture(scope="module")
def text_fixture(parity):
    return load_fixture(parity, "text")


def test_text_parity_input_ids_and_mask_match_official(tokenizer, text_fixture):
    meta, arrays = text_fixture
    input_ids, attention_mask = official_token_ids(tokenizer, meta["prompts"], max_length=256)
    np.testing.assert_array_equal(input_ids.numpy(), arrays["input_ids"])
    np.testing.assert_array_equal(attention_mask.numpy(), arrays["attention_mask"])


def test_text_parity_single_prompt_ids_match_official(tokenizer, text_fixture):
    meta, _ = text_fixture
    for prompt, expected in zip(meta["prompts"], meta["single_prompt_ids"]):
        input_ids, attention_mask = official_token_ids(tokenizer, [prompt])
        assert input_ids[0].tolist() == expected
        assert attention_mask.all()


def test_official_rule_wraps_wordpieces_in_literal_cls_sep(tokenizer, text_fixture):
    meta, _ = text_fixture
    for prompt, tokens in zip(meta["prompts"], meta["tokens"]):
        input_ids, _ = official_token_ids(tokenizer, [prompt], max_length=10_000)
        assert input_ids[0].tolist() == tokenizer.convert_tokens_to_ids(tokens)


def test_official_rule_ends_a_truncated_prompt_with_sep(tokenizer):
    input_ids, attention_mask = official_token_ids(tokenizer, ["liver kidney spleen pancreas"], max_length=4)
    assert input_ids.tolist() == [tokenizer.convert_tokens_to_ids(["[CLS]", "liver", "kidney", "[SEP]"])]
    assert attention_mask.tolist() == [[1, 1, 1, 1]]


def test_official_rule_masks_a_literal_s_tag_like_padding(tokenizer):
    input_ids, attention_mask = official_token_ids(tokenizer, ["<s> liver </s>"])
    assert input_ids.tolist() == [tokenizer.convert_tokens_to_ids(["[CLS]", "<s>", "liver", "</s>", "[SEP]"])]
    assert tokenizer.convert_tokens_to_ids("<s>") == 0  # the official padding id, so the mask drops it
    assert attention_mask.tolist() == [[1, 0, 1, 1, 1]]


def test_wordpiece_splits_plural_and_adjective_suffixes(tokenizer):
    assert tokenizer.tokenize("kidneys") == ["kidney", "##s"]
    assert tokenizer.tokenize("Hepatic") == ["hepat", "##ic"]


def test_wordpiece_strips_accents_then_maps_unknown_words_to_unk(tokenizer):
    assert tokenizer.tokenize("Ménière") == ["[UNK]"]
    input_ids, _ = official_token_ids(tokenizer, ["Ménière"])
    assert input_ids.tolist() == [tokenizer.convert_tokens_to_ids(["[CLS]", "[UNK]", "[SEP]"])]


def test_wordpiece_maps_words_over_100_characters_to_unk(tokenizer):
    long_word = "kidney" * 17  # 102 characters, made of pieces the vocabulary has
    assert tokenizer.tokenize(long_word) == ["[UNK]"]


def test_native_rule_uses_the_towers_own_specials_and_pad_id(tokenizer):
    input_ids, attention_mask = native_token_ids(tokenizer, ["liver", "liver in ct"])
    ids = tokenizer.convert_tokens_to_ids
    assert input_ids.tolist() == [ids(["<s>", "liver", "</s>", "<pad>", "<pad>"]),
                                  ids(["<s>", "liver", "in", "ct", "</s>"])]
    assert attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_unknown_tokenization_rule_is_refused(tokenizer):
    with pytest.raises(ValueError, match="official, native"):
        token_ids(tokenizer, ["liver"], "bert")
