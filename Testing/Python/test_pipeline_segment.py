"""`segment`: request validation, stage routing, hybrid masks, box refinement, label options, progress, cancel.

The stage networks are real Medal S networks of a small plan whose logits are pushed far to one side by a variant
of the parity README's logit-bias edit (one constant feature channel times a constant embedding), so each stage
either labels every voxel or none. Volumes are small enough for one or two windows per stage. The queries come from a fixed table standing in for the text encoder (tested in
test_text_*), which keeps these tests independent of tokenizer and tower files.
"""
from __future__ import annotations

import threading
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medals.config import ModelConfig, NetConfig, StageConfig
from medals.errors import Cancelled, InputError, OutOfMemory
from medals.modeling import MedalSNet
from medals.pipeline import Prompt, SegmentOptions, segment

PLAN = NetConfig(crop_size=(32, 32, 32), features=(8, 8, 16, 16, 16, 16), query_dim=16, heads=2, ffn_dim=32,
                 decoder_layers=1, mask_hidden=16)
STAGES = {"coarse": StageConfig(PLAN, (4.0, 4.0, 4.0)), "fine": StageConfig(PLAN, (2.0, 2.0, 2.0))}
SPACING = (2.0, 2.0, 2.0)
LIVER, SPLEEN = Prompt("liver", 1), Prompt("spleen", 2)


class QueryTable:
    """Stands in for the text encoder: a fixed random query per prompt text."""

    def encode(self, prompts, modality):
        return torch.stack([torch.randn(PLAN.query_dim, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
                            for t in prompts])


def biased_net(everything: bool, seed: int = 0) -> MedalSNet:
    """A small network that labels every voxel (`everything`) or none, whatever the image."""
    torch.manual_seed(seed)
    net = MedalSNet(PLAN).eval()
    with torch.no_grad():
        # Feature channel −1 becomes the constant β (≥ 0, it passes a LeakyReLU) and embedding channel −1 the
        # constant GELU(x): every logit gains β·GELU(x), +1000 or −160.
        block = net.fusion_conv.convs[0]
        block.norm.weight[-1] = 0
        block.norm.bias[-1] = 100.0 if everything else 1000.0
        net.mask_embed_proj[2].weight[-1] = 0
        net.mask_embed_proj[2].bias[-1] = 10.0 if everything else -1.0
    return net


def model(coarse: bool | None, fine: bool | None):
    """A model with the given stages (None = not installed); True labels everything, False nothing."""
    nets = {name: biased_net(kind) for name, kind in (("coarse", coarse), ("fine", fine)) if kind is not None}
    return SimpleNamespace(config=ModelConfig("small", stages={n: STAGES[n] for n in nets}), nets=nets,
                           text_encoder=QueryTable())


SHAPE = (16, 32, 32)
WHOLE = (0, 15, 0, 31, 0, 31)


def image(shape=SHAPE):
    return np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)


def run(segmenter, volume=None, prompts=(LIVER,), **kwargs):
    events = []
    result = segment(segmenter, image() if volume is None else volume, SPACING, list(prompts), modality="ct",
                     progress=events.append, device="cpu", **kwargs)
    return result, events


def stage_counts(events):
    return {stage: sum(e.stage == stage for e in events) for stage in ("coarse", "fine")}


# --- validation -------------------------------------------------------------------------------------------------

BAD_REQUESTS = {
    "2-D image": dict(volume=np.zeros((64, 64))),
    "NaN voxel": dict(volume=np.where(np.arange(8).reshape(2, 2, 2) == 3, np.nan, 1.0)),
    "infinite voxel": dict(volume=np.full((2, 2, 2), np.inf)),
    "zero spacing": dict(spacing=(0.0, 1.0, 1.0)),
    "negative spacing": dict(spacing=(1.0, -1.0, 1.0)),
    "mask shape": dict(masks={1: np.zeros((4, 4, 4), bool)}),
    "mask label without prompt": dict(masks={7: np.zeros(SHAPE, bool)}),
    "empty prompt list": dict(prompts=[]),
    "unknown modality": dict(modality="xray"),
    "duplicate label": dict(prompts=[LIVER, Prompt("spleen", 1)]),
    "label zero": dict(prompts=[Prompt("liver", 0)]),
    "label too large": dict(prompts=[Prompt("liver", 40000)]),
    "box outside": dict(options=SegmentOptions(box=(0, 16, 0, 10, 0, 10))),
    "unknown stage": dict(options=SegmentOptions(stages=("medium",))),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_request_is_a_clear_input_error(name):
    request = dict(volume=image(), spacing=SPACING, prompts=[LIVER], modality="ct")
    request.update(BAD_REQUESTS[name])
    volume, spacing, prompts = request.pop("volume"), request.pop("spacing"), request.pop("prompts")
    with pytest.raises(InputError) as error:
        segment(model(True, True), volume, spacing, prompts, device="cpu", **request)
    assert "\n" not in str(error.value)


def test_request_for_a_stage_that_is_not_installed_is_an_input_error():
    with pytest.raises(InputError, match="installed"):
        run(model(None, True), options=SegmentOptions(stages=("coarse",)))


# --- stage routing ----------------------------------------------------------------------------------------------

def test_two_stages_run_the_fine_stage_on_the_coarse_roi():
    result, events = run(model(True, True))
    counts = stage_counts(events)
    assert counts["coarse"] >= 1 and counts["fine"] >= 1
    assert result.box == WHOLE  # the coarse stage labelled everything
    assert (result.labels == 1).all()


def test_empty_coarse_result_sends_the_fine_stage_over_the_whole_image_without_prompt():
    result, events = run(model(False, True))
    assert result.box == WHOLE
    assert (result.labels == 1).all() and stage_counts(events)["fine"] >= 1


def test_fine_only_model_segments_the_whole_image():
    result, events = run(model(None, True))
    assert stage_counts(events)["coarse"] == 0
    assert (result.labels == 1).all()


def test_coarse_only_model_returns_the_coarse_labels():
    result, events = run(model(True, None), prompts=(LIVER, SPLEEN))
    assert stage_counts(events)["fine"] == 0 and stage_counts(events)["coarse"] >= 1
    assert set(np.unique(result.labels)) <= {1, 2} and result.labels.all()


def test_modality_is_detected_from_the_prompts_when_not_given():
    result = segment(model(None, True), image(), SPACING, [Prompt("liver in MRI", 1)], device="cpu")
    assert result.modality == "mri"


def test_progress_reports_every_window_of_every_stage_in_order():
    _, events = run(model(False, True), volume=image((16, 48, 32)))
    assert [(e.stage, e.done, e.total) for e in events] == [("coarse", 1, 2), ("coarse", 2, 2),
                                                            ("fine", 1, 2), ("fine", 2, 2)]


# --- hybrid masks and box refinement ----------------------------------------------------------------------------

def cube_mask(shape=SHAPE):
    mask = np.zeros(shape, dtype=bool)
    mask[6:10, 2:6, 2:6] = True
    return mask


def test_masks_alone_prompt_the_fine_stage_on_a_roi_around_them():
    large = (16, 80, 80)
    result, events = run(model(True, True), volume=image(large), masks={1: cube_mask(large)},
                         options=SegmentOptions(merge_masks_with_coarse=False))
    assert stage_counts(events)["coarse"] == 0
    k0, k1, j0, j1, i0, i1 = result.box
    assert k0 <= 6 and k1 >= 9 and j0 <= 2 and j1 >= 5 and i0 <= 2 and i1 >= 5
    assert j1 < 79 and i1 < 79  # a region around the mask, not the whole image
    outside = np.ones(result.labels.shape, bool)
    outside[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = False
    assert not result.labels[outside].any()


def test_masks_merged_with_an_empty_coarse_result_still_prompt_the_fine_stage():
    large = (16, 80, 80)
    result, events = run(model(False, True), volume=image(large), masks={1: cube_mask(large)})
    assert stage_counts(events)["coarse"] >= 1
    assert result.box[3] < 79 and result.box[5] < 79


def test_box_request_computes_only_inside_the_box():
    box = (4, 10, 20, 30, 5, 12)
    large = (16, 64, 64)
    result, _ = run(model(True, True), volume=image(large), masks={1: cube_mask(large)},
                    options=SegmentOptions(box=box))
    assert result.box == box
    assert (result.labels[4:11, 20:31, 5:13] == 1).all()
    assert result.labels.sum() == 7 * 11 * 8


# --- label options and outputs ----------------------------------------------------------------------------------

def test_statistics_give_voxels_volume_and_confidence_per_label():
    result, _ = run(model(None, True), prompts=(LIVER, SPLEEN))
    liver = result.stats[1]
    assert liver["name"] == "liver" and liver["voxels"] == int((result.labels == 1).sum())
    assert liver["volume_ml"] == pytest.approx(liver["voxels"] * 8 / 1000)
    assert 0.5 <= liver["mean_confidence"] <= 1.0
    assert result.modality == "ct"


def test_probability_maps_are_returned_per_label_on_the_input_grid():
    result, _ = run(model(None, True), prompts=(LIVER, SPLEEN), options=SegmentOptions(probabilities=True))
    assert set(result.probabilities) == {1, 2}
    assert result.probabilities[2].shape == result.labels.shape
    assert result.probabilities[2].dtype == np.float32 and result.probabilities[2].min() > 0.99


def test_instance_mode_numbers_connected_components():
    result, _ = run(model(None, True), options=SegmentOptions(instance=True))
    assert set(np.unique(result.labels)) == {1}  # one component covering the image
    assert result.stats[1]["name"] == "liver"


# --- execution --------------------------------------------------------------------------------------------------

def test_cancel_stops_within_one_window():
    cancel = threading.Event()
    events = []

    def progress(event):
        events.append(event)
        cancel.set()

    with pytest.raises(Cancelled):
        segment(model(False, True), image(), SPACING, [LIVER], modality="ct", progress=progress, cancel=cancel,
                device="cpu")
    assert len(events) == 1


def test_cuda_out_of_memory_becomes_a_clear_error(monkeypatch):
    # A CUDA allocator failure cannot happen on this CPU machine: the network raises it instead.
    segmenter = model(None, True)

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(segmenter.nets["fine"], "forward", exhausted)
    with pytest.raises(OutOfMemory, match="window_batch"):
        run(segmenter)
