"""Refinement through a real `medals serve`: the engine keeps each result's refinement state, a hybrid job with
an edited mask runs only the windows around the edit, and the protocol says so (`refined`, `reuse_state`)."""
from __future__ import annotations

import numpy as np
import pytest
from server_fixtures import connected, medals_home, random_volume, raw_request, server_process  # noqa: F401

from medals.pipeline import Prompt, SegmentOptions, segment
from medals.pipeline.refine import RefinementCache
from medals.server.remote import segment_remote
from medals.weights import load_model

PROMPTS = [("liver", 1), ("left kidney", 2)]
SHAPE = (16, 96, 96)


@pytest.fixture(scope="module")
def server(medals_home):  # noqa: F811
    with server_process(medals_home) as process:
        yield process


@pytest.fixture(scope="module")
def engine(server):
    return connected(server)


@pytest.fixture(scope="module")
def in_process_model(medals_home):  # noqa: F811
    return load_model(medals_home / "models" / "tiny")


def painted(edit: bool = False) -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:12, 30:60, 30:60] = 1
    if edit:
        mask[10:14, 56:62, 56:62] = 1
    return mask


def fine_windows(progress) -> int:
    return max((state.total for state in progress if state.stage == "fine"), default=0)


def test_a_hybrid_job_after_an_edit_refines_the_kept_result_like_the_pipeline(engine, in_process_model):
    image = random_volume(SHAPE, seed=40, dtype=np.uint8)
    first_progress, progress = [], []
    first = engine.segment(image, PROMPTS, modality="ct", masks={1: painted()}, progress=first_progress.append)
    refined = engine.segment(image, PROMPTS, modality="ct", masks={1: painted(edit=True)}, progress=progress.append)
    assert not first.refined and refined.refined
    assert fine_windows(progress) <= 2 < fine_windows(first_progress)

    states = RefinementCache(1 << 30)
    prompts = [Prompt(text, label) for text, label in PROMPTS]
    for mask in (painted(), painted(edit=True)):
        expected = segment(in_process_model, image.array, image.spacing, prompts, modality="ct",
                           masks={1: mask}, device="cpu", states=states)
    assert expected.refined and refined.box == expected.box
    assert np.array_equal(refined.full_labels(), expected.labels)


def test_reuse_state_false_runs_the_whole_pipeline(engine, in_process_model):
    image = random_volume(SHAPE, seed=41, dtype=np.uint8)
    engine.segment(image, PROMPTS, modality="ct", masks={1: painted()})
    result = engine.segment(image, PROMPTS, modality="ct", masks={1: painted(edit=True)},
                            options={"reuse_state": False})
    expected = segment(in_process_model, image.array, image.spacing, [Prompt(t, v) for t, v in PROMPTS],
                       modality="ct", masks={1: painted(edit=True)}, device="cpu")
    assert not result.refined and np.array_equal(result.full_labels(), expected.labels)


def test_segment_remote_refines_with_the_edit_box_it_is_given(server, in_process_model):
    image = random_volume(SHAPE, seed=42, dtype=np.uint8)
    prompts = [Prompt(text, label) for text, label in PROMPTS]
    segment_remote(server.url, image.array, image.spacing, prompts, modality="ct", masks={1: painted()})
    box = (10, 13, 56, 61, 56, 61)
    events = []
    result = segment_remote(server.url, image.array, image.spacing, prompts, modality="ct",
                            masks={1: painted(edit=True)}, options=SegmentOptions(box=box), progress=events.append)
    assert result.refined and sum(e.stage == "fine" for e in events) >= 1
    k0, k1, j0, j1, i0, i1 = result.box
    assert k0 <= 10 and k1 >= 13 and j0 <= 56 and j1 >= 61 and i0 <= 56 and i1 >= 61


def test_the_protocol_documents_the_refinement_fields(server):
    status, document, _ = raw_request(server.url, "GET", "/v1/openapi.json")
    schemas = document["components"]["schemas"]
    assert status == 200
    assert "reuse_state" in schemas["OptionsBody"]["properties"] and "refined" in schemas["ResultInfo"]["properties"]
