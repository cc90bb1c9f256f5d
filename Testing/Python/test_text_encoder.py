"""The text encoder reproduces the official Knowledge_Encoder, loads its checkpoints, caches and validates.

Parity: `tiny_mpnet` (a 2-layer MPNet) with the fixture folder's deterministic weights at the text fixture's seed,
loaded through `load_official_state`; tolerance 1e-4 as in the parity README (observed ≈ 1.5e-6).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import load_fixture
from medals.config import MODALITIES, TextConfig
from medals.errors import InputError, WeightsError
from medals.text import TextEncoder, load_official_state
from medals.text.encoder import masked_mean

TOL = 1e-4


@pytest.fixture(scope="module")
def parity_encoder(parity, parity_text_state):
    encoder = TextEncoder(TextConfig(), parity / "tiny_mpnet")
    load_official_state(encoder, parity_text_state)
    return encoder


@pytest.fixture
def encoder(parity):
    """A fresh tiny encoder (random weights, empty cache) for behaviour tests."""
    return TextEncoder(TextConfig(), parity / "tiny_mpnet")


@pytest.fixture(scope="module")
def text_fixture(parity):
    return load_fixture(parity, "text")


def count_tower_calls(encoder: TextEncoder) -> list:
    calls = []
    encoder.text_tower.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    return calls


def test_text_parity_pooled_features(parity_encoder, text_fixture):
    meta, arrays = text_fixture
    with torch.no_grad():
        features = parity_encoder.text_tower(meta["prompts"])
    np.testing.assert_allclose(features.numpy(), arrays["text_features"], rtol=0, atol=TOL)


def test_text_parity_batched_queries_for_each_modality_code(parity_encoder, text_fixture):
    meta, arrays = text_fixture
    with torch.no_grad():
        queries = np.stack([parity_encoder(meta["prompts"], torch.tensor([code])).numpy()
                            for code in sorted(meta["modality_codes"].values())])
    np.testing.assert_allclose(queries, arrays["queries"], rtol=0, atol=TOL)


def test_text_parity_encode_one_prompt_at_a_time(parity_encoder, text_fixture):
    meta, arrays = text_fixture
    modalities = sorted(meta["modality_codes"], key=meta["modality_codes"].get)
    queries = np.stack([np.concatenate([parity_encoder.encode([prompt], modality).numpy()
                                        for prompt in meta["prompts"]])
                        for modality in modalities])
    np.testing.assert_allclose(queries, arrays["queries_single"], rtol=0, atol=TOL)


def test_text_parity_encode_names_map_to_official_modality_codes(text_fixture):
    meta, _ = text_fixture
    assert {name: code for code, name in enumerate(MODALITIES)} == meta["modality_codes"]


def test_masked_mean_ignores_masked_tokens_and_survives_an_empty_mask():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(hidden, mask).tolist() == [[2.0, 3.0], [0.0, 0.0]]


def test_encode_returns_one_float32_query_per_prompt_in_order(encoder):
    queries = encoder.encode(["liver", "spleen", "liver"], "ct")
    assert queries.shape == (3, 768) and queries.dtype == torch.float32
    assert torch.equal(queries[0], queries[2])
    assert not torch.equal(queries[0], queries[1])


def test_encode_cache_hit_skips_the_tower(encoder):
    calls = count_tower_calls(encoder)
    first = encoder.encode(["liver", "spleen"], "ct")
    second = encoder.encode(["spleen", "liver"], "ct")
    assert calls == [2]
    assert torch.equal(second, first.flip(0))


def test_encode_runs_only_new_prompts_through_the_tower(encoder):
    calls = count_tower_calls(encoder)
    encoder.encode(["liver"], "ct")
    encoder.encode(["liver", "spleen", "aorta"], "ct")
    assert calls == [1, 2]


def test_encode_cache_key_includes_the_modality(encoder):
    calls = count_tower_calls(encoder)
    ct = encoder.encode(["liver"], "ct")
    mri = encoder.encode(["liver"], "MRI")
    assert calls == [1, 1]
    expected_shift = encoder.modality_embed.weight[1] - encoder.modality_embed.weight[0]
    torch.testing.assert_close(mri[0] - ct[0], expected_shift.detach())


def test_loading_weights_invalidates_cached_embeddings(encoder, parity_text_state):
    calls = count_tower_calls(encoder)
    before = encoder.encode(["liver"], "ct")
    load_official_state(encoder, parity_text_state)
    after = encoder.encode(["liver"], "ct")
    assert calls == [1, 1]
    assert not torch.allclose(before, after)


def test_cache_keeps_only_the_most_recently_used_embeddings(parity):
    encoder = TextEncoder(TextConfig(), parity / "tiny_mpnet", cache_size=2)
    calls = count_tower_calls(encoder)
    encoder.encode(["liver", "spleen"], "ct")
    encoder.encode(["liver"], "ct")  # hit: liver becomes the most recent
    encoder.encode(["aorta"], "ct")  # evicts spleen
    encoder.encode(["liver"], "ct")
    encoder.encode(["spleen"], "ct")
    assert calls == [2, 1, 1]
    assert len(encoder.cache) == 2


@pytest.mark.parametrize("prompts, message", [
    ([], "no prompts"),
    (["liver", "   "], "prompt 2 is empty"),
    (["liver", ""], "prompt 2 is empty"),
    ("liver", "list of strings"),
    (["liver", 3], "prompt 2 is a int"),
])
def test_encode_refuses_bad_prompts(encoder, prompts, message):
    with pytest.raises(InputError, match=message):
        encoder.encode(prompts, "ct")


def test_encode_refuses_an_unknown_modality_listing_the_valid_ones(encoder):
    with pytest.raises(InputError, match="unknown modality 'xray'; valid modalities: ct, mri, us, pet, microscopy"):
        encoder.encode(["liver"], "xray")


def test_official_state_loads_with_ddp_prefix_and_ignores_extra_keys(encoder, parity_text_state):
    checkpoint = {"model_state_dict": {f"module.{key}": value for key, value in parity_text_state.items()}}
    checkpoint["model_state_dict"].update({
        "module.text_tower.biolord.embeddings.position_ids": torch.arange(514)[None],
        "module.atlas_tower.encoder.weight": torch.zeros(3, 3),
        "module.temperature": torch.tensor(0.07),
    })
    load_official_state(encoder, checkpoint)
    torch.testing.assert_close(encoder.projection_layer[0].bias, parity_text_state["projection_layer.0.bias"],
                               rtol=0, atol=0)
    torch.testing.assert_close(encoder.text_tower.biolord.embeddings.word_embeddings.weight,
                               parity_text_state["text_tower.biolord.embeddings.word_embeddings.weight"],
                               rtol=0, atol=0)


def test_official_state_names_the_first_missing_key(encoder, parity_text_state):
    state = {key: value for key, value in parity_text_state.items() if key != "modality_embed.weight"}
    with pytest.raises(WeightsError, match="^text encoder weights lack modality_embed.weight$"):
        load_official_state(encoder, state)


def test_official_state_names_a_mis_shaped_key(encoder, parity_text_state):
    state = dict(parity_text_state, **{"projection_layer.2.weight": torch.zeros(768, 384)})
    with pytest.raises(WeightsError, match=r"projection_layer.2.weight has shape \[768, 384\], expected \[768, 768\]"):
        load_official_state(encoder, state)


def test_a_tower_whose_hidden_size_differs_from_the_config_is_refused(parity):
    with pytest.raises(WeightsError, match="hidden size 768, the text config says 384"):
        TextEncoder(TextConfig(hidden_dim=384), parity / "tiny_mpnet")


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="has no config.json"):
        TextEncoder(TextConfig(), tmp_path)
