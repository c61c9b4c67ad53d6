"""The GUI's dialogs: the specs they build, the trust warning, error boxes and the rate input."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QDialogButtonBox, QMessageBox  # noqa: E402

from studio.app.dialogs import (  # noqa: E402
    OpenDataDialog,
    OpenModelDialog,
    ask_rate,
    ask_trust,
    make_error_box,
    make_rate_dialog,
    make_trust_box,
    model_needs_trust,
    parse_input_size,
    python_classes,
)
from studio.engine.errors import StudioError  # noqa: E402
from studio.engine.models import (  # noqa: E402
    CIFAR_MODELS,  # noqa: E402
    load_model,
    torchvision_cache_path,
)


def open_enabled(dialog) -> bool:
    return dialog.buttons.button(QDialogButtonBox.Open).isEnabled()


@pytest.fixture
def model_dialog(qtbot):
    dialog = OpenModelDialog()
    qtbot.addWidget(dialog)
    return dialog


def test_timm_tab_searches_and_builds_spec(model_dialog, qtbot):
    d = model_dialog
    d.select_tab("timm")
    assert not open_enabled(d)
    d.timm_filter.setText("mobilenetv3_small_05")
    visible = [d.timm_list.item(i).text() for i in range(d.timm_list.count()) if not d.timm_list.item(i).isHidden()]
    assert visible == ["mobilenetv3_small_050"] and open_enabled(d)
    assert d.spec()["spec"] == "timm:mobilenetv3_small_050" and d.spec()["pretrained"] is True
    assert "Hugging Face" in d.timm_cache.text()
    d.select_spec("timm:resnet18", pretrained=False)
    assert d.current_tab() == "timm" and d.spec()["spec"] == "timm:resnet18" and d.spec()["pretrained"] is False
    d.resize(640, 540)
    d.grab().save("/tmp/open-model-timm.png")


def test_torchvision_tab_filters_and_builds_spec(model_dialog):
    d = model_dialog
    d.select_tab("torchvision")
    assert not open_enabled(d)  # nothing chosen yet
    d.tv_filter.setText("mobilenet_v3_s")
    visible = [d.tv_list.item(i).text() for i in range(d.tv_list.count()) if not d.tv_list.item(i).isHidden()]
    assert visible == ["mobilenet_v3_small"]
    assert d.tv_list.currentItem().text() == "mobilenet_v3_small"  # the only match is chosen
    assert open_enabled(d)
    d.tv_pretrained.setChecked(False)
    assert d.spec() == {"spec": "torchvision:mobilenet_v3_small", "arch": None, "num_classes": None,
                        "input_size": None, "pretrained": False, "download": False}
    assert "mobilenet_v3_small" in d.tv_cache.text()  # cache state of the chosen model is shown
    d.tv_filter.setText("no such model")
    assert not open_enabled(d)
    assert d.spec()["spec"] == ""


def test_torchvision_cache_state_is_shown(model_dialog, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub.get_dir() follows it
    d = model_dialog
    d.select_spec("torchvision:resnet18")
    assert "Not in the cache" in d.tv_cache.text() and str(tmp_path) in d.tv_cache.text()
    cached = torchvision_cache_path("resnet18")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    d.select_spec("torchvision:resnet34")
    d.select_spec("torchvision:resnet18")
    assert "found in the cache" in d.tv_cache.text()
    d.tv_pretrained.setChecked(False)
    assert "not used" in d.tv_cache.text()


def test_cifar_tab_lists_demo_first_and_takes_options(model_dialog):
    d = model_dialog
    assert d.current_tab() == "cifar"
    assert d.cifar_list.item(0).data(Qt.UserRole) == "demo"
    assert "trained" in d.cifar_list.item(0).text()
    assert d.cifar_list.count() == 1 + len(CIFAR_MODELS)
    d.cifar_list.setCurrentRow(2)
    d.classes_spin.setValue(100)
    d.input_edit.setText("3x40x40")
    assert d.spec() == {"spec": "cifar:resnet56", "arch": None, "num_classes": 100,
                        "input_size": (3, 40, 40), "pretrained": True, "download": False}
    assert "cifar:resnet56" in d.status.text()
    d.input_edit.setText("3x40")
    assert not open_enabled(d)
    assert "C×H×W" in d.status.text()


def test_file_tab_needs_an_existing_file_and_a_valid_arch(model_dialog, tmp_path):
    d = model_dialog
    d.select_tab("file")
    assert not open_enabled(d)
    d.file_edit.setText(str(tmp_path / "missing.pt"))
    assert not open_enabled(d)
    assert "No file at" in d.status.text()
    weights = tmp_path / "weights.pth"
    torch.save(CIFAR_MODELS["resnet20"][0](10).state_dict(), weights)
    d.file_edit.setText(str(weights))
    assert open_enabled(d)
    assert d.spec()["arch"] is None
    d.arch_combo.setEditText("resnet20")  # the prefix is missing
    assert not open_enabled(d)
    d.arch_combo.setCurrentText("cifar:resnet20")
    assert d.arch_combo.findText("torchvision:resnet18") >= 0  # both families are offered
    assert open_enabled(d)
    assert d.spec() == {"spec": str(weights), "arch": "cifar:resnet20", "num_classes": None,
                        "input_size": None, "pretrained": True, "download": False}
    # What the dialog builds is what the engine loads.
    loaded = load_model(**d.spec())
    assert loaded.arch == "cifar:resnet20" and loaded.kind == "state_dict"


def test_python_tab_offers_classes_without_importing(model_dialog, tmp_path):
    code = tmp_path / "nets.py"
    marker = tmp_path / "imported.txt"
    code.write_text("import torch.nn as nn\n"
                    f"open({str(marker)!r}, 'w').write('ran')\n"
                    "class Helper:\n    pass\n"
                    "class TinyNet(nn.Module):\n"
                    "    def __init__(self, num_classes=10):\n"
                    "        super().__init__()\n"
                    "        self.fc = nn.Linear(4, num_classes)\n")
    d = model_dialog
    d.select_tab("python")
    d.py_edit.setText(str(code))
    assert [d.py_class.itemText(i) for i in range(d.py_class.count())] == ["TinyNet", "Helper"]
    assert not marker.exists()  # listing classes must not run the user's code
    assert d.spec()["spec"] == f"{code}:TinyNet"
    d.py_weights.setText(str(tmp_path / "nope.pth"))
    assert not open_enabled(d)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    d.py_weights.setText(str(weights))
    assert open_enabled(d)
    assert d.spec()["spec"] == f"{code}:TinyNet:{weights}"
    d.py_class.setEditText("not an identifier")
    assert not open_enabled(d)
    assert python_classes(tmp_path / "absent.py") == []


@pytest.mark.parametrize("spec", ["demo", "cifar:vgg16_bn", "torchvision:resnet18"])
def test_select_spec_round_trips_builtin(model_dialog, spec):
    model_dialog.select_spec(spec, num_classes=7, input_size=(3, 64, 64), pretrained=False)
    got = model_dialog.spec()
    assert (got["spec"], got["num_classes"], got["input_size"]) == (spec, 7, (3, 64, 64))
    assert got["pretrained"] is (False if spec.startswith("torchvision:") else True)


def test_select_spec_round_trips_files(qtbot, tmp_path):
    code = tmp_path / "m.py"
    code.write_text("class Net:\n    pass\n")
    weights = tmp_path / "m.pth"
    weights.write_bytes(b"x")
    for wanted in ({"spec": f"{code}:Net:{weights}", "arch": None, "num_classes": None,
                    "input_size": None, "pretrained": True, "download": False},
                   {"spec": str(weights), "arch": "torchvision:resnet18", "num_classes": 5,
                    "input_size": (1, 28, 28), "pretrained": True, "download": False}):
        d = OpenModelDialog(current={**wanted, "trust": True})  # extra session keys are ignored
        qtbot.addWidget(d)
        assert d.spec() == wanted
        assert open_enabled(d)


def test_parse_input_size():
    assert parse_input_size("3x224x224") == (3, 224, 224)
    assert parse_input_size(" 1, 28 ,28 ") == (1, 28, 28)
    assert parse_input_size("") is None
    for bad in ("3x0x4", "3x4", "ax2x2"):
        with pytest.raises(ValueError):
            parse_input_size(bad)


def test_open_data_dialog(qtbot, tmp_path):
    d = OpenDataDialog()
    qtbot.addWidget(d)
    assert d.spec() == "demo" and open_enabled(d)
    assert "500 training" in d.help.text()
    d.select_kind("folder")
    assert not open_enabled(d) and not d.help.text().startswith("A CIFAR-10")
    assert "ImageFolder" in d.help.text() and "cifar-10-batches-py" in d.help.text()
    d.path_edit.setText(str(tmp_path))
    assert open_enabled(d) and d.spec() == str(tmp_path)
    d.select_kind("npz")
    assert not open_enabled(d)  # a folder is not an .npz file
    npz = tmp_path / "data.npz"
    npz.write_bytes(b"PK")
    d.path_edit.setText(str(npz))
    assert open_enabled(d) and d.spec() == str(npz)
    assert "x_test" in d.help.text()
    d2 = OpenDataDialog(current=str(npz))
    qtbot.addWidget(d2)
    assert d2.kind() == "npz" and d2.spec() == str(npz)


def test_trust_box_explains_the_risk_and_defaults_to_cancel(qtbot):
    box = make_trust_box(None, "/models/full_model.pt")
    qtbot.addWidget(box)
    text = box.text() + box.informativeText()
    for phrase in ("full pickle", "unpickling runs code", "source you trust", "state_dict()",
                   "/models/full_model.pt"):
        assert phrase in text
    assert box.icon() == QMessageBox.Warning
    assert box.open_button.text() == "Open anyway"
    assert box.defaultButton() is box.button(QMessageBox.Cancel)
    assert box.escapeButton() is box.button(QMessageBox.Cancel)


def _click_in_modal(button_of) -> None:
    """Click a button of the modal dialog once it is shown (exec() blocks the test until then)."""
    def click():
        modal = QApplication.activeModalWidget()
        if modal is None:
            QTimer.singleShot(10, click)
            return
        button_of(modal).click()
    QTimer.singleShot(0, click)


def test_ask_trust_returns_the_users_choice(qtbot):
    _click_in_modal(lambda box: box.open_button)
    assert ask_trust(None, "/m.pt") is True
    _click_in_modal(lambda box: box.button(QMessageBox.Cancel))
    assert ask_trust(None, "/m.pt") is False


def test_error_box_for_studio_error(qtbot):
    box = make_error_box(None, StudioError("The file is broken.", "Save it again."), details="log line")
    qtbot.addWidget(box)
    assert box.text() == "The file is broken."
    assert box.informativeText() == "Save it again."
    assert box.detailedText() == "log line"
    assert box.icon() == QMessageBox.Warning


def test_error_box_for_bug_shows_traceback(qtbot):
    def failing_helper():
        raise ValueError("boom")
    try:
        failing_helper()
    except ValueError as exc:
        box = make_error_box(None, exc, details="while loading")
    qtbot.addWidget(box)
    assert box.text() == "Unexpected error: ValueError: boom"
    assert "bug" in box.informativeText()
    assert box.detailedText().startswith("while loading")
    assert "Traceback" in box.detailedText() and "failing_helper" in box.detailedText()
    assert box.icon() == QMessageBox.Critical
    plain = make_error_box(None, "Just a message")
    qtbot.addWidget(plain)
    assert plain.text() == "Just a message" and plain.detailedText() == ""


def test_model_needs_trust_recognises_the_engines_refusal(tmp_path):
    full = tmp_path / "full.pt"
    torch.save(CIFAR_MODELS["resnet20"][0](10), full)  # the whole module, pickled
    with pytest.raises(StudioError) as refused:
        load_model(str(full))
    assert model_needs_trust(refused.value)
    assert load_model(str(full), trust=True).kind == "pickle"  # the retry the GUI makes after asking
    with pytest.raises(StudioError) as missing:
        load_model(str(tmp_path / "absent.pt"))
    assert not model_needs_trust(missing.value)
    assert not model_needs_trust(RuntimeError("unpickling it can run arbitrary code"))


def test_rate_dialog(qtbot):
    dialog = make_rate_dialog(None, 0.3)
    qtbot.addWidget(dialog)
    assert dialog.doubleValue() == pytest.approx(30.0)
    assert dialog.doubleMaximum() < 100  # the engine rejects a rate of 1.0

    def set_and_accept(modal):
        modal.setDoubleValue(45.5)
        return modal.findChild(QDialogButtonBox).button(QDialogButtonBox.Ok)
    _click_in_modal(set_and_accept)
    assert ask_rate(None, 0.3) == pytest.approx(0.455)
    _click_in_modal(lambda modal: modal.findChild(QDialogButtonBox).button(QDialogButtonBox.Cancel))
    assert ask_rate(None, 0.3) is None



def test_download_box_asks_the_engine_to_download(qtbot):
    d = OpenModelDialog(initial_tab="torchvision")
    qtbot.addWidget(d)
    d.select_spec("torchvision:resnet18")
    assert d.spec()["download"] is False
    d.tv_download.setChecked(True)
    assert d.spec()["download"] is True
    d.tv_pretrained.setChecked(False)   # no weights wanted: nothing to download
    assert not d.tv_download.isEnabled() and d.spec()["download"] is False
