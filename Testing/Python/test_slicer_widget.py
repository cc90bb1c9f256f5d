"""MedalS.py's own panel, driven key by key as a user drives it (see slicer_widget_harness for what is real).

Each test of a numbered section reproduces one way Slicer's own code broke the panel (it failed on the module
before the fix): the parameter node rewriting the prompt box on every keystroke, leaving the module or closing
the scene, engine set-up errors, the Segment Editor's source volume and keyboard shortcuts, Reload and Test
without an engine, and the worker starved of the GIL. Then the whole workflow, and the Models section.
"""
import logging
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import slicer
from slicer_fixtures import add_volume, oblique_geometry
from slicer_widget_harness import GilHoldingIdle, Slicer
from weights_fixtures import folder_files, write_docker_archive, write_official_folder
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from MedalSLib import launcher
from MedalSLib.client import ImageRef
from MedalSLib.launcher import engine_command
from MedalSLib.prompts import painted_masks, segments_by_prompt
from MedalSLib.results import find_segment
from MedalSLib.scene import oriented_image, volume_geometry
from MedalSLib.session import EngineChoice, SegmentationSession

from medals.weights.testing import make_tiny_model

SHAPE = (20, 40, 40)
PROMPTS = "liver\nleft kidney"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def engine(tiny_model, tmp_path_factory):
    """One real `medals serve` process for the tests that only need an engine to talk to."""
    env = {**os.environ, "MEDALS_HOME": str(tmp_path_factory.mktemp("home"))}
    owner = SegmentationSession(None)
    owner.ensure_engine(EngineChoice(command=tuple(engine_command(sys.executable, device="cpu",
                                                                  model=str(tiny_model))), env=env))
    yield owner.local_engine
    owner.stop_local_engine()


@pytest.fixture
def app(tmp_path):
    session = Slicer(tmp_path / "settings")
    yield session
    session.close()


def add_test_volume(scene, name="CT"):
    voxels = (np.random.default_rng(0).random(SHAPE) * 200).astype(np.int16)
    return add_volume(scene, oblique_geometry(shape=SHAPE, spacing=(3.0, 1.5, 1.5)), voxels, name=name)


def open_module(app, volume=True):
    """Slicer with a volume loaded, then the module opened (loaded on first use, then entered)."""
    if volume:
        add_test_volume(app.scene)
    widget = app.load()
    app.enter()
    return widget


def type_text(app, edit, text):
    """Key by key, as a user types: letters through QTest, a new line as the Return key."""
    edit.setFocus()
    app.pump()
    for index, line in enumerate(text.split("\n")):
        if index:
            QTest.keyClick(edit, Qt.Key_Return)
        for character in line:
            QTest.keyClick(edit, character)
            app.pump()


def connect_remote(app, widget, engine):
    widget.ui.engineModeComboBox.currentIndex = 2
    widget.ui.serverUrlLineEdit.text = engine.url
    widget.ui.serverTokenLineEdit.text = engine.token
    widget.ui.testConnectionButton.click()
    app.wait_until(lambda: widget._request is None, timeout=60)
    assert widget.session.info, widget.ui.statusLabel.text


# -- 1: the prompt box ---------------------------------------------------------------------------------------------

def test_widget_typing_keeps_the_prompt_text_and_its_undo(app):
    widget = open_module(app)
    edit = widget.ui.promptsTextEdit
    type_text(app, edit, PROMPTS)
    assert edit.toPlainText() == PROMPTS  # the wrapper's setPlainText put the cursor first: "revil"
    assert widget._parameterNode.prompts == PROMPTS
    assert widget.ui.segmentButton.enabled
    QTest.keySequence(edit, "Ctrl+Z")
    app.pump()
    assert edit.toPlainText() != PROMPTS and PROMPTS.startswith(edit.toPlainText())  # the box's own undo
    assert widget._parameterNode.prompts == edit.toPlainText()
    assert not app.escaped.errors


def test_widget_prompt_box_follows_the_parameter_node(app):
    """Prompts saved with a scene, or set by a script, still show in the box."""
    widget = open_module(app)
    widget._parameterNode.prompts = "spleen"
    app.pump()
    assert widget.ui.promptsTextEdit.toPlainText() == "spleen"
    app.close_scene()
    assert widget.ui.promptsTextEdit.toPlainText() == ""


def test_widget_completion_popup_stays_open_while_typing(app, engine):
    widget = open_module(app)
    connect_remote(app, widget, engine)
    edit = widget.ui.promptsTextEdit
    type_text(app, edit, "lef")
    popup = widget.completer.popup()
    assert popup.isVisible()  # hidden at once when the wrapper rewrote the box
    assert "left kidney" in [popup.model().index(row, 0).data() for row in range(popup.model().rowCount())]
    assert edit.toPlainText() == "lef"


# -- 2: leaving the module, closing the scene ----------------------------------------------------------------------

def test_widget_leaving_and_reentering_the_module(app):
    widget = open_module(app)
    type_text(app, widget.ui.promptsTextEdit, "liver")
    app.exit()
    assert widget._parameterNode is None
    app.enter()
    assert widget.ui.promptsTextEdit.toPlainText() == "liver"
    assert widget._parameterNode.inputVolume is not None
    assert not app.escaped.errors


def test_widget_scene_close_forgets_the_results(app):
    widget = open_module(app)
    type_text(app, widget.ui.promptsTextEdit, "liver")
    called = []
    widget.session.forget_results = lambda: called.append(True)
    app.close_scene()
    assert called  # aborted by an AttributeError before it got there
    assert widget._parameterNode is not None and widget._parameterNode.inputVolume is None
    assert not app.escaped.errors


# -- 5: engine set-up errors ---------------------------------------------------------------------------------------

def test_widget_engine_setup_failure_shows_a_dialog_not_a_traceback(app, monkeypatch, caplog):
    """PyTorch Utils' pip failing raises CalledProcessError (SlicerPyTorch PyTorchUtils.py): dialog and status."""
    failing = types.ModuleType("PyTorchUtils", "Stand-in of the PyTorch extension whose pip install fails.")

    class PyTorchUtilsLogic:
        def torchInstalled(self):
            return False

        def installTorch(self, askConfirmation=False, **kwargs):
            raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", "torch"])

    failing.PyTorchUtilsLogic = PyTorchUtilsLogic
    monkeypatch.setitem(sys.modules, "PyTorchUtils", failing)
    have = launcher.installed_version  # Slicer's Python has no torch yet (the set-up reads installed metadata)
    monkeypatch.setattr(launcher, "installed_version",
                        lambda name, path=None: None if name == "torch" else have(name, path))
    widget = open_module(app)
    widget.ui.engineModeComboBox.currentIndex = 0
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *args, **kwargs: True)  # the user agrees
    with caplog.at_level(logging.ERROR):
        widget.ui.startEngineButton.click()
        app.pump()
    assert not app.escaped.errors
    assert widget.ui.statusLabel.text.startswith("Start engine failed:")
    assert "CalledProcessError" in widget.ui.statusLabel.text or "torch" in widget.ui.statusLabel.text
    assert any(record.getMessage().startswith("Start engine failed:") for record in caplog.records)  # errorDisplay
    assert widget.ui.startEngineButton.enabled


def test_widget_failing_local_engine_start(app, tmp_path, caplog):
    """A Python without the engine: the start fails on the worker, with the interpreter's words, as a dialog."""
    widget = open_module(app)
    widget.ui.engineModeComboBox.currentIndex = 1
    widget.ui.pythonPathLineEdit.currentPath = str(tmp_path / "no-such-python")
    with caplog.at_level(logging.ERROR):
        widget.ui.startEngineButton.click()
        app.wait_until(lambda: widget._request is None, timeout=30)
    assert widget.ui.statusLabel.text.startswith("Start engine failed:")
    assert "no-such-python" in widget.ui.statusLabel.text
    assert any("Start engine failed" in record.getMessage() for record in caplog.records)
    assert widget.ui.engineStatusLabel.text == "Not connected."
    assert not app.escaped.errors


def test_widget_older_slicer_is_told_the_version_it_needs(app, monkeypatch, caplog):
    """Slicer 5.8 (Python 3.9): Start engine says which Slicer is needed, before anything is installed."""
    monkeypatch.setattr(slicer.app, "minorVersion", 8)
    widget = open_module(app)
    widget.ui.engineModeComboBox.currentIndex = 0
    with caplog.at_level(logging.ERROR):
        widget.ui.startEngineButton.click()
        app.pump()
    assert widget.ui.statusLabel.text.startswith("Start engine failed:")
    assert "5.10" in widget.ui.statusLabel.text
    assert widget._request is None and not app.escaped.errors


# -- 7, 8: the embedded Segment Editor -----------------------------------------------------------------------------

def test_widget_no_source_volume_before_a_segmentation(app):
    """vtkSlicerSegmentEditorLogic.cxx SetSourceVolumeNode: an error per call while no segmentation is set."""
    widget = open_module(app)
    type_text(app, widget.ui.promptsTextEdit, "liver")
    assert widget._parameterNode.outputSegmentation is None
    assert not [m for m in app.vtkErrors.messages if "SetSourceVolumeNode" in m]
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Seeds")
    widget._parameterNode.outputSegmentation = segmentation
    app.pump()
    assert widget.ui.segmentEditorWidget.sourceVolumeNode() is widget._parameterNode.inputVolume
    assert not app.vtkErrors.messages


def test_widget_segment_editor_shortcuts_follow_the_module(app):
    """SegmentEditor.py installs the editor's shortcuts in enter() and removes them in exit()."""
    widget = open_module(app)
    editor = widget.ui.segmentEditorWidget
    assert editor.shortcuts and all(s.parent() is app.mainWindow for s in editor.shortcuts)
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Seeds")
    segmentation.CreateDefaultDisplayNodes()
    widget._parameterNode.outputSegmentation = segmentation
    app.pump()
    editor.saveStateForUndo()
    segmentation.GetSegmentation().AddEmptySegment("liver")
    widget.ui.segmentButton.setFocus()
    QTest.keySequence(app.mainWindow, "Ctrl+Z")
    app.pump()
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0  # the editor's undo, by Ctrl+Z
    app.exit()
    assert not editor.shortcuts


# -- 9: Reload and Test --------------------------------------------------------------------------------------------

def test_widget_reload_and_test_without_an_engine_reports_and_returns(app, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "medals", None)  # Slicer's Python has no engine, and none is configured
    open_module(app)
    with caplog.at_level(logging.INFO):
        assert app.reload_and_test() is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # tryWithErrorDisplay's dialog
    assert any("not installed" in r.getMessage() or "engine" in r.getMessage() for r in caplog.records)


# -- 10: the worker and the GIL ------------------------------------------------------------------------------------

def worker_rate(app, widget, call, idle, seconds=1.5):
    """Calls per second that a request on the widget's worker makes while the panel polls it and Qt idles."""
    count = [0]

    def work(request):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            call()
            count[0] += 1

    widget._submit(work, "Measure", lambda result: None)
    app.wait_until(lambda: widget._request is None, idle=idle)
    return count[0] / seconds


def test_widget_poll_tick_gives_the_worker_the_interpreter(app, engine, monkeypatch):
    """Engine polls and uploads per second from the worker while Slicer idles holding the GIL, with the old tick
    (returns at once) and the new one (waits on the request): measured in one run, reported as ratios."""
    widget = open_module(app, volume=False)
    connect_remote(app, widget, engine)
    image = ImageRef.of((np.random.default_rng(0).random((32, 96, 96)) * 200).astype(np.int16), (3.0, 1.5, 1.5))
    calls = {"polls": widget.session.client.health, "uploads": lambda: widget.session.client.upload(image)}
    gil_held = GilHoldingIdle(lambda: widget.pollTimer.remainingTime / 1000)
    rates = {}
    for name, call in calls.items():
        rates[name, "GIL free"] = worker_rate(app, widget, call, idle=None)
        for tick, wait_s in (("old tick", 0.0), ("new tick", app.python.POLL_WAIT_S)):
            monkeypatch.setattr(app.python, "POLL_WAIT_S", wait_s)
            rates[name, tick] = worker_rate(app, widget, call, idle=gil_held)
    for name in calls:
        print(f"{name}/s while Qt idles holding the GIL: old tick {rates[name, 'old tick']:.1f}, new tick "
              f"{rates[name, 'new tick']:.1f} ({rates[name, 'new tick'] / rates[name, 'old tick']:.1f}x); GIL free "
              f"{rates[name, 'GIL free']:.1f}")
    assert rates["polls", "new tick"] > 3 * rates["polls", "old tick"]
    assert rates["uploads", "new tick"] > 2 * rates["uploads", "old tick"]


# -- the whole workflow --------------------------------------------------------------------------------------------

WORKFLOW_SHAPE = (40, 96, 96)


def segment_names(segmentation):
    return [segmentation.GetSegmentation().GetNthSegment(i).GetName()
            for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]


def liver_mask(segmentation, volume):
    return painted_masks(segmentation, segments_by_prompt(segmentation, ["liver"]), volume).get(
        "liver", np.zeros(WORKFLOW_SHAPE, np.uint8))


def run_button(app, widget, press, timeout=120):
    press()
    app.pump()
    app.wait_until(lambda: widget._request is None, timeout=timeout)


def test_widget_cpu_bf16_starts_the_engine_in_bfloat16(app, tiny_model, tmp_path, monkeypatch):
    """The device choice "cpu bf16" starts a real engine with `--precision bf16` on the CPU."""
    monkeypatch.setenv("MEDALS_HOME", str(tmp_path / "home"))
    widget = open_module(app)
    ui = widget.ui
    ui.engineModeComboBox.currentIndex = 1
    ui.pythonPathLineEdit.currentPath = sys.executable
    ui.modelLineEdit.text = str(tiny_model)
    ui.deviceComboBox.currentText = "cpu bf16"
    run_button(app, widget, ui.startEngineButton.click)
    assert ui.statusLabel.text.startswith("Connected to the engine"), ui.statusLabel.text
    assert widget.session.info["precision"] == "bf16" and ui.engineStatusLabel.text.endswith(", in bfloat16.")
    command = widget.session.local_engine.command
    assert command[command.index("--device") + 1] == "cpu" and command[command.index("--precision") + 1] == "bf16"
    widget.onStopEngine()


def test_widget_user_workflow(app, tiny_model, tmp_path, monkeypatch):
    """Load a volume, start the local engine, type prompts and take a completion, Ctrl+Enter, paint, Refine,
    Undo, Cancel mid-job, leave and re-enter the module, close the scene: as a user, with a real engine."""
    monkeypatch.setenv("MEDALS_HOME", str(tmp_path / "home"))
    voxels = (np.random.default_rng(1).random(WORKFLOW_SHAPE) * 200).astype(np.int16)
    volume = add_volume(app.scene, oblique_geometry(shape=WORKFLOW_SHAPE, spacing=(3.0, 1.5, 1.5)), voxels)
    widget = app.load()
    app.enter()
    ui = widget.ui
    assert ui.inputVolumeSelector.currentNode() is volume

    # The engine: another Python environment (this one), the tiny model, on the CPU.
    ui.engineModeComboBox.currentIndex = 1
    ui.pythonPathLineEdit.currentPath = sys.executable
    ui.modelLineEdit.text = str(tiny_model)
    ui.deviceComboBox.currentText = "cpu"
    run_button(app, widget, ui.startEngineButton.click)
    assert ui.statusLabel.text.startswith("Connected to the engine"), ui.statusLabel.text
    assert "Connected to local engine" in ui.engineStatusLabel.text

    # Prompts, key by key, with a completion taken from the popup.
    edit = ui.promptsTextEdit
    type_text(app, edit, "liver\nlef")
    popup = widget.completer.popup()
    assert popup.isVisible()
    for _ in range(popup.model().rowCount()):
        QTest.keyClick(popup, Qt.Key_Down)
        if popup.currentIndex().data() == "left kidney":
            break
    QTest.keyClick(popup, Qt.Key_Return)
    app.pump()
    assert edit.toPlainText() == "liver\nleft kidney"
    QTest.keySequence(edit, "Ctrl+Z")  # the completion is one step of the box's undo
    assert edit.toPlainText() == "liver\nlef"
    QTest.keySequence(edit, "Ctrl+Shift+Z")
    assert edit.toPlainText() == "liver\nleft kidney" == widget._parameterNode.prompts

    # Ctrl+Enter segments.
    run_button(app, widget, lambda: QTest.keySequence(edit, "Ctrl+Return"))
    assert ui.statusLabel.text.startswith("Segment done"), ui.statusLabel.text
    segmentation = widget._parameterNode.outputSegmentation
    assert segment_names(segmentation) == ["liver", "left kidney"]
    assert ui.segmentEditorWidget.sourceVolumeNode() is volume and ui.seedMappingTable.rowCount == 2

    # Paint into "liver" as the Segment Editor does (undo state first, then the labelmap), then Refine.
    ui.segmentEditorWidget.saveStateForUndo()
    segmented = liver_mask(segmentation, volume)
    painted = segmented.copy()
    painted[20, 40:56, 40:56] = 1
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_image(volume_geometry(volume), painted), segmentation, find_segment(segmentation, "liver"),
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    app.pump()
    assert ui.refineButton.enabled
    run_button(app, widget, ui.refineButton.click)
    assert ui.statusLabel.text.startswith("Refine done"), ui.statusLabel.text

    # Undo the refinement: the user's painted segment comes back.
    assert ui.undoButton.enabled
    ui.undoButton.click()
    app.pump()
    assert np.array_equal(liver_mask(segmentation, volume), painted)

    # Cancel a job once the engine is working on it: nothing is written. (Eight refinement passes per window
    # keep the engine busy long enough to be caught working on any machine.)
    ui.stagesComboBox.currentIndex = 0
    ui.refineIterationsSpinBox.value = 8
    ui.segmentButton.click()
    app.wait_until(lambda: "stage" in ui.statusLabel.text or widget._request is None, timeout=60)
    assert widget._request is not None, "the job finished before it could be cancelled"
    ui.cancelButton.click()
    app.wait_until(lambda: widget._request is None, timeout=60)
    assert ui.statusLabel.text == "Segment cancelled; nothing was written."
    assert np.array_equal(liver_mask(segmentation, volume), painted)

    # Leave the module and come back: the panel is as it was.
    app.exit()
    assert not ui.segmentEditorWidget.shortcuts
    app.enter()
    assert edit.toPlainText() == "liver\nleft kidney"
    assert widget._parameterNode.outputSegmentation is segmentation and ui.undoButton.enabled

    # Close the scene: the results and their undo are gone with it.
    app.close_scene()
    assert not widget.session.can_undo and not ui.undoButton.enabled
    assert edit.toPlainText() == ""
    engine = widget.session.local_engine
    app.unload()
    assert not engine.running
    assert not app.escaped.errors


# -- the Models section --------------------------------------------------------------------------------------------

def test_widget_models_lists_the_engines_models_and_chooses_one(app, tmp_path, monkeypatch):
    home = tmp_path / "home"
    make_tiny_model(home / "models" / "tiny")
    monkeypatch.setenv("MEDALS_HOME", str(home))
    widget = open_module(app, volume=False)
    ui = widget.ui
    ui.engineModeComboBox.currentIndex = 1
    ui.pythonPathLineEdit.currentPath = sys.executable
    ui.modelsCollapsibleButton.collapsed = False
    run_button(app, widget, ui.refreshModelsButton.click)
    combo = ui.modelComboBox
    assert [combo.itemText(i) for i in range(combo.count)] == ["medals-demo", "tiny"]
    assert "bundled demo" in ui.modelsStatusLabel.text and "tiny" in ui.modelsStatusLabel.text
    combo.setFocus()
    QTest.keyClick(combo, Qt.Key_Down)  # the user picks the next entry
    app.pump()
    assert ui.modelLineEdit.text == combo.currentText
    assert slicer.util.settingsValue("MedalS/Model", "") == combo.currentText
    assert "from the next request" in ui.modelsStatusLabel.text


@pytest.mark.slow  # about 30 s: the engine reads every checkpoint of the release before it refuses it
def test_widget_models_import_runs_in_the_engine_and_reports(app, tmp_path, monkeypatch, parity, parity_weights,
                                                            caplog):
    """The authors' archive, in miniature (narrower than the official network, so the engine refuses it after
    reading it): the import runs off the GUI thread with progress, and its failure is a dialog and a status."""
    release = write_official_folder(tmp_path / "release", parity, parity_weights("text_encoder_keys.json", 0))
    archive = write_docker_archive(tmp_path / "teamx_alldata.tar.gz",
                                   [folder_files(release, "workspace/checkpoints")])
    monkeypatch.setenv("MEDALS_HOME", str(tmp_path / "home"))
    widget = open_module(app, volume=False)
    ui = widget.ui
    ui.engineModeComboBox.currentIndex = 1
    ui.pythonPathLineEdit.currentPath = sys.executable
    monkeypatch.setattr(sys.modules["qt"].QFileDialog, "getOpenFileName", lambda *args: str(archive))  # the pick
    progress = set()
    with caplog.at_level(logging.ERROR):
        widget.importArchiveAction.trigger()
        assert widget._request is not None and not ui.importWeightsButton.enabled  # on the worker
        app.wait_until(lambda: progress.add(ui.statusLabel.text) or widget._request is None, timeout=300)
    assert any(text.startswith("Importing weights: ") for text in progress)  # the engine's own log lines
    assert ui.statusLabel.text.startswith("Import weights failed: importing teamx_alldata.tar.gz failed:")
    assert any(r.getMessage().startswith("Import weights failed") for r in caplog.records)
    assert not (tmp_path / "home" / "models" / "official").exists()
    assert not app.escaped.errors


def test_widget_models_remote_engine_shows_its_model(app, engine):
    widget = open_module(app, volume=False)
    ui = widget.ui
    assert not ui.importWeightsButton.visible  # the section starts collapsed
    ui.modelsCollapsibleButton.collapsed = False
    assert ui.importWeightsButton.visible and ui.refreshModelsButton.visible
    connect_remote(app, widget, engine)
    assert not ui.importWeightsButton.visible and not ui.refreshModelsButton.visible and ui.modelsStatusLabel.visible
    assert "The server serves the model 'tiny'" in ui.modelsStatusLabel.text
    assert "imported on the server" in ui.modelsStatusLabel.text
    ui.engineModeComboBox.currentIndex = 1
    assert ui.importWeightsButton.visible
