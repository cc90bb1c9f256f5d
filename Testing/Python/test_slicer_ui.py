"""The module's panel (MedalS.ui) against the code that uses it, loaded as Slicer loads it (PySide6 offscreen).

Slicer's own widget classes (ctkCollapsibleButton, qMRMLNodeComboBox, qMRMLSegmentEditorWidget, ...) exist only
inside Slicer: the loader and stand-ins of slicer_widget_harness give them (and the offscreen screenshot its
look). What MedalS.py looks up is read from its source: every `self.ui.<name>`, the parameter node's fields and
the combo box choices; test_slicer_widget runs the widget itself.

Run this file directly to write the documentation's screenshot: `python Testing/Python/test_slicer_ui.py`.
"""
import ast
import os
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from slicer_fixtures import MODULE_DIR, REPO_ROOT

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PySide6.QtCore import QFile  # noqa: E402
from PySide6.QtGui import QPixmap  # noqa: E402
from PySide6.QtWidgets import QApplication, QComboBox, QLabel, QTableWidgetItem, QWidget  # noqa: E402
from slicer_widget_harness import SlicerUiLoader, install  # noqa: E402

from MedalSLib.session import MODALITY_CHOICES, STAGE_CHOICES  # noqa: E402

UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedalS.ui"
MODULE_FILE = MODULE_DIR / "MedalS.py"
SCREENSHOT = REPO_ROOT / "docs" / "screenshot_panel.png"


@pytest.fixture(scope="module")
def app():
    return QApplication.instance() or QApplication([])


def load_panel(app) -> QWidget:
    install()
    panel = SlicerUiLoader().load(QFile(str(UI_FILE)))
    assert panel is not None
    return panel


@pytest.fixture(scope="module")
def panel(app):
    return load_panel(app)


def module_source() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text())


def ui_attributes() -> set[str]:
    """Every NAME in `self.ui.NAME` in MedalS.py."""
    return {node.attr for node in ast.walk(module_source())
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"}


def module_constant(name: str):
    for node in module_source().body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"MedalS.py defines no {name}")


def parameter_fields() -> set[str]:
    for node in module_source().body:
        if isinstance(node, ast.ClassDef) and node.name == "MedalSParameterNode":
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("MedalS.py defines no MedalSParameterNode")


def ui_tree() -> ElementTree.Element:
    return ElementTree.parse(UI_FILE).getroot()


def combo_items(name: str) -> list[str]:
    widget = ui_tree().find(f".//widget[@name='{name}']")
    return [item.find("property/string").text for item in widget.findall("item")]


def test_ui_file_loads_with_slicers_widget_classes(panel):
    assert type(panel).__name__ == "qMRMLWidget"
    assert type(panel.findChild(QWidget, "segmentEditorWidget")).__name__ == "qMRMLSegmentEditorWidget"
    assert type(panel.findChild(QWidget, "inputVolumeSelector")).__name__ == "qMRMLNodeComboBox"


def test_every_widget_the_module_looks_up_exists(panel):
    looked_up = ui_attributes()
    assert len(looked_up) > 20, "the source scan found too few names to be trusted"
    missing = sorted(name for name in looked_up if panel.findChild(QWidget, name) is None)
    assert not missing, f"MedalS.py uses widgets the .ui file lacks: {missing}"


def test_widgets_bound_to_parameters_name_fields_of_the_parameter_node():
    bound = {prop.find("string").text for prop in ui_tree().iter("property")
             if prop.get("name") == "SlicerParameterName"}
    fields = parameter_fields()
    assert bound <= fields, f"bound to unknown parameters: {sorted(bound - fields)}"
    # Edited by the widget itself: the seed table, and the prompt box (the wrapper's setPlainText on every change
    # would move the cursor at each keystroke).
    assert fields - bound == {"seedOverrides", "prompts"}


def test_choice_combo_boxes_list_the_modules_choices():
    assert combo_items("modalityComboBox") == list(module_constant("MODALITY_ITEMS"))
    assert combo_items("stagesComboBox") == list(module_constant("STAGE_ITEMS"))
    assert len(combo_items("engineModeComboBox")) == len(module_constant("ENGINE_MODES"))


def test_modality_items_are_the_engines_modalities_plus_auto():
    assert tuple(item.lower() for item in module_constant("MODALITY_ITEMS")) == MODALITY_CHOICES


def test_stage_items_are_the_stage_lists_the_engine_accepts():
    assert tuple(module_constant("STAGE_ITEMS").values()) == STAGE_CHOICES


def test_scene_connections_reach_existing_scene_aware_widgets():
    root = ui_tree()
    classes = {widget.get("name"): widget.get("class") for widget in root.iter("widget")}
    connections = root.findall(".//connection")
    assert {c.find("receiver").text for c in connections} == {
        name for name, cls in classes.items() if cls in ("qMRMLNodeComboBox", "qMRMLSegmentEditorWidget")}
    assert all(c.find("slot").text == "setMRMLScene(vtkMRMLScene*)" for c in connections)


def fill_example(panel: QWidget) -> None:
    """What the panel shows mid-session, for the documentation's screenshot."""
    for name, item in (("inputVolumeSelector", "CTACardio"), ("outputSegmentationSelector", "CTACardio MedalS")):
        combo = panel.findChild(QComboBox, name)
        combo.addItem(item)
        combo.setCurrentIndex(combo.findText(item))
    panel.findChild(QWidget, "promptsTextEdit").setPlainText("liver\nspleen\nleft kidney\naorta")
    panel.findChild(QWidget, "progressBar").setValue(60)
    panel.findChild(QLabel, "statusLabel").setText("Fine stage: 6 of 10 windows, about 4 s left")
    table = panel.findChild(QWidget, "seedMappingTable")
    table.setRowCount(4)
    for row, (prompt, seed) in enumerate((("liver", "liver"), ("spleen", "(no seeds)"), ("left kidney", "left kidney"),
                                          ("aorta", "(no seeds)"))):
        table.setItem(row, 0, QTableWidgetItem(prompt))
        table.setItem(row, 1, QTableWidgetItem(seed))
    panel.findChild(QWidget, "modelsCollapsibleButton").setProperty("collapsed", False)
    models = panel.findChild(QComboBox, "modelComboBox")
    models.addItems(["medals-demo", "official"])
    models.setCurrentIndex(1)
    panel.findChild(QWidget, "modelLineEdit").setText("official")
    panel.findChild(QLabel, "modelsStatusLabel").setText(
        "The local engine serves 'official' (2.4 GB; coarse 224x224x128 @ 1.5x1.5x3 mm, fine 192x192x192 @ 1x1x1 mm).")
    panel.findChild(QLabel, "engineStatusLabel").setText(
        "Connected to local engine: medals 0.1.0 (protocol v1), model official, on CUDA (cuda:0).")
    for hidden in ("pythonPathLabel", "pythonPathLineEdit", "serverUrlLabel", "serverUrlLineEdit", "serverTokenLabel",
                   "serverTokenLineEdit"):
        panel.findChild(QWidget, hidden).setVisible(False)


def render_panel(app, path: Path, width: int = 440) -> QPixmap:
    panel = load_panel(app)
    fill_example(panel)
    panel.resize(width, panel.sizeHint.height())  # PythonQt style: a property
    panel.show()
    app.processEvents()
    pixmap = panel.grab()
    path.parent.mkdir(parents=True, exist_ok=True)
    assert pixmap.save(str(path))
    panel.close()
    return pixmap


def test_panel_renders_offscreen(app, tmp_path):
    pixmap = render_panel(app, tmp_path / "panel.png")
    image = pixmap.toImage()
    assert pixmap.width() == 440 and pixmap.height() > 600
    colours = {image.pixelColor(x, y).name() for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 10, "the grab is blank"  # text, frames and widgets drawn


if __name__ == "__main__":
    render_panel(QApplication(sys.argv), SCREENSHOT)
    print(f"wrote {SCREENSHOT.relative_to(REPO_ROOT)}")
