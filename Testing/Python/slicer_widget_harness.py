"""MedalS.py's own widget, logic and self-test, run as Slicer runs them: PySide6 offscreen, real MRML.

Real here: Qt (PySide6), MRML, the segmentations logic and the Segment Editor logic (`slicer-core`, a build of
Slicer's main branch), Slicer's own `slicer.util` (shipped by `slicer-core`), `MedalS.py` itself (imported from
the module's folder) and, in the tests, a `medals serve` process. Stand-ins only for what has no wheel, each
following the Slicer, CTK or PythonQt source named in its docstring (read at Slicer v5.10.0 and main):

- `PythonQtStyle` and the `qt` module: PythonQt's face of Qt (github:commontk/PythonQt src/PythonQtInstanceWrapper.cpp,
  PythonQtSignalReceiver.cpp): Qt properties as attributes, `name`, `connect("signal(args)", slot)`.
- `ctk`: ctkCollapsibleButton, ctkPathLineEdit (github:commontk/CTK Libs/Widgets).
- `qMRMLWidget`, `qMRMLNodeComboBox` (Libs/MRML/Widgets), `qMRMLSegmentEditorWidget`
  (Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.cxx), which forwards to the real
  vtkSlicerSegmentEditorLogic as the 5.10 widget does.
- `slicer.parameterNodeWrapper` (Base/Python/slicer/parameterNodeWrapper/{wrapper,guiConnectors,serializers,
  validators}.py): every bound widget is written on every parameter change; QTextEdit through setPlainText.
- `slicer.ScriptedLoadableModule` (Base/Python/slicer/ScriptedLoadableModule.py), `slicer.app`, `slicer.modules`,
  the main window (Base/QTGUI/qSlicerApplication, qSlicerMainWindow: only what MedalS.py and slicer.util use).

`Slicer` drives the module as Slicer's module manager does (load, enter, exit, scene close, Reload and Test).
`GilHoldingIdle` models PythonQt's event loop, which idles with the GIL held (PythonQt's thread support is off).
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import os
import re
import sys
import time
import types
import typing
import unittest
import xml.etree.ElementTree as ElementTree

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import slicer  # noqa: E402
import vtk  # noqa: E402
from PySide6 import QtCore, QtGui, QtTest, QtWidgets  # noqa: E402
from PySide6.QtCore import Property, QObject, Signal  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402
from slicer_fixtures import MODULE_DIR  # noqa: E402

MODULE_FILE = MODULE_DIR / "MedalS.py"
MAIN_WINDOW_NAME = "qSlicerMainWindow"


# -- PythonQt ------------------------------------------------------------------------------------------------------

_SIGNAL_ARGUMENT_TYPES = {"bool": bool, "int": int, "double": float, "QString": str}
_properties_by_class: dict[type, frozenset] = {}


def _qt_properties(obj) -> frozenset:
    """The names of `obj`'s C++ Qt properties (a stand-in's Python `Property` is an attribute already)."""
    cls = type(obj)
    if cls not in _properties_by_class:
        meta = QObject.metaObject(obj)
        names = {meta.property(i).name() for i in range(meta.propertyCount())} | {"name"}
        python = {name for klass in cls.__mro__ for name, value in vars(klass).items() if isinstance(value, Property)}
        _properties_by_class[cls] = frozenset(names - python)
    return _properties_by_class[cls]


class PythonQtStyle:
    """A QObject as PythonQt shows it to Python (PythonQtInstanceWrapper.cpp, PythonQtSignalReceiver.cpp).

    Qt properties are attributes that shadow their getters (`w.text`, `w.enabled = False`, `combo.currentIndex`),
    `name` is the objectName, and `obj.connect("clicked(bool)", slot)` connects by signature; a slot taking
    fewer arguments than the signal gets the first ones.
    """

    def __getattribute__(self, name):
        if name[0] != "_" and name in _qt_properties(self):
            name = "objectName" if name == "name" else name
            for getter in (name, "is" + name[0].upper() + name[1:]):
                method = getattr(super(), getter, None)
                if callable(method):  # the C++ getter; QObject.property would come back here for some
                    return method()
            return QObject.property(self, name)
        if name in ("connect", "disconnect"):  # PySide's QObject attribute lookup would return its own
            return types.MethodType(getattr(PythonQtStyle, name), self)
        return super().__getattribute__(name)

    def __setattr__(self, name, value):
        if name[0] != "_" and name in _qt_properties(self):
            name = "objectName" if name == "name" else name
            setter = getattr(super(), "set" + name[0].upper() + name[1:], None)
            if callable(setter):
                setter(value)
            else:
                QObject.setProperty(self, name, value)
        else:
            super().__setattr__(name, value)

    def connect(self, signature, slot):
        return bool(pythonqt_signal(self, signature).connect(slot))

    def disconnect(self, signature, slot=None):
        signal = pythonqt_signal(self, signature)
        return bool(signal.disconnect(slot) if slot is not None else signal.disconnect())


def pythonqt_signal(obj, signature: str):
    """`obj`'s signal named by a Qt signature such as "clicked(bool)" (the overload of that argument type)."""
    match = re.fullmatch(r"(\w+)\((.*)\)", signature.replace(" ", ""))
    if match is None:
        raise ValueError(f"not a signal signature: {signature!r}")
    name, arguments = match.groups()
    signal = QObject.__getattribute__(obj, name)
    argument_types = [_SIGNAL_ARGUMENT_TYPES.get(a, object) for a in arguments.split(",") if a]
    if len(argument_types) == 1 and argument_types[0] is not object:
        try:
            return signal[argument_types[0]]
        except (KeyError, IndexError, TypeError):
            pass
    return signal


def pythonqt_class(base: type) -> type:
    return type(base.__name__, (PythonQtStyle, base), {})


def build_qt_module() -> types.ModuleType:
    """`import qt` as in Slicer: one namespace of Qt classes, every QObject class with PythonQt's face."""
    qt = types.ModuleType("qt", "PythonQt's `qt` module, on PySide6 (see slicer_widget_harness).")
    for source in (QtCore, QtGui, QtWidgets, QtTest):
        for name in dir(source):
            value = getattr(source, name)
            if name.startswith("Q") and isinstance(value, type) and issubclass(value, QObject):
                value = pythonqt_class(value)
            if name.startswith("Q"):
                setattr(qt, name, value)
    qt.QUiLoader = SlicerUiLoader
    # PythonQt returns only the chosen path (PySide: the path and the filter); tests choose by replacing these.
    qt.QFileDialog.getOpenFileName = staticmethod(lambda *args: QtWidgets.QFileDialog.getOpenFileName(*args)[0])
    return qt


# -- CTK -----------------------------------------------------------------------------------------------------------

class ctkCollapsibleButton(PythonQtStyle, QtWidgets.QGroupBox):
    """CTK Libs/Widgets/ctkCollapsibleButton.cpp: a titled box (`text`) whose children `collapsed` hides.

    As there, each child keeps the visibility its owner gave it ("visibilityToParent"): a child shown while the
    box is collapsed stays hidden until the box opens, and one hidden stays hidden when it opens.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self._isCollapsed = False
        self._forcingVisibility = False

    def _text(self):
        return self.title()

    def _setText(self, text):
        self.setTitle(text)

    def _collapsed(self):
        return self._isCollapsed

    def _setCollapsed(self, collapsed):
        self._isCollapsed = bool(collapsed)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            self._showChild(child)

    text = Property(str, _text, _setText)
    collapsed = Property(bool, _collapsed, _setCollapsed)

    def _showChild(self, child):
        self._forcingVisibility = True
        try:
            child.setVisible(child.property("visibilityToParent") is not False and not self._isCollapsed)
        finally:
            self._forcingVisibility = False

    def childEvent(self, event):
        if event.added() and event.child().isWidgetType():
            event.child().installEventFilter(self)
        super().childEvent(event)

    def eventFilter(self, child, event):
        if not self._forcingVisibility and event.type() in (QtCore.QEvent.ShowToParent, QtCore.QEvent.HideToParent):
            child.setProperty("visibilityToParent", event.type() == QtCore.QEvent.ShowToParent)
            if self._isCollapsed:
                self._showChild(child)
        return False


class ctkPathLineEdit(PythonQtStyle, QtWidgets.QWidget):
    """CTK Libs/Widgets/ctkPathLineEdit: a path field with `currentPath` and `currentPathChanged(QString)`."""

    currentPathChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._lineEdit = QtWidgets.QLineEdit(self)
        QtWidgets.QHBoxLayout(self).addWidget(self._lineEdit)
        self._lineEdit.textChanged.connect(self.currentPathChanged)

    def _currentPath(self):
        return self._lineEdit.text()

    def _setCurrentPath(self, path):
        self._lineEdit.setText(path)

    currentPath = Property(str, _currentPath, _setCurrentPath)


def build_ctk_module() -> types.ModuleType:
    ctk = types.ModuleType("ctk", "CTK widget stand-ins (see slicer_widget_harness).")
    ctk.ctkCollapsibleButton = ctkCollapsibleButton
    ctk.ctkPathLineEdit = ctkPathLineEdit
    return ctk


# -- qMRML widgets -------------------------------------------------------------------------------------------------

class qMRMLWidget(PythonQtStyle, QtWidgets.QWidget):
    """Libs/MRML/Widgets/qMRMLWidget: holds a scene; `setMRMLScene` emits `mrmlSceneChanged(vtkMRMLScene*)`."""

    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)


class qMRMLNodeComboBox(PythonQtStyle, QtWidgets.QComboBox):
    """Libs/MRML/Widgets/qMRMLNodeComboBox: the scene's nodes of `nodeTypes` (plus "None"), by ID.

    `currentNodeChanged(vtkMRMLNode*)` is emitted only when the selection changes, as the real one does.
    Added or removed nodes update the list (the real one observes the scene).
    """

    currentNodeChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._nodeTypes = []
        self._scene = None
        self._sceneTags = []
        self.currentIndexChanged.connect(lambda index: self.currentNodeChanged.emit(self.currentNode()))

    def _getNodeTypes(self):
        return list(self._nodeTypes)

    def _setNodeTypes(self, types_):
        self._nodeTypes = list(types_)
        self._refresh()

    nodeTypes = Property("QStringList", _getNodeTypes, _setNodeTypes)

    def setMRMLScene(self, scene):
        self._forgetScene()
        self._scene = scene
        self._sceneTags = [] if scene is None else [
            scene.AddObserver(event, lambda caller, event: self._refresh())
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent)]
        if scene is not None:  # as qvtkConnect does, the observations end with the widget
            self.destroyed.connect(lambda *args, scene=scene, tags=self._sceneTags: [scene.RemoveObserver(tag)
                                                                                      for tag in tags])
        self._refresh()

    def _forgetScene(self):
        for tag in self._sceneTags:
            self._scene.RemoveObserver(tag)
        self._sceneTags = []

    def _nodes(self):
        if self._scene is None:
            return []
        nodes = []
        for index in range(self._scene.GetNumberOfNodes()):
            node = self._scene.GetNthNode(index)
            if any(node.IsA(nodeType) for nodeType in self._nodeTypes) and not node.GetHideFromEditors():
                nodes.append(node)
        return nodes

    def _refresh(self):
        current = QtWidgets.QComboBox.currentData(self)
        blocked = self.blockSignals(True)
        self.clear()
        self.addItem("None", None)
        for node in self._nodes():
            self.addItem(node.GetName(), node.GetID())
        index = self.findData(current) if current else 0
        self.setCurrentIndex(max(index, 0))
        self.blockSignals(blocked)
        if current and index < 0:
            self.currentNodeChanged.emit(None)

    def currentNode(self):
        nodeID = QtWidgets.QComboBox.currentData(self)
        return self._scene.GetNodeByID(nodeID) if nodeID and self._scene is not None else None

    def setCurrentNode(self, node):
        if node is not None and self.findData(node.GetID()) < 0:
            self._refresh()
        self.setCurrentIndex(max(0, self.findData(node.GetID())) if node is not None else 0)


class qMRMLSegmentEditorWidget(qMRMLWidget):
    """Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.cxx (5.10 and main), on the real logic.

    Like the 5.10 widget, every call goes to vtkSlicerSegmentEditorLogic, made verbose once a scene is set: so
    `setSourceVolumeNode` before a segmentation logs the logic's own error. `installKeyboardShortcuts(parent)`
    puts the real shortcuts on the main window (Undo and Z, Redo and Y, Esc, Space, digits);
    `uninstallKeyboardShortcuts` deletes them. Effects and views do not exist here: only which one is active and
    whether views are observed.
    """

    EFFECTS = ("Paint", "Draw", "Erase", "Level tracing", "Grow from seeds", "Scissors", "Islands", "Smoothing")

    def __init__(self, parent=None):
        super().__init__(parent)
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.shortcuts: list[QtGui.QShortcut] = []
        self.activeEffectName = None
        self.viewsObserved = False
        self._editorNode = None
        grid = QtWidgets.QGridLayout(self)
        for index, name in enumerate(self.EFFECTS):
            button = QtWidgets.QToolButton(self)
            button.setText(name)
            grid.addWidget(button, index // 4, index % 4)

    def setMRMLScene(self, scene):
        self.logic.SetMRMLScene(scene)
        self.logic.SetVerbose(True)
        super().setMRMLScene(scene)

    def setMRMLSegmentEditorNode(self, node):
        if self._editorNode is node:
            return
        self._editorNode = node
        self.logic.SetSegmentEditorNode(node)

    def setSegmentationNode(self, node):
        if self.logic.GetSegmentationNode() is node:
            return
        self.logic.SetSegmentationNode(node)
        self.setActiveEffect(None)

    def segmentationNode(self):
        return self.logic.GetSegmentationNode()

    def setSourceVolumeNode(self, node):
        self.logic.SetSourceVolumeNode(node)

    def sourceVolumeNode(self):
        return self._editorNode.GetSourceVolumeNode() if self._editorNode is not None else None

    def saveStateForUndo(self):
        self.logic.SaveStateForUndo()

    def undo(self):
        self.logic.Undo()

    def redo(self):
        self.logic.Redo()

    def setActiveEffect(self, effect):
        self.activeEffectName = effect

    def activeEffect(self):
        return self.activeEffectName

    def setupViewObservations(self):
        self.viewsObserved = True

    def removeViewObservations(self):
        self.viewsObserved = False

    def installKeyboardShortcuts(self, parent=None):
        self.uninstallKeyboardShortcuts()
        parent = parent or slicer.util.mainWindow()
        actions = [(QtGui.QKeySequence(str(i % 10)), lambda i=i: self._toggleEffect(i)) for i in range(1, 11)]
        actions += [(QtGui.QKeySequence(QtCore.Qt.Key_Escape), lambda: self.setActiveEffect(None)),
                    (QtGui.QKeySequence(QtCore.Qt.Key_Space), lambda: self._toggleEffect(-1)),
                    (QtGui.QKeySequence(QtCore.Qt.Key_Z), self.undo),
                    (QtGui.QKeySequence(QtGui.QKeySequence.Undo), self.undo),
                    (QtGui.QKeySequence(QtCore.Qt.Key_Y), self.redo),
                    (QtGui.QKeySequence(QtGui.QKeySequence.Redo), self.redo)]
        for keys, action in actions:
            shortcut = QtGui.QShortcut(keys, parent)
            shortcut.activated.connect(action)
            self.shortcuts.append(shortcut)

    def uninstallKeyboardShortcuts(self):
        for shortcut in self.shortcuts:
            shortcut.activated.disconnect()
            shortcut.setParent(None)
            shortcut.deleteLater()
        self.shortcuts.clear()

    def _toggleEffect(self, index):
        name = self.EFFECTS[index - 1] if 0 < index <= len(self.EFFECTS) else None
        self.activeEffectName = None if self.activeEffectName == name else name


# -- .ui loading ---------------------------------------------------------------------------------------------------

class SlicerUiLoader(QUiLoader):
    """Slicer's QUiLoader: Qt widgets with PythonQt's face, CTK and qMRML classes by name.

    The .ui's signal-slot connections are made after loading (Qt's by-signature connections cannot name the
    stand-ins' Python signals), as Qt makes them: sender's signal to receiver's slot.
    """

    CUSTOM = {cls.__name__: cls for cls in (ctkCollapsibleButton, ctkPathLineEdit, qMRMLWidget, qMRMLNodeComboBox,
                                            qMRMLSegmentEditorWidget)}

    def __init__(self, parent=None):
        super().__init__(parent)
        for cls in self.CUSTOM.values():
            self.registerCustomWidget(cls)
        self._qt = sys.modules.get("qt")

    def createWidget(self, className, parent=None, name=""):
        cls = self.CUSTOM.get(className) or (getattr(self._qt, className, None) if self._qt else None)
        if isinstance(cls, type) and issubclass(cls, PythonQtStyle):
            widget = cls(parent)
            widget.setObjectName(name)
            return widget
        return super().createWidget(className, parent, name)

    def load(self, source, parent=None):
        path = source.fileName() if isinstance(source, QtCore.QFile) else str(source)
        root = ElementTree.parse(path).getroot()
        connections = root.find("connections")
        if connections is not None:
            root.remove(connections)
        buffer = QtCore.QBuffer()
        buffer.setData(ElementTree.tostring(root))
        buffer.open(QtCore.QIODevice.ReadOnly)
        widget = super().load(buffer, parent)
        def find(name):
            return widget if QObject.objectName(widget) == name else widget.findChild(QObject, name)

        for connection in [] if connections is None else connections.findall("connection"):
            sender, signal, receiver, slot = (connection.find(tag).text for tag in
                                              ("sender", "signal", "receiver", "slot"))
            getattr(find(sender), signal.split("(")[0]).connect(getattr(find(receiver), slot.split("(")[0]))
        return widget


# -- the parameter node wrapper ------------------------------------------------------------------------------------

class Choice:
    """validators.py Choice."""

    def __init__(self, choices):
        self.choices = choices

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


class WithinRange:
    """validators.py WithinRange."""

    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value):
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class _Field:
    """One parameter: its serializer (serializers.py) and validators. Dicts are stored as JSON (Slicer stores
    them as a list of pairs; MedalS.py only reads and assigns whole dicts)."""

    def __init__(self, name, annotation, default):
        self.name = name
        self.type = typing.get_origin(annotation) is typing.Annotated and typing.get_args(annotation)[0] or annotation
        self.validators = list(getattr(annotation, "__metadata__", ()))
        self.isNode = isinstance(self.type, type) and issubclass(self.type, slicer.vtkMRMLNode)
        base = typing.get_origin(self.type) or self.type
        self.base = base
        self.default = default if default is not _MISSING else {str: "", int: 0, bool: False, dict: {}}.get(base)

    def isIn(self, node):
        return node.HasParameter(self.name)

    def read(self, node):
        if self.isNode:
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        if self.base is bool:
            return text == "True"
        if self.base is int:
            return int(text)
        if self.base is dict:
            return dict(json.loads(text or "{}"))
        return text

    def write(self, node, value):
        for validator in self.validators:
            validator.validate(value)
        with slicer.util.NodeModify(node):
            if self.isNode:
                node.SetParameter(self.name, "")
                node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            elif self.base is bool:
                node.SetParameter(self.name, "True" if value else "False")
            elif self.base is dict:
                node.SetParameter(self.name, json.dumps(dict(value)))
            else:
                node.SetParameter(self.name, str(value))


_MISSING = object()


class _Connector:
    """guiConnectors.py: one widget adapted to one parameter's type (`read`, `write`, a changed signal)."""

    def __init__(self, widget, field):
        self.widget, self.field = widget, field
        choice = next((v for v in field.validators if isinstance(v, Choice)), None)
        within = next((v for v in field.validators if isinstance(v, WithinRange)), None)
        if isinstance(widget, qMRMLNodeComboBox) and field.isNode:       # qMRMLNodeComboBoxToNodeConnector
            widget.nodeTypes = [field.type.__name__]
            self.signal, self.read, self.write = widget.currentNodeChanged, widget.currentNode, widget.setCurrentNode
        elif isinstance(widget, QtWidgets.QComboBox) and choice is not None:   # QComboBoxToStringableConnector
            widget.clear()
            for item in choice.choices:
                widget.addItem(str(item))
            self.signal = widget.currentIndexChanged
            self.read = lambda: choice.choices[widget.currentIndex]
            self.write = lambda value: setattr(widget, "currentIndex", choice.choices.index(value))
        elif isinstance(widget, QtWidgets.QTextEdit) and field.base is str:  # QTextEditPlainTextToStrConnector
            self.signal, self.read, self.write = widget.textChanged, widget.toPlainText, widget.setPlainText
        elif isinstance(widget, QtWidgets.QLineEdit) and field.base is str:  # QLineEditToStrConnector (5.10)
            self.signal, self.read = widget.textChanged, lambda: widget.text
            self.write = lambda value: value != widget.text and setattr(widget, "text", value)
        elif isinstance(widget, QtWidgets.QSpinBox) and field.base is int:   # QSliderOrSpinBoxToIntConnector
            if within is not None:
                widget.setRange(within.minimum, within.maximum)
            self.signal, self.read = widget.valueChanged, lambda: widget.value
            self.write = lambda value: setattr(widget, "value", value)
        elif isinstance(widget, QtWidgets.QCheckBox) and field.base is bool:  # QCheckBoxToBoolConnector
            self.signal, self.read = widget.stateChanged, lambda: widget.checked
            self.write = lambda value: setattr(widget, "checked", value)
        else:
            raise RuntimeError(f"Unable to create GUI connector from datatype '{field.type}' to widget type "
                               f"'{type(widget).__name__}'")
        self._callback = None

    def onChanged(self, callback):
        if self._callback is not None:
            self.signal.disconnect(self._callback)
        self._callback = callback
        if callback is not None:
            self.signal.connect(callback)


def parameterNodeWrapper(cls):
    """wrapper.py `parameterNodeWrapper`: typed properties over a vtkMRMLScriptedModuleNode, and GUI binding.

    As in wrapper.py: missing parameters get their defaults at construction; `connectGui(gui)` binds every child
    widget with a `SlicerParameterName` property, writes each once, and from then on every change of the
    parameter node writes EVERY bound widget (`_updateGUIFromParameterNode`); the observer doing so is added
    per `connectGui` and never removed; `disconnectGui(tag)` only disconnects the widgets' signals.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {name: _Field(name, annotation, cls.__dict__.get(name, _MISSING)) for name, annotation in hints.items()}

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        self._parameterGUIs = {}
        self._nextParameterGUIsTag = 0
        self._updatingGUIFromParameterNode = False
        for field in fields.values():
            if not field.isIn(parameterNode):
                field.write(parameterNode, field.default)

    def getValue(self, name):
        return fields[name].read(self.parameterNode)

    def setValue(self, name, value):
        fields[name].write(self.parameterNode, value)

    def updateGui(self):
        if self._updatingGUIFromParameterNode:
            return
        try:
            self._updatingGUIFromParameterNode = True
            with slicer.util.NodeModify(self.parameterNode):
                for mapping in list(self._parameterGUIs.values()):
                    for name, connector in mapping.items():
                        connector.write(self.getValue(name))
        finally:
            self._updatingGUIFromParameterNode = False

    def connectGui(self, gui):
        mapping = {}
        for widget in gui.__dict__.values():
            name = widget.property("SlicerParameterName") if isinstance(widget, QObject) else None
            if name:
                mapping[name] = _Connector(widget, fields[name])
        tag = self._nextParameterGUIsTag
        self._nextParameterGUIsTag += 1
        self._parameterGUIs[tag] = mapping
        for name, connector in mapping.items():
            connector.write(self.getValue(name))

            def callback(*args, name=name, connector=connector):
                with slicer.util.NodeModify(self.parameterNode):
                    if not self._updatingGUIFromParameterNode:
                        self.setValue(name, connector.read())
            connector.onChanged(callback)
        self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: updateGui(self))
        return tag

    def disconnectGui(self, tag):
        for connector in self._parameterGUIs.pop(tag, {}).values():
            connector.onChanged(None)

    namespace = {"__init__": __init__, "getValue": getValue, "setValue": setValue, "connectGui": connectGui,
                 "disconnectGui": disconnectGui, "allParameters": fields, "__doc__": cls.__doc__,
                 "StartModify": lambda self: self.parameterNode.StartModify(),
                 "EndModify": lambda self, wasModified: self.parameterNode.EndModify(wasModified),
                 "AddObserver": lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(
                     event, callback, priority),
                 "RemoveObserver": lambda self, tag: self.parameterNode.RemoveObserver(tag),
                 "Modified": lambda self: self.parameterNode.Modified()}
    for name in fields:
        namespace[name] = property(lambda self, name=name: self.getValue(name),
                                   lambda self, value, name=name: self.setValue(name, value))
    return type(cls.__name__, (), namespace)


def build_parameter_node_wrapper_module() -> types.ModuleType:
    module = types.ModuleType("slicer.parameterNodeWrapper", "Stand-in of Slicer's parameterNodeWrapper.")
    module.parameterNodeWrapper, module.Choice, module.WithinRange = parameterNodeWrapper, Choice, WithinRange
    return module


# -- scripted modules ----------------------------------------------------------------------------------------------

class ScriptedLoadableModule:
    """ScriptedLoadableModule.py: describes the module and registers its self-test in `slicer.selfTests`."""

    def __init__(self, parent):
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title, parent.categories, parent.dependencies, parent.contributors = "", [], [], []
        slicer.selfTests[self.moduleName] = self.runTest

    def runTest(self, msec=100, **kwargs):
        testCase = getattr(sys.modules[self.__module__], self.moduleName + "Test")()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    """ScriptedLoadableModule.py: the panel's parent widget and layout; `resourcePath` next to the module file."""

    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__.removesuffix("Widget")
        self.parent = parent
        self.layout = parent.layout()

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

    def setup(self):
        pass

    def cleanup(self):
        pass

    def enter(self):
        pass

    def exit(self):
        pass


class ScriptedLoadableModuleLogic:
    """ScriptedLoadableModule.py: the module's singleton vtkMRMLScriptedModuleNode as its parameter node."""

    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__.removesuffix("Logic")
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node:
            if node.GetAttribute("ModuleName") != self.moduleName:
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return slicer.mrmlScene.AddNode(node)


class ScriptedLoadableModuleTest(unittest.TestCase):
    """ScriptedLoadableModule.py: a TestCase whose `delayDisplay` shows (here: logs) progress."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages: list[str] = []

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        self.messages.append(message)
        logging.info(message)


def build_scripted_module() -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule", "Stand-in of Slicer's ScriptedLoadableModule.py.")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


# -- the application -----------------------------------------------------------------------------------------------

class ModuleManager(PythonQtStyle, QObject):
    """qSlicerModuleManager: only the signal a scripted widget connects to."""

    moduleAboutToBeUnloaded = Signal(str)


class SlicerApplication:
    """`slicer.app` (qSlicerApplication) over the running QApplication: testing mode on, as in Slicer's tests, so
    slicer.util's dialogs log instead of blocking; `connect("aboutToQuit()", slot)`; the start-up environment."""

    def __init__(self, application):
        self._application = application
        self._moduleManager = ModuleManager()
        self.applicationName = "Slicer"
        # Q_PROPERTY majorVersion/minorVersion (Base/QTCore/qSlicerCoreApplication.h): the oldest Slicer supported.
        self.majorVersion, self.minorVersion = 5, 10

    def __getattr__(self, name):
        return getattr(self._application, name)

    def testingEnabled(self):
        return True

    def startupEnvironment(self):
        return QtCore.QProcessEnvironment.systemEnvironment()

    def moduleManager(self):
        return self._moduleManager

    def connect(self, signature, slot):
        return bool(pythonqt_signal(self._application, signature).connect(slot))


class ModuleParent:
    """qSlicerScriptedLoadableModule: title, help and the module file's path."""

    def __init__(self, path):
        self.path = str(path)


class ModulePanel(qMRMLWidget):
    """qSlicerScriptedLoadableModuleWidget: the module's panel, a qMRMLWidget with a vertical layout."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setLayout(QtWidgets.QVBoxLayout())
        self.isEntered = False


# -- installing it all ---------------------------------------------------------------------------------------------

def install() -> None:
    """Make `import qt, ctk, slicer...` in MedalS.py resolve as in Slicer; idempotent."""
    if "qt" in sys.modules and getattr(sys.modules["qt"], "QUiLoader", None) is SlicerUiLoader:
        return
    application = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    sys.modules["qt"] = build_qt_module()
    sys.modules["ctk"] = build_ctk_module()
    sys.modules["slicer.parameterNodeWrapper"] = slicer.parameterNodeWrapper = build_parameter_node_wrapper_module()
    sys.modules["slicer.ScriptedLoadableModule"] = slicer.ScriptedLoadableModule = build_scripted_module()
    slicer.qMRMLWidget, slicer.qMRMLNodeComboBox = qMRMLWidget, qMRMLNodeComboBox
    slicer.qMRMLSegmentEditorWidget = qMRMLSegmentEditorWidget
    slicer.app = SlicerApplication(application)
    slicer.selfTests = {}
    slicer.modules = types.SimpleNamespace()


class VtkErrors:
    """VTK's error output (vtkErrorMacro), collected: what Slicer shows in its error log."""

    def __init__(self):
        self.messages: list[str] = []
        self._window = vtk.vtkOutputWindow.GetInstance()

        @vtk.calldata_type(vtk.VTK_STRING)
        def record(caller, event, message):
            self.messages.append(message)

        self._tag = self._window.AddObserver(vtk.vtkCommand.ErrorEvent, record)

    def close(self):
        self._window.RemoveObserver(self._tag)


class EscapedExceptions:
    """Exceptions that reached Qt or VTK from a Python slot or observer: in Slicer, a console traceback."""

    def __init__(self):
        self.errors: list[BaseException] = []
        self._previous = sys.excepthook
        sys.excepthook = self._record

    def _record(self, kind, error, trace):
        self.errors.append(error)
        self._previous(kind, error, trace)

    def close(self):
        sys.excepthook = self._previous


class Slicer:
    """A Slicer session with the MedalS module: main window, scene, module manager's calls on the module.

    `load()` imports MedalS.py under the name Slicer gives it and runs the widget's setup; `enter`, `exit`,
    `close_scene` (vtkMRMLScene.Clear, which fires StartClose/EndClose as Slicer's File > Close Scene does),
    `unload` (cleanup), and `reload_and_test` (ScriptedLoadableModuleWidget.onReloadAndTest's error handling).
    """

    def __init__(self, settings_dir):
        install()
        QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
        QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, str(settings_dir))
        self.application = QtWidgets.QApplication.instance()
        self.scene = slicer.vtkMRMLScene()
        self.segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentationsLogic.SetMRMLScene(self.scene)
        slicer.mrmlScene = self.scene
        self.mainWindow = sys.modules["qt"].QMainWindow()
        self.mainWindow.setObjectName(MAIN_WINDOW_NAME)
        self.mainWindow.resize(520, 1000)
        self.vtkErrors = VtkErrors()
        self.escaped = EscapedExceptions()
        self.module = self.widget = self.panel = None

    def load(self):
        spec = importlib.util.spec_from_file_location("MedalS", MODULE_FILE)
        python_module = importlib.util.module_from_spec(spec)
        sys.modules["MedalS"] = python_module
        spec.loader.exec_module(python_module)
        self.python = python_module
        slicer.modules.medals = ModuleParent(MODULE_FILE)
        self.module = python_module.MedalS(slicer.modules.medals)
        self.panel = ModulePanel()
        self.panel.setMRMLScene(self.scene)
        self.mainWindow.setCentralWidget(self.panel)
        self.widget = python_module.MedalSWidget(self.panel)
        self.widget.setup()
        self.mainWindow.show()
        self.mainWindow.activateWindow()
        QtTest.QTest.qWaitForWindowExposed(self.mainWindow)
        return self.widget

    def enter(self):
        self.panel.isEntered = True
        self.widget.enter()
        self.pump()

    def exit(self):
        self.widget.exit()
        self.panel.isEntered = False
        self.pump()

    def close_scene(self):
        self.scene.Clear(0)
        self.pump()

    def reload_and_test(self):
        """What the Reload and Test button does after reloading (ScriptedLoadableModuleWidget.onReloadAndTest):
        the self-test inside tryWithErrorDisplay. Returns what escaped it (Slicer: a dialog and a traceback)."""
        try:
            with slicer.util.tryWithErrorDisplay("Reload and Test failed."):
                slicer.selfTests["MedalS"](msec=0)
        except BaseException as error:  # unittest.SkipTest included: the button has no test runner around it
            return error
        return None

    def unload(self):
        if self.widget is not None:
            self.widget.cleanup()
            self.widget = None

    def close(self):
        self.unload()
        self.mainWindow.close()
        self.mainWindow.deleteLater()
        self.pump()
        self.vtkErrors.close()
        self.escaped.close()

    # -- the event loop ------------------------------------------------------------------------------------------

    def pump(self, seconds: float = 0.0):
        """Run Qt's event loop for `seconds` (at least one pass)."""
        deadline = time.monotonic() + seconds
        while True:
            self.application.processEvents()
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)

    def wait_until(self, predicate, timeout: float = 60.0, idle=None):
        """Run the event loop until `predicate()` holds; `idle` (default: sleep) is what the loop does between
        passes."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached in {timeout:g} s")
            self.application.processEvents()
            (idle or (lambda: time.sleep(0.005)))()
        self.application.processEvents()


class GilHoldingIdle:
    """Slicer's idle event loop as PythonQt leaves it: Qt waits for its next event with the GIL held.

    PythonQt's thread support is off in Slicer (no `setEnableThreadSupport` in Slicer or CTK), so the main thread
    keeps the GIL outside Python code, also while Qt sleeps until its next timer. Modelled by sleeping until
    `next_timer_s()` (default: 100 ms) in a C call made through ctypes.PyDLL, which keeps the GIL: a Python
    worker thread then runs only while the main thread runs Python code or releases the GIL itself.
    """

    def __init__(self, next_timer_s=lambda: 0.1):
        self._usleep = ctypes.PyDLL(None).usleep
        self._usleep.argtypes = [ctypes.c_uint]
        self._next_timer_s = next_timer_s

    def __call__(self):
        self._usleep(int(1e6 * min(max(self._next_timer_s(), 0.001), 0.1)))
