"""Refinement at interactive speed: a kept result is refined by recomputing only the windows around an edit.

The mechanics (window placement, blend, box resampling, cache, fall-backs) run on small random Medal S networks
standing in for trained ones (the same plan as test_pipeline_segment); the agreement with a whole-grid pass is
checked on the real MNI152 sample with the shipped demo model (slow).
"""
from __future__ import annotations

import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medals.config import ModelConfig, NetConfig, StageConfig
from medals.modeling import MedalSNet
from medals.pipeline import Prompt, SegmentOptions, segment
from medals.pipeline.refine import (RefinementCache, blend_weight, edited_box, labels_over, ramp_width,
                                    refinement_windows)
from medals.pipeline.resample import box_sources, resample_box, resample_labels, resample_labels_box

PLAN = NetConfig(crop_size=(32, 32, 32), features=(8, 8, 16, 16, 16, 16), query_dim=16, heads=2, ffn_dim=32,
                 decoder_layers=1, mask_hidden=16)
STAGES = {"coarse": StageConfig(PLAN, (4.0, 4.0, 4.0)), "fine": StageConfig(PLAN, (2.0, 2.0, 2.0))}
SPACING = (2.0, 2.0, 2.0)
SHAPE = (24, 48, 48)
PROMPTS = [Prompt("liver", 1), Prompt("spleen", 2)]


class QueryTable:
    """Stands in for the text encoder: a fixed random query per prompt text."""

    def encode(self, prompts, modality):
        return torch.stack([torch.randn(PLAN.query_dim, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
                            for t in prompts])


def random_model():
    """Two untrained stages (fixed seeds): probabilities that vary from voxel to voxel and with the prompt."""
    nets = {}
    for seed, name in enumerate(STAGES):
        torch.manual_seed(seed)
        nets[name] = MedalSNet(PLAN).eval()
    return SimpleNamespace(config=ModelConfig("random", stages=STAGES), nets=nets, text_encoder=QueryTable())


def volume():
    return np.random.default_rng(0).integers(0, 255, SHAPE).astype(np.uint8)


def seeds():
    mask = np.zeros(SHAPE, bool)
    mask[8:16, 10:30, 10:30] = True
    return mask


def edited(mask):
    """The mask with a 4×4×4 corner added: a small edit."""
    mask = mask.copy()
    mask[14:18, 28:32, 28:32] = True
    return mask


def run(segmenter, states=None, masks=None, image=None, prompts=PROMPTS, **options):
    events = []
    result = segment(segmenter, volume() if image is None else image, SPACING, prompts, modality="ct", masks=masks,
                     options=SegmentOptions(**options), progress=events.append, device="cpu", states=states)
    return result, sum(event.stage == "fine" for event in events)


# --- box resampling ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_shape, out_shape", [((20, 17, 9), (31, 12, 9)), ((24, 24, 24), (61, 40, 23))])
def test_box_resampling_agrees_with_whole_grid_resampling(in_shape, out_shape):
    generator = torch.Generator().manual_seed(0)
    box = (slice(3, 10), slice(0, out_shape[1]), slice(5, 9))
    sources = box_sources(box, in_shape, out_shape)
    offset = [part.start for part in sources]
    maps = torch.rand((2, *in_shape), generator=generator)
    whole = F.interpolate(maps[None], size=out_shape, mode="trilinear", align_corners=False)[0]
    part = resample_box(maps[(slice(None), *sources)], offset, in_shape, out_shape, box)
    assert torch.allclose(part, whole[(slice(None), *box)], atol=1e-5)
    labels = torch.randint(0, 3, in_shape, generator=generator).to(torch.int16)
    part = resample_labels_box(labels[sources], offset, in_shape, out_shape, box, [0, 1, 2, 7])
    assert torch.equal(part, resample_labels(labels, out_shape)[box])


def test_the_window_prompt_is_the_whole_grid_prompt_cut_to_the_windows():
    from medals.pipeline.axes import volume_to_network
    from medals.pipeline.refine import _working_prompt
    from medals.pipeline.stage import plan_stage, prepare_prompt

    prompt = np.random.default_rng(1).integers(0, 3, (20, 70, 50)).astype(np.int16)  # (k, j, i)
    plan = plan_stage((70, 50, 20), (1.2, 1.4, 2.0), STAGES["fine"], 2)  # k is padded to the crop
    assert plan.thick_axis is None and plan.padded_shape != plan.working_shape
    whole = prepare_prompt(volume_to_network(torch.as_tensor(prompt)), plan)
    for edit in [(0, 3, 0, 5, 0, 5), (10, 15, 30, 40, 20, 30), (16, 19, 60, 69, 40, 49)]:
        _, footprint, _ = refinement_windows(plan, edit, PLAN.crop_size)
        part = _working_prompt(prompt, plan, footprint, [1, 2], torch.device("cpu"))
        assert torch.equal(part, whole[footprint])


# --- windows and blend ------------------------------------------------------------------------------------------

def test_a_small_edit_gets_one_window_with_room_for_the_blend():
    plan = SimpleNamespace(input_shape=(100, 100, 100), working_shape=(100, 100, 100), padded_shape=(100, 100, 100))
    windows, footprint, edit = refinement_windows(plan, (40, 45, 50, 55, 60, 65), (48, 48, 48))
    assert len(windows) == 1 and windows[0] == footprint
    reach = 2 * ramp_width((48, 48, 48))
    for part, inner in zip(footprint, edit):
        assert part.stop - part.start == 48
        assert part.start <= inner.start - reach and inner.stop + reach <= part.stop


def test_a_large_edit_gets_overlapping_windows_that_cover_it():
    plan = SimpleNamespace(input_shape=(100, 100, 100), working_shape=(100, 100, 100), padded_shape=(100, 100, 100))
    windows, footprint, edit = refinement_windows(plan, (10, 80, 50, 55, 60, 65), (48, 48, 48))
    # The edit is in (k, j, i); windows are in (h, w, d) = (j, i, k): the long k edit spans d.
    assert len(windows) > 1 and all(w[0] == footprint[0] for w in windows)
    assert footprint[2].start <= edit[2].start and edit[2].stop <= footprint[2].stop


def test_blend_weight_is_one_on_the_edit_and_falls_continuously_to_zero_inside_the_footprint():
    footprint, edit, ramp = (slice(0, 48),) * 3, (slice(20, 28),) * 3, 6
    weight = blend_weight(footprint, edit, ramp)
    assert weight.shape == (48, 48, 48)
    assert (weight[20 - ramp:28 + ramp, 20 - ramp:28 + ramp, 20 - ramp:28 + ramp] == 1).all()
    assert (weight[:20 - 2 * ramp - 1] == 0).all() and (weight[:, 28 + 2 * ramp + 1:] == 0).all()
    assert weight[:, 24, 24].diff().abs().max() < 0.3  # no step: a seam would show as one


# --- the cache ----------------------------------------------------------------------------------------------------

def state_of(nbytes):
    return SimpleNamespace(nbytes=nbytes)


def test_cache_keeps_the_most_recent_states_within_its_bytes():
    cache = RefinementCache(100)
    cache.put("a", state_of(40))
    cache.put("b", state_of(40))
    assert cache.get("a") is not None  # now the most recent
    cache.put("c", state_of(40))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.nbytes == 80 and len(cache) == 2
    cache.put("d", state_of(101))  # larger than the cache: not kept, nothing else lost
    assert cache.get("d") is None and len(cache) == 2


# --- refinement through segment -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def segmenter():
    return random_model()


@pytest.fixture(scope="module")
def first(segmenter):
    """A hybrid result kept in a cache: (cache, result, fine windows it ran)."""
    states = RefinementCache(1 << 30)
    result, windows = run(segmenter, states, masks={1: seeds()})
    return states, result, windows


def whole_labels(state):
    """The labels of the whole region as a full run would assemble them from the state."""
    return labels_over(state, tuple(slice(0, n) for n in state.plan.input_shape), False).labels


def test_a_refinement_after_a_small_edit_runs_at_most_two_windows(segmenter, first):
    states, result, full_windows = first
    state = next(iter(states._states.values()))
    before = whole_labels(state)
    refined, windows = run(segmenter, states, masks={1: edited(seeds())})
    assert refined.refined and not result.refined
    assert windows <= 2 < full_windows
    k0, k1, j0, j1, i0, i1 = refined.box
    assert k0 <= 14 and k1 >= 17 and j0 <= 28 and j1 >= 31 and i0 <= 28 and i1 >= 31  # the edit is inside
    outside = np.ones(SHAPE, bool)
    outside[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = False
    assert not refined.labels[outside].any()  # labels come for the box only
    after = whole_labels(state)
    region = np.zeros(SHAPE, bool)
    origin = state.region[0::2]
    index = tuple(slice(o, o + n) for o, n in zip(origin, after.shape))
    region[index] = True
    local_outside = outside[index]
    assert np.array_equal(after[local_outside], before[local_outside])  # the kept result is unchanged outside
    assert np.array_equal(after[~local_outside], refined.labels[index][~local_outside])


def test_an_unchanged_request_an_edit_outside_the_region_or_a_costly_one_is_not_a_refinement():
    from medals.pipeline.stage import plan_stage

    state = SimpleNamespace(region=(2, 9, 2, 9, 2, 9), masks=np.zeros((8, 8, 8), np.int16),
                            plan=plan_stage((8, 8, 8), (1.0, 1.0, 1.0), StageConfig(PLAN, (0.1, 0.1, 0.1)), 2))
    assert len(state.plan.windows) == 64  # an 80³ working grid in 32³ windows
    masks = np.zeros((12, 12, 12), np.int16)
    assert edited_box(state, masks, None) is None  # nothing changed
    masks[5, 5, 5] = 1
    assert edited_box(state, masks, None) == (3, 3, 3, 3, 3, 3)
    assert edited_box(state, masks, (4, 6, 4, 6, 4, 6)) == (2, 4, 2, 4, 2, 4)  # the caller's box is the edit
    assert edited_box(state, masks, (1, 4, 4, 6, 4, 6)) == (0, 2, 2, 4, 2, 4)  # context past the region: clipped
    assert edited_box(state, masks, (10, 11, 4, 6, 4, 6)) is None  # a box wholly outside the region
    assert edited_box(state, masks, (2, 9, 2, 9, 2, 9)) is None  # the whole region: as dear as running again
    masks[0, 0, 0] = 1
    assert edited_box(state, masks, None) is None  # painted outside the region


@pytest.mark.parametrize("change", ["evicted", "prompts", "image"])
def test_without_a_matching_state_a_refinement_is_the_full_run_it_was_before(segmenter, change):
    states = RefinementCache(1 if change == "evicted" else 1 << 30)  # 1 byte: too small for any state
    run(segmenter, states, masks={1: seeds()})
    assert len(states) == (change != "evicted")
    request = dict(masks={1: edited(seeds())})
    if change == "prompts":
        request["prompts"] = [PROMPTS[0], Prompt("left kidney", 2)]
    else:
        request["image"] = volume() // 2
    refined, windows = run(segmenter, states, **request)
    plain, plain_windows = run(segmenter, None, **request)
    assert not refined.refined and windows == plain_windows
    assert np.array_equal(refined.labels, plain.labels) and refined.box == plain.box


def test_a_refinement_returns_probabilities_over_its_box_when_asked(segmenter):
    states = RefinementCache(1 << 30)
    run(segmenter, states, masks={1: seeds()})
    refined, _ = run(segmenter, states, masks={1: edited(seeds())}, probabilities=True)
    assert refined.refined and set(refined.probabilities) == {1, 2}
    k0, k1, j0, j1, i0, i1 = refined.box
    inside = refined.probabilities[1][k0:k1 + 1, j0:j1 + 1, i0:i1 + 1]
    assert inside.max() > 0 and refined.probabilities[1].sum() == pytest.approx(inside.sum())


def test_two_refinements_of_one_result_at_once_take_turns(segmenter):
    """Two workers (threads here) refine one kept result at the same time: the second waits for the first and
    measures its edit against the masks the first left, so the state ends as after the two one after the other.
    Without the state's lock the second would add the first edit's change a second time."""
    import threading
    import time

    first_edit = {1: edited(seeds())}
    both_edits = edited(seeds())
    both_edits[8:11, 8:11, 8:11] = True
    second_edit = {1: both_edits}
    in_window = threading.Event()

    def slow_window(event):  # the first refinement holds its window long enough for the second to start
        in_window.set()
        time.sleep(0.5)

    def refine_with(states, masks, progress=None):
        return segment(segmenter, volume(), SPACING, PROMPTS, modality="ct", masks=masks, progress=progress,
                       device="cpu", states=states)

    one_after_the_other = RefinementCache(1 << 30)
    run(segmenter, one_after_the_other, masks={1: seeds()})
    assert refine_with(one_after_the_other, first_edit).refined and refine_with(one_after_the_other, second_edit).refined

    at_once = RefinementCache(1 << 30)
    run(segmenter, at_once, masks={1: seeds()})
    results = {}
    first = threading.Thread(target=lambda: results.setdefault(1, refine_with(at_once, first_edit, slow_window)))
    first.start()
    assert in_window.wait(60)
    second = threading.Thread(target=lambda: results.setdefault(2, refine_with(at_once, second_edit)))
    second.start()
    first.join(120)
    second.join(120)
    assert results[1].refined and results[2].refined
    expected, state = (next(iter(c._states.values())) for c in (one_after_the_other, at_once))
    assert np.array_equal(state.masks, expected.masks)
    assert torch.equal(state.probabilities, expected.probabilities)


# --- agreement on a real image (slow) ------------------------------------------------------------------------------

@pytest.mark.slow
def test_refinement_on_the_demo_sample_agrees_with_a_whole_grid_hybrid_pass():
    """MNI152 with the shipped demo model: the white matter as corrected on three slices, then a 20×20×20 cube on
    the white matter's border painted as white matter. The refinement runs two windows (the window around the
    edit with the old and the new prompt); inside its box each structure agrees with the final stage run over its
    whole region with the new masks (Dice ≥ 0.99; not bit-exact: that pass averages every plan window over the
    edit)."""
    from medals.demo import DEMO_MODEL, PROMPTS as TISSUES, SAMPLES
    from medals.io import read_labels, read_volume
    from medals.metrics import dice
    from medals.orientation import reorientation
    from medals.pipeline.roi import box_slices
    from medals.pipeline.sliding_window import Execution
    from medals.pipeline.stage import StageModel, run_stage
    from medals.pipeline.zoom import repair_spacing
    from medals.weights import load_model

    model = load_model(DEMO_MODEL, torch.device("cpu"))
    sample = read_volume(SAMPLES / "mni152_t1.nii.gz")
    image = sample.array.astype(np.float32)
    correction = read_labels(SAMPLES / "mni152_white_matter_correction.nii.gz").array > 0
    states = RefinementCache(1 << 30)
    request = dict(direction=sample.direction, modality="mri", device="cpu", states=states)
    first = segment(model, image, sample.spacing, list(TISSUES), masks={2: correction}, **request)
    white = first.labels == 2
    border = np.argwhere(white & ~np.roll(white, 1, axis=1))
    centre = border[len(border) // 2]
    cube = tuple(slice(c - 10, c + 10) for c in centre)
    painted = correction.copy()
    painted[cube] = True
    events = []
    refined = segment(model, image, sample.spacing, list(TISSUES), masks={2: painted}, progress=events.append,
                      **request)
    assert refined.refined and sum(e.stage == "fine" for e in events) <= 2

    state = next(iter(states._states.values()))
    turn = reorientation(sample.direction, model.config.orientation)
    index = box_slices(state.region)
    prompt = np.where(turn.apply(painted)[index], 2, state.base).astype(np.int16)
    queries = model.text_encoder.encode([p.text for p in TISSUES], "mri").float()
    spacing = repair_spacing(turn.apply(image).shape, turn.permute(sample.spacing))
    with torch.no_grad():
        whole = run_stage(StageModel(model.nets["fine"], model.config.stages["fine"]), queries,
                          turn.apply(image)[index], spacing, [1, 2], prompt, execution=Execution(), name="fine")
    reference = np.zeros(turn.apply(image).shape, np.int16)
    reference[index] = whole.labels
    reference = turn.undo(reference)
    k0, k1, j0, j1, i0, i1 = refined.box
    box = (slice(k0, k1 + 1), slice(j0, j1 + 1), slice(i0, i1 + 1))
    assert all(inside.start <= c.start and c.stop <= inside.stop for inside, c in zip(box, cube))
    for label in (1, 2):
        agreement = dice(reference[box] == label, refined.labels[box] == label)
        assert agreement >= 0.99  # measured: gray matter 0.9986, white matter 0.9993
        assert agreement >= dice(reference[box] == label, first.labels[box] == label)  # moved toward that pass
