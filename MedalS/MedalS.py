"""MedalS: text-prompted 3D segmentation (the Medal S model) in 3D Slicer.

This file holds what only Slicer can run: the module description, a thin widget that moves values between
the panel, the parameter node and the logic, and the in-Slicer self-test. Everything that can be tested
without Slicer's GUI lives in `Logic/MedalSLib` (scene ⇄ arrays, prompts and seeds, results and undo, the
engine client, the local engine launcher, the request worker).
"""
import logging
import os
import shutil
import sys
import time
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "Logic"))

from MedalSLib.client import JobCancelled  # noqa: E402
from MedalSLib.errors import ModuleError  # noqa: E402
from MedalSLib.jobs import Progress, Worker  # noqa: E402
from MedalSLib.launcher import (SlicerPythonSetup, check_slicer_version, device_choice, engine_command,  # noqa: E402
                                engine_importable)
from MedalSLib.models import OFFICIAL_NAME, import_weights, list_models  # noqa: E402
from MedalSLib.prompts import completion_names, parse_prompts, segments_by_prompt, structure_key  # noqa: E402
from MedalSLib.results import new_segmentation, result_summary  # noqa: E402
from MedalSLib.session import EngineChoice, EngineOptions, SegmentationSession, describe_engine  # noqa: E402

MODALITY_ITEMS = ("auto", "CT", "MRI", "US", "PET", "Microscopy")
STAGE_ITEMS = {"Coarse and fine": ("coarse", "fine"), "Coarse only": ("coarse",), "Fine only": ("fine",)}
ENGINE_MODES = ("slicer", "python", "remote")
"""In the order of the engine combo box: local in Slicer's Python, local in another Python, remote server."""
NO_SEEDS = "(no seeds)"
SETTINGS = "MedalS/"
PROGRESS_DELAY_S = 0.3
"""Requests faster than this never flash a progress bar."""
POLL_INTERVAL_MS = 100
POLL_WAIT_S = 0.08
"""How long each poll tick waits on the request. PythonQt runs without thread support, so Slicer's main thread
holds the GIL while Qt idles: the request's worker thread runs mainly while a tick waits (which releases it)."""


class MedalS(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedalS"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedalS contributors"]
        self.parent.helpText = (
            "Type the structures you want, one per line (\"liver\", \"left kidney\"), and get each back as a named, "
            "coloured segment. Paint seeds where the result is wrong and press Refine: only the region around your "
            "edit is recomputed. The model runs in a separate engine process, on this computer or on a server. "
            "See <a href=\"https://github.com/medals-slicer/SlicerMedalS/blob/main/docs/slicer.md\">the user guide</a>.")
        self.parent.acknowledgementText = (
            "Medal S: Spatio-Textual Prompt Model for Medical Segmentation (Shi et al., 2025). Please cite the paper "
            "when you use the model's results.")


class CompletionKeys(qt.QObject):
    """Return, Enter and Tab in the open completion popup take the highlighted name.

    QCompleter offers every key to its widget first, and a QTextEdit takes these (a new line, a tab): without
    this filter the popup could only be used with the mouse. Installed on the popup after QCompleter's own
    filter, so it sees the keys first.
    """

    KEYS = (qt.Qt.Key_Return, qt.Qt.Key_Enter, qt.Qt.Key_Tab)

    def __init__(self, choose):
        qt.QObject.__init__(self)
        self.choose = choose

    def eventFilter(self, popup, event):
        if (event.type() != qt.QEvent.KeyPress or event.key() not in self.KEYS
                or event.modifiers() & qt.Qt.ControlModifier):
            return False
        index = popup.currentIndex()
        if not index.isValid():
            return False
        popup.hide()
        self.choose(index.data())
        return True


@parameterNodeWrapper
class MedalSParameterNode:
    """The panel's state, saved with the scene (engine settings are per computer and live in the settings).

    seedOverrides: structure → name of the segment that seeds it ("" for none), where the user chose another
    segment than the one of the same name in the mapping table.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modality: Annotated[str, Choice(list(MODALITY_ITEMS))] = "auto"
    prompts: str = ""
    seedOverrides: dict[str, str]
    stages: Annotated[str, Choice(list(STAGE_ITEMS))] = "Coarse and fine"
    refineIterations: Annotated[int, WithinRange(0, 8)] = 0
    keepLargest: bool = False
    probabilityMaps: bool = False


class MedalSLogic(ScriptedLoadableModuleLogic):
    """Gives the widget its typed parameter node; the work itself is in `MedalSLib.session`."""

    def getParameterNode(self) -> MedalSParameterNode:
        return MedalSParameterNode(super().getParameterNode())


class MedalSWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wiring only: panel ⇄ parameter node, buttons → `SegmentationSession` on the request worker."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.session = None
        self.worker = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._request = None
        self._requestStarted = 0.0
        self._onRequestDone = None
        self._observedSegmentation = None
        self._seedTableKey = None
        self._completionBlock = None
        self._showingPrompts = False
        self._models = []

    # -- set-up and tear-down ----------------------------------------------------------------------------------

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedalS.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedalSLogic()
        self.session = SegmentationSession(slicer.mrmlScene)
        self.worker = Worker()
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.connect("timeout()", self.onPoll)

        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self._segmentEditorNode())
        self.completer = qt.QCompleter([])
        self.completer.setWidget(self.ui.promptsTextEdit)
        self.completer.setCaseSensitivity(qt.Qt.CaseInsensitive)
        self.completer.connect("activated(QString)", self.onCompletionChosen)
        self.completionKeys = CompletionKeys(self.onCompletionChosen)
        self.completer.popup().installEventFilter(self.completionKeys)
        self.ui.promptsTextEdit.connect("textChanged()", self.onPromptsEdited)
        for keys in ("Ctrl+Return", "Ctrl+Enter"):
            shortcut = qt.QShortcut(qt.QKeySequence(keys), self.ui.promptsTextEdit)
            shortcut.setContext(qt.Qt.WidgetWithChildrenShortcut)
            shortcut.connect("activated()", self.onSegment)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.refineButton.connect("clicked(bool)", self.onRefine)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.startEngineButton.connect("clicked(bool)", self.onStartEngine)
        self.ui.stopEngineButton.connect("clicked(bool)", self.onStopEngine)
        self.ui.testConnectionButton.connect("clicked(bool)", self.onTestConnection)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.onRefreshModels)
        self.ui.modelComboBox.connect("activated(int)", self.onModelChosen)
        importMenu = qt.QMenu(self.ui.importWeightsButton)
        self.importArchiveAction = qt.QAction("Docker image archive (teamx_alldata.tar.gz)…", importMenu)
        self.importFolderAction = qt.QAction("Checkpoint folder…", importMenu)
        self.importArchiveAction.connect("triggered()", self.onImportArchive)
        self.importFolderAction.connect("triggered()", self.onImportFolder)
        importMenu.addAction(self.importArchiveAction)
        importMenu.addAction(self.importFolderAction)
        self.ui.importWeightsButton.setMenu(importMenu)
        self._loadEngineSettings()
        self.ui.engineModeComboBox.connect("currentIndexChanged(int)", self.onEngineSettingsChanged)
        for lineEdit in (self.ui.serverUrlLineEdit, self.ui.modelLineEdit, self.ui.enginePackageLineEdit):
            lineEdit.connect("editingFinished()", self.onEngineSettingsChanged)
        self.ui.pythonPathLineEdit.connect("currentPathChanged(QString)", self.onEngineSettingsChanged)
        self.ui.deviceComboBox.connect("currentTextChanged(QString)", self.onEngineSettingsChanged)
        self._showEngineMode()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        slicer.app.connect("aboutToQuit()", self.session.stop_local_engine)
        self._setBusy(False)
        self.initializeParameterNode()

    def cleanup(self):
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.removeObservers()
        self.pollTimer.stop()
        self.session.stop_local_engine()
        self.worker.close(timeout_s=1.0)

    def enter(self):
        # As Slicer's Segment Editor module does (SegmentEditor.py enter/exit; qMRMLSegmentEditorWidget.h in 5.10
        # and main): the editor's keys (Ctrl+Z, Z, Y, effect numbers, Esc, Space) work in the views while this
        # module is shown, and only then.
        self.ui.segmentEditorWidget.installKeyboardShortcuts()
        self.initializeParameterNode()
        self.ui.segmentEditorWidget.setupViewObservations()

    def exit(self):
        # Leave no painting effect active in the views once the user works in another module.
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.ui.segmentEditorWidget.removeViewObservations()
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.session.forget_results()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None):
        node = self._parameterNode
        volume = node.inputVolume if node else None
        segmentation = node.outputSegmentation if node else None
        self.ui.segmentEditorWidget.setSegmentationNode(segmentation)
        # vtkSlicerSegmentEditorLogic.cxx SetSourceVolumeNode (5.10, main) refuses a source volume, with an error,
        # until the editor has a segmentation.
        if segmentation is not None:
            self.ui.segmentEditorWidget.setSourceVolumeNode(volume)
        if node is not None:
            self._showPrompts(node.prompts)
        self._observeSegmentation(segmentation)
        self._updateSeedTable()
        self._updateButtons()

    # -- running requests --------------------------------------------------------------------------------------

    def onSegment(self):
        if self._request is not None:
            return
        self._run("Segment", lambda volume, segmentation, options: self.session.prepare_segment(
            volume, segmentation, self._parameterNode.prompts, self._parameterNode.modality.lower(), options))

    def onRefine(self):
        if self._request is not None:
            return
        self._run("Refine", lambda volume, segmentation, options: self.session.prepare_refine(
            volume, segmentation, self._parameterNode.prompts, self._parameterNode.modality.lower(), options,
            dict(self._parameterNode.seedOverrides)))

    def _run(self, action, prepare):
        """Read the request on this thread, then run engine start-up and the job on the worker."""
        try:
            choice = self._engineChoice()
            segmentation = self._outputSegmentation()
            options = EngineOptions(stages=STAGE_ITEMS[self._parameterNode.stages],
                                    refine_iterations=self._parameterNode.refineIterations,
                                    keep_largest=self._parameterNode.keepLargest,
                                    probabilities=self._parameterNode.probabilityMaps)
            prepared = prepare(self._parameterNode.inputVolume, segmentation, options)
        except Exception as error:  # engine set-up runs here too: pip, PyTorch Utils, dialogs
            self._showError(action, error)
            return

        def work(request):
            self.session.ensure_engine(choice, request)
            return self.session.run(prepared, request)

        self._submit(work, action, lambda result: self._apply(action, prepared, result))

    def _apply(self, action, prepared, result):
        # The editor's own undo (Ctrl+Z) then steps over the whole result, not over the last brush stroke.
        self.ui.segmentEditorWidget.saveStateForUndo()
        stats = self.session.apply(prepared, result)
        self.ui.statusLabel.text = f"{action} done — {result_summary(stats)}."
        self._updateSeedTable()

    def onUndo(self):
        try:
            self.session.undo()
            self.ui.statusLabel.text = "The last MedalS result was undone."
        except Exception as error:
            self._showError("Undo", error)
        self._updateButtons()

    def onCancel(self):
        if self._request is not None:
            self._request.cancel()
            self.ui.statusLabel.text = "Cancelling…"

    def _submit(self, work, action, onDone):
        self._request = self.worker.submit(work, action)
        self._onRequestDone = onDone
        self._requestStarted = time.monotonic()
        self._setBusy(True)
        self.pollTimer.start()

    def onPoll(self):
        request = self._request
        if not request.finished.wait(POLL_WAIT_S):
            if time.monotonic() - self._requestStarted >= PROGRESS_DELAY_S:
                self.ui.progressBar.visible = True
                fraction = request.progress.fraction
                self.ui.progressBar.setRange(0, 0 if fraction is None else 100)
                self.ui.progressBar.value = 0 if fraction is None else int(round(100 * fraction))
            self.ui.statusLabel.text = request.progress.text
            return
        self.pollTimer.stop()
        self._request, onDone = None, self._onRequestDone
        self._setBusy(False)
        if isinstance(request.error, JobCancelled) or (request.error and request.cancel_requested.is_set()):
            self.ui.statusLabel.text = f"{request.description} cancelled; nothing was written."
        elif request.error is not None:
            self._showError(request.description, request.error)
        else:
            try:
                onDone(request.result)
            except Exception as error:
                self._showError(request.description, error)
        self._updateEngineStatus()
        self._updateButtons()

    def _setBusy(self, busy):
        self.ui.cancelButton.enabled = busy
        if not busy:
            self.ui.progressBar.visible = False  # shown by onPoll once a request outlasts PROGRESS_DELAY_S
        for button in (self.ui.startEngineButton, self.ui.stopEngineButton, self.ui.testConnectionButton,
                       self.ui.refreshModelsButton, self.ui.importWeightsButton):
            button.enabled = not busy
        self._updateButtons()

    def _updateButtons(self):
        idle = self._request is None
        ready = bool(self._parameterNode and self._parameterNode.inputVolume
                     and parse_prompts(self._parameterNode.prompts))
        self.ui.segmentButton.enabled = idle and ready
        self.ui.refineButton.enabled = idle and ready and bool(self._parameterNode.outputSegmentation)
        self.ui.undoButton.enabled = idle and self.session.can_undo

    def _showError(self, action, error):
        """A user-facing error in the status line and a dialog; anything unexpected also goes to the log."""
        if isinstance(error, ModuleError):
            message = str(error)
        else:
            message = f"unexpected {type(error).__name__}: {error} (details in the Python console)"
            logging.error("MedalS %s failed", action, exc_info=error)
        self.ui.statusLabel.text = f"{action} failed: {message}"
        slicer.util.errorDisplay(f"{action} failed: {message}")

    def _outputSegmentation(self):
        """The chosen output segmentation, or a new one on the input volume's grid."""
        node = self._parameterNode
        if node.outputSegmentation is None and node.inputVolume is not None:
            node.outputSegmentation = new_segmentation(slicer.mrmlScene, node.inputVolume)
        return node.outputSegmentation

    # -- prompts: completion and the seed mapping table --------------------------------------------------------

    def onPromptsEdited(self):
        if self._showingPrompts:
            return
        text = self.ui.promptsTextEdit.toPlainText()
        if self._parameterNode is not None and self._parameterNode.prompts != text:
            self._parameterNode.prompts = text
        cursor = self.ui.promptsTextEdit.textCursor()
        prefix = cursor.block().text()[:cursor.positionInBlock()].strip()
        popup = self.completer.popup()
        if len(prefix) < 2:
            popup.hide()
            return
        self.completer.setCompletionPrefix(prefix)
        if self.completer.completionCount() == 0:
            popup.hide()
            return
        self._completionBlock = cursor.blockNumber()
        rectangle = self.ui.promptsTextEdit.cursorRect()
        rectangle.setWidth(max(200, popup.sizeHintForColumn(0) + 30))
        self.completer.complete(rectangle)

    def onCompletionChosen(self, name):
        """Replace the completed line by the chosen name, as one step of the box's own undo."""
        edit = self.ui.promptsTextEdit
        cursor = edit.textCursor()
        block = cursor.document().findBlockByNumber(self._completionBlock)
        cursor.setPosition(block.position())
        cursor.movePosition(qt.QTextCursor.EndOfBlock, qt.QTextCursor.KeepAnchor)
        cursor.insertText(name)
        edit.setTextCursor(cursor)

    def _showPrompts(self, text):
        """Show the parameter node's prompts (a loaded scene, a script) in the box.

        The box is not bound through the parameter node wrapper: it rewrites every bound widget on every change
        (setPlainText for a QTextEdit), which would move the cursor, wipe the box's undo and hide the completion
        popup at each keystroke. Text typed here is already the node's, so this writes only what differs.
        """
        edit = self.ui.promptsTextEdit
        if edit.toPlainText() == text:
            return
        self._showingPrompts = True
        try:
            edit.setPlainText(text)
        finally:
            self._showingPrompts = False

    def _setVocabulary(self, vocabulary):
        self.completer.setModel(qt.QStringListModel(completion_names(vocabulary), self.completer))

    def _observeSegmentation(self, segmentationNode):
        segmentation = segmentationNode.GetSegmentation() if segmentationNode else None
        if segmentation is self._observedSegmentation:
            return
        if self._observedSegmentation is not None:
            self.removeObserver(self._observedSegmentation, vtk.vtkCommand.AnyEvent, self.onSegmentsChanged)
        self._observedSegmentation = segmentation
        if segmentation is not None:
            self.addObserver(segmentation, vtk.vtkCommand.AnyEvent, self.onSegmentsChanged)

    def onSegmentsChanged(self, caller=None, event=None):
        self._updateSeedTable()

    def _seedTableState(self):
        """(prompts, segment names, overrides): what the seed table shows. Painting changes none of them."""
        node = self._parameterNode
        if node is None:
            return (), (), ()
        names = ()
        if node.outputSegmentation is not None:
            segmentation = node.outputSegmentation.GetSegmentation()
            names = tuple(segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments()))
        return tuple(parse_prompts(node.prompts)), names, tuple(sorted(node.seedOverrides.items()))

    def _updateSeedTable(self):
        """One row per prompt: which segment seeds it (by name unless the user chose another).

        Rebuilt only when prompts, segment names or choices change: never while the user paints, and never
        from inside one of its own combo boxes' signals.
        """
        state = self._seedTableState()
        if state == self._seedTableKey:
            return
        self._seedTableKey = state
        prompts, names, overrides = state
        overrides = {structure_key(prompt): name for prompt, name in overrides}
        segmentation = self._parameterNode.outputSegmentation if self._parameterNode else None
        byName = segments_by_prompt(segmentation, list(prompts)) if segmentation is not None else {}
        table = self.ui.seedMappingTable
        table.setRowCount(len(prompts))
        for row, prompt in enumerate(prompts):
            table.setItem(row, 0, qt.QTableWidgetItem(prompt))
            combo = qt.QComboBox()
            combo.addItems([NO_SEEDS] + list(names))
            default = segmentation.GetSegmentation().GetSegment(byName[prompt]).GetName() if prompt in byName \
                else NO_SEEDS
            chosen = overrides.get(structure_key(prompt), default) or NO_SEEDS
            combo.setCurrentIndex(max(0, combo.findText(chosen)))
            combo.connect("currentTextChanged(QString)",
                          lambda text, prompt=prompt, default=default: self.onSeedChosen(prompt, text, default))
            table.setCellWidget(row, 1, combo)

    def onSeedChosen(self, prompt, text, default):
        overrides = dict(self._parameterNode.seedOverrides)
        overrides.pop(prompt, None)
        if text != default:
            overrides[prompt] = "" if text == NO_SEEDS else text
        prompts, names, _ = self._seedTableKey
        self._seedTableKey = (prompts, names, tuple(sorted(overrides.items())))  # the combo already shows it
        self._parameterNode.seedOverrides = overrides

    # -- engine ------------------------------------------------------------------------------------------------

    def _engineMode(self):
        return ENGINE_MODES[self.ui.engineModeComboBox.currentIndex]

    def _engineChoice(self):
        """Which engine the next request uses; installs the engine into Slicer's Python first if needed."""
        check_slicer_version((slicer.app.majorVersion, slicer.app.minorVersion))
        mode = self._engineMode()
        if mode == "remote":
            return EngineChoice(url=self.ui.serverUrlLineEdit.text.strip(), token=self.ui.serverTokenLineEdit.text)
        device, precision = device_choice(self.ui.deviceComboBox.currentText)
        model = self.ui.modelLineEdit.text.strip()
        if mode == "slicer":
            with slicer.util.WaitCursor():
                self._slicerPythonSetup().ensure_engine()
        command = engine_command(self._enginePython(), device=device, model=model or None, precision=precision)
        return EngineChoice(command=tuple(command), env=slicer.util.startupEnvironment())

    def _slicerPythonSetup(self):
        try:
            import PyTorchUtils  # the PyTorch extension, a dependency of this one
            torchUtils = PyTorchUtils.PyTorchUtilsLogic()
        except ImportError:
            torchUtils = None  # needed only while torch is missing, and then the set-up says what to install
        return SlicerPythonSetup(ask=slicer.util.confirmOkCancelDisplay, torch_utils=torchUtils,
                                 pip_install=slicer.util.pip_install, module_dir=os.path.dirname(__file__),
                                 slicer_version=(slicer.app.majorVersion, slicer.app.minorVersion),
                                 engine_package=self.ui.enginePackageLineEdit.text.strip())

    def onStartEngine(self):
        self._connectOnly("Start engine")

    def onTestConnection(self):
        self._connectOnly("Test connection")

    def _connectOnly(self, action):
        try:
            choice = self._engineChoice()
        except Exception as error:  # engine set-up: pip and PyTorch Utils raise their own errors
            self._showError(action, error)
            return
        self._submit(lambda request: self.session.ensure_engine(choice, request), action, self._connected)

    def _connected(self, info):
        self.ui.statusLabel.text = f"Connected to the engine (model {info.get('model')})."


    def onStopEngine(self):
        try:
            self.session.stop_local_engine()
        except Exception as error:
            self._showError("Stop engine", error)
        self._updateEngineStatus()

    def _updateEngineStatus(self):
        info = self.session.info
        self._showRemoteModel()
        if not info:
            self.ui.engineStatusLabel.text = "Not connected."
            return
        self._setVocabulary(self.session.vocabulary)
        where = "local engine" if self.session.local_engine is not None else self.session.client.url
        self.ui.engineStatusLabel.text = describe_engine(info, where)

    def _loadEngineSettings(self):
        settings = slicer.util.settingsValue
        mode = settings(SETTINGS + "EngineMode", "slicer")
        self.ui.engineModeComboBox.currentIndex = ENGINE_MODES.index(mode) if mode in ENGINE_MODES else 0
        self.ui.pythonPathLineEdit.currentPath = settings(SETTINGS + "PythonPath", "")
        self.ui.serverUrlLineEdit.text = settings(SETTINGS + "ServerUrl", "")
        self.ui.deviceComboBox.currentText = settings(SETTINGS + "Device", "auto")
        self.ui.modelLineEdit.text = settings(SETTINGS + "Model", "")
        self.ui.enginePackageLineEdit.text = settings(SETTINGS + "EnginePackage", "")

    def onEngineSettingsChanged(self, *args):
        settings = qt.QSettings()
        settings.setValue(SETTINGS + "EngineMode", self._engineMode())
        settings.setValue(SETTINGS + "PythonPath", self.ui.pythonPathLineEdit.currentPath)
        settings.setValue(SETTINGS + "ServerUrl", self.ui.serverUrlLineEdit.text.strip())
        settings.setValue(SETTINGS + "Device", self.ui.deviceComboBox.currentText.strip())
        settings.setValue(SETTINGS + "Model", self.ui.modelLineEdit.text.strip())
        settings.setValue(SETTINGS + "EnginePackage", self.ui.enginePackageLineEdit.text.strip())
        self._showEngineMode()

    def _showEngineMode(self):
        mode = self._engineMode()
        for widget in (self.ui.pythonPathLabel, self.ui.pythonPathLineEdit):
            widget.visible = mode == "python"
        for widget in (self.ui.serverUrlLabel, self.ui.serverUrlLineEdit, self.ui.serverTokenLabel,
                       self.ui.serverTokenLineEdit):
            widget.visible = mode == "remote"
        for widget in (self.ui.deviceLabel, self.ui.deviceComboBox, self.ui.modelLabel, self.ui.modelLineEdit,
                       self.ui.startEngineButton, self.ui.stopEngineButton):
            widget.visible = mode != "remote"
        for widget in (self.ui.enginePackageLabel, self.ui.enginePackageLineEdit):
            widget.visible = mode == "slicer"
        for widget in (self.ui.modelsLabel, self.ui.modelComboBox, self.ui.refreshModelsButton,
                       self.ui.importWeightsButton):
            widget.visible = mode != "remote"
        self._showRemoteModel()

    # -- models ------------------------------------------------------------------------------------------------

    def _enginePython(self):
        """The Python that runs the local engine (and its `medals weights` commands)."""
        if self._engineMode() == "python":
            python = self.ui.pythonPathLineEdit.currentPath
            if not python:
                raise ModuleError("choose the Python environment that has the MedalS engine (Engine section)")
            return python
        if not engine_importable():
            raise ModuleError("the engine is not installed in Slicer's Python yet: press Start engine to install it")
        return _pythonSlicerExecutable()

    def onRefreshModels(self):
        if self._request is not None or self._engineMode() == "remote":
            return
        try:
            python = self._enginePython()
        except Exception as error:
            self._showError("List models", error)
            return
        environment = slicer.util.startupEnvironment()
        self._submit(lambda request: list_models(python, environment), "List models", self._showModels)

    def _showModels(self, models):
        self._models = models
        combo = self.ui.modelComboBox
        combo.clear()
        for index, model in enumerate(models):
            combo.addItem(model.name)
            combo.setItemData(index, model.label, qt.Qt.ToolTipRole)
        served = self.ui.modelLineEdit.text.strip()
        names = [model.name for model in models]
        combo.currentIndex = names.index(served) if served in names else -1
        if not models:
            self.ui.modelsStatusLabel.text = "The engine has no model: import the official weights."
            return
        listing = "; ".join(model.label for model in models)
        serving = (f"the local engine serves '{served}'." if served else
                   "no model is chosen: the engine serves its only installed model.")
        count = f"{len(models)} model{'s' if len(models) > 1 else ''}"
        self.ui.modelsStatusLabel.text = f"{count}: {listing}. Now {serving}"

    def onModelChosen(self, index):
        model = self._models[index]
        self.ui.modelLineEdit.text = model.name
        self.onEngineSettingsChanged()
        self.ui.modelsStatusLabel.text = (f"The local engine serves '{model.name}' ({model.label}) from the next "
                                          "request on; a running engine restarts to load it.")

    def onImportArchive(self):
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "The authors' Medal S Docker image archive", "",
            "Docker image archives (*.tar.gz *.tgz *.tar);;All files (*)")
        if path:
            self._importWeights(path)

    def onImportFolder(self):
        path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "The official Medal S checkpoint folder")
        if path:
            self._importWeights(path)

    def _importWeights(self, source):
        """`medals weights import SOURCE` in the engine's Python, on the worker, as the model 'official'."""
        if self._request is not None:
            return
        try:
            python = self._enginePython()
        except Exception as error:
            self._showError("Import weights", error)
            return
        replace = any(model.name == OFFICIAL_NAME and not model.bundled for model in self._models)
        if replace and not slicer.util.confirmOkCancelDisplay(
                f"A model named '{OFFICIAL_NAME}' is installed. Replace it with the weights from {source}?"):
            return
        environment = slicer.util.startupEnvironment()

        def work(request):
            return import_weights(python, source, OFFICIAL_NAME, replace, env=environment,
                                  report=lambda line: request.report(Progress(f"Importing weights: {line}")),
                                  cancel=request.cancel_requested)

        self._submit(work, "Import weights", self._imported)

    def _imported(self, summary):
        self.ui.modelLineEdit.text = OFFICIAL_NAME
        self.onEngineSettingsChanged()
        self.ui.statusLabel.text = f"Official weights imported as '{OFFICIAL_NAME}'; the local engine serves them."
        self.ui.modelsStatusLabel.text = summary
        self.onRefreshModels()

    def _showRemoteModel(self):
        """A remote engine's models live on its server: show the one it serves, and where imports happen."""
        if self._engineMode() != "remote":
            return
        model = self.session.info.get("model") if self.session.info else None
        serving = f"The server serves the model '{model}'. " if model else "Not connected to the server yet. "
        self.ui.modelsStatusLabel.text = (serving + "Official weights are imported on the server: run `medals "
                                          "weights import SOURCE` there, then serve the model with `medals serve "
                                          "--model official`.")

    def _segmentEditorNode(self):
        """A segment editor node of this module's own, so the Segment Editor module's state is left alone."""
        node = slicer.mrmlScene.GetSingletonNode("MedalS", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag("MedalS")
            node = slicer.mrmlScene.AddNode(node)
        return node


def _pythonSlicerExecutable():
    """Slicer's own Python interpreter (PythonSlicer), which runs the engine in the local Slicer-Python mode."""
    name = "PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer"
    for candidate in (shutil.which("PythonSlicer"), os.path.join(os.path.dirname(sys.executable), name)):
        if candidate and os.path.isfile(candidate):
            return candidate
    raise ModuleError("cannot find Slicer's PythonSlicer executable to run the engine; choose another Python "
                      "environment or a remote server")


class MedalSTest(ScriptedLoadableModuleTest):
    """Segments Slicer's MRHead sample with the installed model; when there is none, says why and passes.

    The engine runs in Slicer's Python when medals is installed there, else in the Python environment chosen
    in the module's settings.
    """

    PROMPTS = "brain\nwhite matter"

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segments_appear_named_after_the_prompts()

    def test_segments_appear_named_after_the_prompts(self):
        # Reload and Test calls runTest() directly, outside unittest: a missing engine is reported, not skipped.
        choice, missing = self._localEngine()
        if choice is None:
            self.delayDisplay(f"MedalS self-test not run: {missing}")
            return
        session = SegmentationSession(slicer.mrmlScene)
        try:
            try:
                info = session.ensure_engine(choice)
            except ModuleError as error:
                self.delayDisplay(f"MedalS self-test not run: the MedalS engine did not start: {error}")
                return
            self.delayDisplay(f"Engine ready: model {info.get('model')} on {info.get('device', {}).get('device')}")
            import SampleData
            volume = SampleData.downloadSample("MRHead")
            segmentation = new_segmentation(slicer.mrmlScene, volume)
            prepared = session.prepare_segment(volume, segmentation, self.PROMPTS, "mri")
            session.apply(prepared, session.run(prepared))
            names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                     for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
            self.assertEqual(names, parse_prompts(self.PROMPTS))
            self.delayDisplay("Segments appeared with the prompts' names")
        finally:
            session.stop_local_engine()

    def _localEngine(self):
        """(the engine to start, None) or (None, why there is none)."""
        if engine_importable():
            try:
                python = _pythonSlicerExecutable()
            except ModuleError as error:
                return None, str(error)
        else:
            python = slicer.util.settingsValue(SETTINGS + "PythonPath", "")
            if not python:
                return None, ("the MedalS engine is not installed in Slicer's Python and no other Python "
                              "environment is set in the module's Engine panel")
        return EngineChoice(command=tuple(engine_command(python)), env=slicer.util.startupEnvironment()), None
