"""Sliding-window prediction: batching, number of passes per window (small random network, two windows)."""
from __future__ import annotations

import pytest
import torch

from medals.config import NetConfig
from medals.modeling import MedalSNet
from medals.pipeline.sliding_window import Execution, stage_probabilities
from medals.pipeline.windows import sliding_windows

PLAN = NetConfig(crop_size=(32, 32, 32), features=(8, 8, 16, 16, 16, 16), query_dim=16, heads=2, ffn_dim=32,
                 decoder_layers=1, mask_hidden=16)
SHAPE = (48, 32, 32)  # two windows along h


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return MedalSNet(PLAN).eval()


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(SHAPE, generator=generator) * 255
    prompt = torch.zeros(SHAPE, dtype=torch.int16)
    prompt[10:30, 8:20, 8:24] = 1
    prompt[20:40, 16:28, 4:12] = 2
    return torch.randn(2, PLAN.query_dim, generator=generator), image, prompt


def forwards_per_window(net, inputs, **kwargs) -> float:
    calls = []
    handle = net.register_forward_hook(lambda module, args, output: calls.append(args[1].shape[0]))
    try:
        queries, image, prompt = inputs
        windows = sliding_windows(SHAPE, PLAN.crop_size)
        stage_probabilities(net, queries, image, windows, (1, 2), **kwargs)
    finally:
        handle.remove()
    return sum(calls) / len(windows)


def test_batched_windows_give_the_same_probabilities_as_one_at_a_time(net, inputs):
    queries, image, prompt = inputs
    windows = sliding_windows(SHAPE, PLAN.crop_size)
    results = [stage_probabilities(net, queries, image, windows, (1, 2), prompt,
                                   execution=Execution(window_batch=batch, block_permutation=torch.arange))
               for batch in (1, 2)]
    assert results[0].shape == (2, *SHAPE)
    assert float((results[0] - results[1]).abs().max()) <= 1e-5


def test_an_unprompted_window_takes_one_pass(net, inputs):
    assert forwards_per_window(net, inputs) == 1


def test_a_prompted_window_takes_two_complementary_passes(net, inputs):
    assert forwards_per_window(net, inputs, prompt=inputs[2]) == 2


def test_each_refinement_iteration_adds_two_passes(net, inputs):
    assert forwards_per_window(net, inputs, refine_iterations=1) == 3
