"""End to end: the Slicer logic drives a real `medals serve` process started by the module's launcher.

The engine serves the tiny random test model (`medals.weights.testing`): it segments nothing meaningful,
but every step is real — process start on a free loopback port with a token, protocol check, volume upload,
two-stage job with progress, labels back, segments written into a real MRML scene, refinement, cancel.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import slicer
from slicer_fixtures import MODULE_DIR, add_volume, oblique_geometry, scene  # noqa: F401

from MedalSLib.client import EngineError, JobCancelled
from MedalSLib.jobs import Worker
from MedalSLib.launcher import engine_command
from MedalSLib.probability_maps import find_probability_map
from MedalSLib.prompts import completion_names, painted_masks, segments_by_prompt
from MedalSLib.results import find_segment, new_segmentation
from MedalSLib.scene import Box, oriented_image, volume_geometry
from MedalSLib.session import EngineChoice, EngineOptions, SegmentationSession, from_inclusive

SHAPE = (20, 40, 40)


@pytest.fixture(scope="module")
def choice(tmp_path_factory) -> EngineChoice:
    from medals.weights.testing import make_tiny_model
    folder = make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")
    env = {**os.environ, "MEDALS_HOME": str(tmp_path_factory.mktemp("home"))}
    return EngineChoice(command=tuple(engine_command(sys.executable, device="cpu", model=str(folder))), env=env)


@pytest.fixture(scope="module")
def engine(choice):
    """The local engine, started through a session as the module starts it; shared by the tests here."""
    owner = SegmentationSession(None)
    owner.ensure_engine(choice)
    yield owner.local_engine
    owner.stop_local_engine()


@pytest.fixture
def session(scene, engine):
    session = SegmentationSession(scene)
    session.ensure_engine(EngineChoice(url=engine.url, token=engine.token))
    return session


@pytest.fixture
def volume(scene):
    voxels = (np.random.default_rng(0).random(SHAPE) * 200).astype(np.int16)
    return add_volume(scene, oblique_geometry(shape=SHAPE, spacing=(3.0, 1.5, 1.5)), voxels)


def run_on_worker(session, prepared):
    worker = Worker()
    request = worker.submit(lambda r: session.run(prepared, r), "segment")
    assert request.finished.wait(120)
    worker.close()
    return request


def segment_mask(segmentation, volume, name):
    return painted_masks(segmentation, segments_by_prompt(segmentation, [name]), volume).get(
        name, np.zeros(SHAPE, np.uint8))


PARENT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from MedalSLib.launcher import LocalEngine
choice = json.loads(sys.argv[2])
engine = LocalEngine(choice["command"], env=choice["env"])
engine.start()
print(engine.pid, flush=True)
time.sleep(600)
"""


def process_state(pid: int) -> str | None:
    """The state letter of a process (Linux /proc), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def test_the_local_engine_exits_when_the_process_that_started_it_is_killed(choice):
    """Slicer crashing: its engine must not live on holding the GPU (SIGKILL runs no atexit, no cleanup)."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(MODULE_DIR / "Logic"),
                               json.dumps({"command": list(choice.command), "env": choice.env})],
                              stdout=subprocess.PIPE, text=True, encoding="utf-8")
    try:
        engine_pid = int(parent.stdout.readline())
        assert process_state(engine_pid) not in (None, "Z")
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    try:
        while process_state(engine_pid) not in (None, "Z"):  # a zombie has exited (its new parent may not reap it)
            assert time.monotonic() < deadline, "the engine outlived the process that started it by 10 s"
            time.sleep(0.1)
    finally:
        if process_state(engine_pid) not in (None, "Z"):
            os.kill(engine_pid, signal.SIGKILL)


def test_a_running_local_engine_is_reused_not_restarted(choice, engine):
    owner = SegmentationSession(None)
    owner.local_engine = engine
    owner.ensure_engine(choice)
    assert owner.local_engine is engine and engine.running


def test_connect_reports_the_engine_and_its_device(session):
    assert session.info["protocol"] == 1 and session.info["model"] == "tiny"
    assert session.info["device"]["device"] == "cpu"


def test_the_engines_vocabulary_is_offered_for_completion(session):
    names = completion_names(session.vocabulary)
    assert "liver" in names and "hepatic" in names and "left kidney" in names


def test_segments_appear_named_after_the_prompts_with_the_engines_labels(scene, session, volume):
    segmentation = new_segmentation(scene, volume)
    prepared = session.prepare_segment(volume, segmentation, "liver\nleft kidney", "ct")
    request = run_on_worker(session, prepared)
    assert request.error is None, request.error
    assert request.progress.text == "Engine job succeeded"
    stats = session.apply(prepared, request.result)
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
    assert names == ["liver", "left kidney"] and set(stats) == {"liver", "left kidney"}
    full = np.zeros(SHAPE, np.int16)
    full[from_inclusive(request.result.box).slices] = request.result.labels
    np.testing.assert_array_equal(segment_mask(segmentation, volume, "liver"), full == 1)
    np.testing.assert_array_equal(segment_mask(segmentation, volume, "left kidney"), full == 2)


def test_auto_modality_lets_the_engine_detect_it_from_the_prompts(scene, session, volume):
    prepared = session.prepare_segment(volume, new_segmentation(scene, volume), "liver in CT", "auto")
    request = run_on_worker(session, prepared)
    assert request.error is None, request.error
    assert prepared.modality is None and request.result.modality == "ct"


def test_probability_maps_become_volumes_on_the_input_grid_updated_in_place_on_a_rerun(scene, session, volume):
    segmentation = new_segmentation(scene, volume)
    options = EngineOptions(stages=("coarse",), probabilities=True)
    prepared = session.prepare_segment(volume, segmentation, "liver\nleft kidney", "ct", options)
    result = run_on_worker(session, prepared).result
    session.apply(prepared, result)
    maps = {prompt: find_probability_map(scene, segmentation, prompt) for prompt in ("liver", "left kidney")}
    assert maps["liver"].GetName() == f"{segmentation.GetName()} – liver probability"
    for value, prompt in prepared.prompts.items():
        assert volume_geometry(maps[prompt]).same_grid(volume_geometry(volume))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(maps[prompt]), result.full_probabilities()[value])
    volumes = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    rerun = session.prepare_segment(volume, segmentation, "liver", "mri", options)
    result = run_on_worker(session, rerun).result
    session.apply(rerun, result)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumes
    assert find_probability_map(scene, segmentation, "liver") is maps["liver"]
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(maps["liver"]), result.full_probabilities()[1])


def test_an_unchanged_volume_is_not_read_again_for_the_next_request(scene, session, volume):
    segmentation = new_segmentation(scene, volume)
    first = session.prepare_segment(volume, segmentation, "liver", "ct")
    assert run_on_worker(session, first).error is None
    second = session.prepare_segment(volume, segmentation, "spleen", "ct")
    assert second.voxels is None
    assert run_on_worker(session, second).error is None


def test_refinement_recomputes_only_around_the_painted_seeds(scene, session, volume):
    segmentation = new_segmentation(scene, volume)
    prepared = session.prepare_segment(volume, segmentation, "liver", "ct")
    session.apply(prepared, run_on_worker(session, prepared).result)
    before = segment_mask(segmentation, volume, "liver")
    seeds = before.copy()
    seeds[10, 18:22, 18:22] = 1 - seeds[10, 18:22, 18:22]
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_image(prepared.geometry, seeds), segmentation, find_segment(segmentation, "liver"),
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    refine = session.prepare_refine(volume, segmentation, "liver", "ct")
    request = run_on_worker(session, refine)
    assert request.error is None, request.error
    session.apply(refine, request.result)
    after = segment_mask(segmentation, volume, "liver")
    # Whether the engine refines its kept result (result.refined) or reruns depends on the cost of its plan, which
    # is tiny for this model: refinement itself is checked in test_server_refine and test_pipeline_refine.
    written = from_inclusive(request.result.box)
    edit = Box((10, 18, 18), (11, 22, 22))
    assert written.union(edit) == written  # the refined box holds the edit (the context may reach past the kept region)
    written = written.union(refine.region)  # what the session wrote
    outside = np.ones(SHAPE, bool)
    outside[written.slices] = False
    np.testing.assert_array_equal(after[outside], seeds[outside])


def test_a_cancelled_request_writes_nothing(scene, session, volume):
    segmentation = new_segmentation(scene, volume)
    prepared = session.prepare_segment(volume, segmentation, "liver", "ct")
    worker = Worker()
    request = worker.submit(lambda r: (r.cancel(), session.run(prepared, r))[1], "segment")
    assert request.finished.wait(120)
    worker.close()
    assert isinstance(request.error, JobCancelled)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0


def test_engine_refusals_carry_the_servers_own_message(scene, session, volume):
    prepared = session.prepare_segment(volume, new_segmentation(scene, volume), "x" * 400, "ct")
    error = run_on_worker(session, prepared).error
    assert isinstance(error, EngineError) and "300" in str(error) and "HTTP 400" in str(error)


def test_a_wrong_token_is_refused_on_connect(scene, engine):
    with pytest.raises(EngineError, match="refused the token"):
        SegmentationSession(scene).connect(engine.url, "not-the-token")

