"""The network reproduces the official Medal S forward (fixtures recorded from the official code, float32 CPU).

Weights come from the fixture folder's deterministic generator and load strictly in the official key layout.
Tolerances are the parity README's (~100× the official code's own thread-to-thread noise).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import load_fixture, parity_cases
from medals.bench.parity import INTERMEDIATE_TOL, LOGITS_TOL
from medals.config import NetConfig
from medals.modeling import MedalSNet
from parity_sets import channel_stats


def tensors(arrays, *names):
    return [torch.from_numpy(np.asarray(arrays[n])).float() for n in names]


def max_diff(actual: torch.Tensor, expected) -> float:
    return float((actual.float() - torch.as_tensor(np.asarray(expected)).float()).abs().max())


@pytest.fixture(scope="module", params=parity_cases("net_", holding="logits_mc"))
def small_case(request, parity, parity_fixtures):
    meta, arrays = load_fixture(parity, request.param)
    net = parity_fixtures.network(meta)
    return request.param, net, arrays


@torch.no_grad()
def test_parity_logits_with_all_prompt_forms(small_case):
    """The four official call forms: fused prompt, union only, no prompt, and all-zero prompts."""
    _, net, arrays = small_case
    queries, image, sc, mc = tensors(arrays, "queries", "image", "sc", "mc")
    assert max_diff(net(queries, image, sc, mc), arrays["logits_mc"]) <= LOGITS_TOL
    assert max_diff(net(queries, image, sc, None), arrays["logits_sc"]) <= LOGITS_TOL
    assert max_diff(net(queries, image, None, None), arrays["logits_none"]) <= LOGITS_TOL
    assert max_diff(net(queries, image, 0 * sc, 0 * mc), arrays["logits_zero_prompts"]) <= LOGITS_TOL


@torch.no_grad()
def test_parity_intermediates(small_case):
    """Encoder scales, tokens, positional table, decoded queries, mask embeddings, decoder and fusion outputs."""
    _, net, arrays = small_case
    queries, image, sc, mc = tensors(arrays, "queries", "image", "sc", "mc")
    skips = net.encode(image, sc)
    for i, skip in enumerate(skips):
        mean, std = channel_stats(skip)
        assert max_diff(mean, arrays[f"skip{i}_mean"]) <= INTERMEDIATE_TOL, f"skip{i} mean"
        assert max_diff(std, arrays[f"skip{i}_std"]) <= INTERMEDIATE_TOL, f"skip{i} std"
    memory = net.image_tokens(skips)
    assert max_diff(memory, arrays["memory"]) <= INTERMEDIATE_TOL
    assert max_diff(net.pos_embedding, arrays["pos_embedding"]) <= 1e-6
    decoded = net.decode_queries(queries, memory)
    assert max_diff(decoded.transpose(0, 1), arrays["decoder_queries"]) <= INTERMEDIATE_TOL
    embeddings = net.mask_embed_proj(decoded)
    assert max_diff(embeddings, arrays["mask_embed"]) <= INTERMEDIATE_TOL
    full_res = net.backbone.decoder(list(skips))[0]
    for name, features in (("decoder_out0", full_res), ("fusion_out", net.pixel_features(full_res, embeddings, mc))):
        mean, std = channel_stats(features)
        assert max_diff(mean, arrays[f"{name}_mean"]) <= INTERMEDIATE_TOL, name
        assert max_diff(std, arrays[f"{name}_std"]) <= INTERMEDIATE_TOL, name


def test_parity_token_grid_follows_crop_axis_order(small_case):
    """A non-cubic crop gives a (h/32)(w/32)(d/32) token grid in (h, w, d) order, matching the fixture."""
    name, net, arrays = small_case
    assert net.pos_embedding.shape == np.asarray(arrays["pos_embedding"]).shape
    assert net.config.token_grid == tuple(s // 32 for s in net.config.crop_size)


@torch.no_grad()
def test_training_mode_gives_deep_supervision_levels(parity_weights):
    """With deep supervision the training forward returns logits at full, /2, /4 and /8 resolution."""
    torch.manual_seed(0)
    config = NetConfig(crop_size=(32, 32, 32), features=(8, 8, 16, 16, 32, 32), query_dim=48, heads=4,
                       ffn_dim=64, decoder_layers=2, mask_hidden=32, deep_supervision=True)
    net = MedalSNet(config).train()
    outputs = net(torch.randn(3, 48), torch.rand(1, 1, 32, 32, 32) * 255)
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 32, 32, 32), (1, 3, 16, 16, 16), (1, 3, 8, 8, 8),
                                                 (1, 3, 4, 4, 4)]


@pytest.mark.parametrize("batch", [1, 2])
def test_lean_inference_matches_autograd_path(batch):
    """The in-place, concatenation-free inference path (with the folded prompt fusion) equals the plain
    autograd path of the same weights, for one window and for a batch of windows."""
    torch.manual_seed(0)
    config = NetConfig(crop_size=(32, 32, 64), features=(8, 8, 16, 16, 32, 32), query_dim=48, heads=4,
                       ffn_dim=64, decoder_layers=2, mask_hidden=32)
    net = MedalSNet(config).eval()
    queries, image = torch.randn(2, 48), torch.rand(batch, 1, 32, 32, 64) * 255
    mc = (torch.rand(batch, 2, 32, 32, 64) > 0.7).float()
    with torch.no_grad():
        lean = net(queries, image, mc.amax(1, keepdim=True), mc)
    plain = net(queries, image, mc.amax(1, keepdim=True), mc).detach()
    assert float((lean - plain).abs().max()) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", parity_cases("net_", holding="logits_mc_sub4"))
@torch.no_grad()
def test_parity_full_size_stage1_forward(parity, parity_fixtures, name):
    """One forward at the official stage-1 crop (224×224×128 in the recorded set) with a fused prompt; the
    logits are checked subsampled, at sample points and through per-query statistics."""
    meta, arrays = load_fixture(parity, name)
    net = parity_fixtures.network(meta)
    queries, image, sc, mc = tensors(arrays, "queries", "image", "sc", "mc")
    skips = net.encode(image, sc)
    memory = net.image_tokens(skips)
    assert max_diff(memory, arrays["memory"]) <= INTERMEDIATE_TOL
    assert max_diff(net.pos_embedding, arrays["pos_embedding"]) <= 1e-6
    embeddings = net.mask_embed_proj(net.decode_queries(queries, memory))
    assert max_diff(embeddings, arrays["mask_embed"]) <= INTERMEDIATE_TOL
    full_res = net.backbone.decoder(skips)[0]
    del skips
    logits = net.logits(embeddings, net.pixel_features(full_res, embeddings, mc))
    del full_res
    assert max_diff(logits[:, :, ::4, ::4, ::4], arrays["logits_mc_sub4"]) <= LOGITS_TOL
    h, w, d = np.asarray(arrays["point_index"]).T
    assert max_diff(logits[0][:, h, w, d], arrays["point_logits"]) <= LOGITS_TOL
    flat = logits[0].flatten(1).double()
    for name, values in (("query_mean", flat.mean(1)), ("query_std", flat.std(1, correction=0)),
                         ("query_min", flat.min(1).values), ("query_max", flat.max(1).values)):
        assert max_diff(values, arrays[name]) <= 1e-3, name
