"""Dialogs of the studio: open a model or data, confirm a full pickle, show errors, ask a rate.

Each dialog only collects what the user chose and returns the spec strings that
`studio.engine.models.load_model` and `studio.engine.data.load_data` accept; loading
is the main window's job. The message boxes are built by ``make_*`` functions and shown by
thin ``ask_*``/``show_*`` wrappers so tests can inspect them without a modal event loop.
"""
from __future__ import annotations

import ast
import json
import re
import traceback
from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QApplication,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QRadioButton,
    QSizePolicy,
    QSpacerItem,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from studio.engine.errors import StudioError
from studio.engine.models import (
    CIFAR_MODELS,
    demo_model_path,
    list_cifar_models,
    list_torchvision_models,
    torchvision_cache_path,
)
from studio.engine.models.timm_models import cached_weights, list_timm_models

APP_TITLE = "Compression Studio"
MODEL_FILE_FILTER = "Models (*.pt *.pth *.ckpt *.torchscript *.onnx);;All files (*)"
WEIGHTS_FILE_FILTER = "PyTorch weights (*.pt *.pth *.ckpt);;All files (*)"
PY_SPEC = re.compile(r"^(?P<file>.+?\.py):(?P<cls>[A-Za-z_]\w*)(?::(?P<weights>.+))?$")
# The engine's refusal of a full pickle (studio.engine.models.loading._torch_load) says this:
_PICKLE_REFUSAL = "unpickling it can run arbitrary code"


def _hint(text: str = "") -> QLabel:
    """A wrapped secondary-text label for explanations under a field."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.RichText)
    label.setTextInteractionFlags(Qt.TextSelectableByMouse | Qt.LinksAccessibleByMouse)
    label.setOpenExternalLinks(True)
    label.setStyleSheet("color: palette(placeholder-text);")
    return label


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _status_html(problem: str, spec: str) -> str:
    """The line above the buttons: what will be opened, or what is still missing.

    A request to choose something is a prompt, not an error, so only a wrong entry is red.
    """
    if not problem:
        return f"Will open <code>{_esc(spec)}</code>"
    prompt = problem.startswith(("Choose", "Enter"))
    color = QApplication.palette().color(QPalette.PlaceholderText).name() if prompt else "#b3261e"
    return f"<span style='color:{color}'>{_esc(problem)}</span>"


def _path_row(edit: QLineEdit, button: QPushButton) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(edit, 1)
    layout.addWidget(button)
    return row


def parse_input_size(text: str) -> Optional[tuple[int, int, int]]:
    """'3x32x32', '3,32,32' or '3 32 32' → (3, 32, 32); '' → None; anything else → ValueError."""
    text = text.strip()
    if not text:
        return None
    parts = [p for p in re.split(r"[x×X,\s]+", text) if p]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"'{text}' is not C×H×W")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def python_classes(file: Path) -> list[str]:
    """Class names defined at the top of a .py file, nn.Module-looking ones first.

    Read with `ast`, never imported: importing runs the user's code, which only the loader
    may do once the user pressed Open.
    """
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    modules, others = [], []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            bases = " ".join(ast.unparse(b) for b in node.bases)
            (modules if "Module" in bases else others).append(node.name)
    return modules + others


# ---------------------------------------------------------------- open model

class OpenModelDialog(QDialog):
    """Choose a model: a torchvision, timm or CIFAR architecture, the demo, a file or a Python class."""

    TABS = ("torchvision", "timm", "cifar", "file", "python")
    specChanged = Signal()

    def __init__(self, parent: Optional[QWidget] = None, initial_tab: str = "cifar",
                 current: Optional[dict] = None):
        super().__init__(parent)
        self.setWindowTitle("Open Model")
        self.resize(640, 540)
        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_torchvision_tab(), "Torchvision")
        self.tabs.addTab(self._build_timm_tab(), "timm")
        self.tabs.addTab(self._build_cifar_tab(), "CIFAR && demo")
        self.tabs.addTab(self._build_file_tab(), "File")
        self.tabs.addTab(self._build_python_tab(), "Python class")

        self.classes_spin = QSpinBox()
        self.classes_spin.setRange(0, 1_000_000)
        self.classes_spin.setSpecialValueText("auto")
        self.classes_spin.setToolTip("Number of classes of the model's head; auto reads it from the model "
                                     "or the weights.")
        self.input_edit = QLineEdit()
        self.input_edit.setPlaceholderText("C×H×W, empty = inferred")
        self.input_edit.setToolTip("Input size C×H×W used to trace the graph and measure the model; "
                                   "leave empty to use the size the architecture was made for.")
        self.classes_spin.setMaximumWidth(140)
        self.input_edit.setMaximumWidth(180)
        options = QGroupBox("Options")
        form = QFormLayout(options)
        form.addRow("Classes:", self.classes_spin)
        form.addRow("Input size:", self.input_edit)

        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Open | QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(options)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)

        for signal in (self.tabs.currentChanged, self.classes_spin.valueChanged, self.input_edit.textChanged):
            signal.connect(self._update)
        self.select_tab(initial_tab)
        if current:
            self.select_spec(**current)
        self._update()

    # -- tabs

    def _build_torchvision_tab(self) -> QWidget:
        page = QWidget()
        self.tv_filter = QLineEdit()
        self.tv_filter.setPlaceholderText("Filter, e.g. resnet or mobilenet")
        self.tv_filter.setClearButtonEnabled(True)
        self.tv_list = QListWidget()
        self.tv_list.addItems(list_torchvision_models())
        self.tv_pretrained = QCheckBox("Use pretrained ImageNet weights when found in the local torch hub cache")
        self.tv_pretrained.setChecked(True)
        self.tv_download = QCheckBox("Download the weights now if they are not in the cache (needs internet)")
        self.tv_cache = _hint()
        note = _hint("<b>Weights are never downloaded silently.</b> Only weights already in the local "
                     "torch hub cache are used, unless you tick the download box; without them the model "
                     "starts from random initialisation (untrained).")
        layout = QVBoxLayout(page)
        layout.addWidget(self.tv_filter)
        layout.addWidget(self.tv_list, 1)
        layout.addWidget(self.tv_pretrained)
        layout.addWidget(self.tv_download)
        layout.addWidget(note)
        layout.addWidget(self.tv_cache)
        self.tv_filter.textChanged.connect(lambda text: self._filter(self.tv_list, text))
        self.tv_list.currentItemChanged.connect(self._update)
        self.tv_list.itemDoubleClicked.connect(self._accept_if_complete)
        self.tv_pretrained.toggled.connect(self._update)
        self.tv_pretrained.toggled.connect(self.tv_download.setEnabled)
        return page

    def _build_timm_tab(self) -> QWidget:
        page = QWidget()
        self.timm_filter = QLineEdit()
        self.timm_filter.setPlaceholderText("Search timm's architectures, e.g. convnext, efficientnet, regnet")
        self.timm_filter.setClearButtonEnabled(True)
        self.timm_list = QListWidget()
        self.timm_list.setUniformItemSizes(True)      # about 1,400 names: keep the list fast
        self.timm_list.addItems(list_timm_models())
        self.timm_pretrained = QCheckBox("Use pretrained weights when found in the local Hugging Face cache")
        self.timm_pretrained.setChecked(True)
        self.timm_cache = _hint()
        note = _hint("<b>Weights are never downloaded.</b> Only weights already in the local Hugging Face "
                     "cache are used; without them the model starts from random initialisation (untrained).")
        layout = QVBoxLayout(page)
        layout.addWidget(self.timm_filter)
        layout.addWidget(self.timm_list, 1)
        layout.addWidget(self.timm_pretrained)
        layout.addWidget(note)
        layout.addWidget(self.timm_cache)
        self.timm_filter.textChanged.connect(lambda text: self._filter(self.timm_list, text))
        self.timm_list.currentItemChanged.connect(self._update)
        self.timm_list.itemDoubleClicked.connect(self._accept_if_complete)
        self.timm_pretrained.toggled.connect(self._update)
        return page

    def _build_cifar_tab(self) -> QWidget:
        page = QWidget()
        self.cifar_list = QListWidget()
        self.cifar_list.setSpacing(2)
        demo = QListWidgetItem(f"demo — {self._demo_description()}")
        demo.setData(Qt.UserRole, "demo")
        font = demo.font()
        font.setBold(True)
        demo.setFont(font)
        self.cifar_list.addItem(demo)
        for name in list_cifar_models():
            item = QListWidgetItem(f"cifar:{name} — {CIFAR_MODELS[name][1]}")
            item.setData(Qt.UserRole, f"cifar:{name}")
            self.cifar_list.addItem(item)
        layout = QVBoxLayout(page)
        layout.addWidget(self.cifar_list, 1)
        layout.addWidget(_hint("The demo is trained and ready to prune. The cifar:* architectures start "
                               "from random initialisation (untrained) for 32×32 inputs: train or fine-tune "
                               "them before judging accuracy. Set <i>Classes</i> to 100 for CIFAR-100."))
        self.cifar_list.currentItemChanged.connect(self._update)
        self.cifar_list.itemDoubleClicked.connect(self._accept_if_complete)
        return page

    @staticmethod
    def _demo_description() -> str:
        """One line from the demo's model card, which records how it was trained and how well it does."""
        card = demo_model_path().parent / "model_card.json"
        try:
            top1 = json.loads(card.read_text(encoding="utf-8"))["full_test_top1"]
            return f"ResNet-20 trained on CIFAR-10, {top1:.1%} top-1 (shipped with the studio)"
        except (OSError, ValueError, KeyError, TypeError):
            return "ResNet-20 trained on CIFAR-10 (shipped with the studio)"

    def _build_file_tab(self) -> QWidget:
        page = QWidget()
        self.file_edit = QLineEdit()
        self.file_edit.setPlaceholderText("model.pt, weights.pth, model.ckpt.pt, model.torchscript.pt, model.onnx")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_model_file)
        self.arch_combo = QComboBox()
        self.arch_combo.setEditable(True)
        self.arch_combo.addItem("")
        self.arch_combo.addItems([f"cifar:{n}" for n in list_cifar_models()])
        self.arch_combo.addItems([f"torchvision:{n}" for n in list_torchvision_models()])
        self.arch_combo.lineEdit().setPlaceholderText("only for a bare state_dict, e.g. cifar:resnet20")
        self.arch_combo.setInsertPolicy(QComboBox.NoInsert)
        form = QFormLayout()
        form.addRow("Model file:", _path_row(self.file_edit, browse))
        form.addRow("Architecture:", self.arch_combo)
        layout = QVBoxLayout(page)
        layout.addLayout(form)
        layout.addWidget(_hint(
            "<b>Studio checkpoints</b> (.ckpt.pt), <b>TorchScript</b> archives and <b>full pickles</b> "
            "carry their architecture. A <b>bare state_dict</b> (torch.save(model.state_dict())) holds only "
            "weights: pick the architecture it was trained with. Full pickles run code when opened, so "
            "the studio asks before opening one. TorchScript models can be inspected and evaluated but "
            "not pruned."))
        layout.addStretch(1)
        self.file_edit.textChanged.connect(self._update)
        self.arch_combo.currentTextChanged.connect(self._update)
        return page

    def _build_python_tab(self) -> QWidget:
        page = QWidget()
        self.py_edit = QLineEdit()
        self.py_edit.setPlaceholderText("models.py")
        browse_py = QPushButton("Browse…")
        browse_py.clicked.connect(self._browse_python_file)
        self.py_class = QComboBox()
        self.py_class.setEditable(True)
        self.py_class.setInsertPolicy(QComboBox.NoInsert)
        self.py_class.lineEdit().setPlaceholderText("class (or function) that builds the model")
        self.py_weights = QLineEdit()
        self.py_weights.setPlaceholderText("optional: weights.pth (state_dict); empty = random init")
        browse_w = QPushButton("Browse…")
        browse_w.clicked.connect(self._browse_weights_file)
        form = QFormLayout()
        form.addRow("Python file:", _path_row(self.py_edit, browse_py))
        form.addRow("Class:", self.py_class)
        form.addRow("Weights:", _path_row(self.py_weights, browse_w))
        layout = QVBoxLayout(page)
        layout.addLayout(form)
        layout.addWidget(_hint(
            "The studio imports the file and calls the class with no arguments (or with "
            "<i>num_classes</i> when <i>Classes</i> is set and the constructor takes it). Importing runs the "
            "file's code: open only your own or trusted code. Sibling modules next to the file can be "
            "imported by it."))
        layout.addStretch(1)
        self.py_edit.textChanged.connect(self._python_file_changed)
        self.py_class.currentTextChanged.connect(self._update)
        self.py_weights.textChanged.connect(self._update)
        return page

    # -- reactions

    def _filter(self, names: QListWidget, text: str) -> None:
        """Show only the names containing ``text`` (a search box over a list of architectures)."""
        needle = text.strip().lower()
        first_visible = None
        for i in range(names.count()):
            item = names.item(i)
            hidden = needle not in item.text().lower()
            item.setHidden(hidden)
            if not hidden and first_visible is None:
                first_visible = item
        current = names.currentItem()
        if current is None or current.isHidden():
            names.setCurrentItem(first_visible)  # None clears the choice when nothing matches
        self._update()

    def _python_file_changed(self, text: str) -> None:
        path = Path(text.strip()).expanduser()
        typed = self.py_class.currentText()
        self.py_class.blockSignals(True)
        self.py_class.clear()
        if path.suffix == ".py" and path.is_file():
            self.py_class.addItems(python_classes(path))
        if typed and self.py_class.findText(typed) < 0:
            self.py_class.setEditText(typed)  # keep what the user typed over the file's first class
        elif typed:
            self.py_class.setCurrentText(typed)
        self.py_class.blockSignals(False)
        self._update()

    def _browse_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open Model File", self.file_edit.text(), MODEL_FILE_FILTER)
        if path:
            self.file_edit.setText(path)

    def _browse_python_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open Model Code", self.py_edit.text(),
                                              "Python files (*.py);;All files (*)")
        if path:
            self.py_edit.setText(path)

    def _browse_weights_file(self) -> None:
        start = self.py_weights.text() or str(Path(self.py_edit.text()).parent)
        path, _ = QFileDialog.getOpenFileName(self, "Open Weights", start, WEIGHTS_FILE_FILTER)
        if path:
            self.py_weights.setText(path)

    def _accept_if_complete(self, *_) -> None:
        if self.is_complete():
            self.accept()

    # -- state

    def current_tab(self) -> str:
        return self.TABS[self.tabs.currentIndex()]

    def select_tab(self, name: str) -> None:
        """Show the tab for a source: 'torchvision', 'timm', 'cifar', 'file' or 'python'."""
        if name not in self.TABS:
            raise ValueError(f"unknown tab {name!r}; expected one of {self.TABS}")
        self.tabs.setCurrentIndex(self.TABS.index(name))

    def select_spec(self, spec: str, arch: Optional[str] = None, num_classes: Optional[int] = None,
                    input_size=None, pretrained: bool = True, **_ignored) -> None:
        """Fill the dialog from a spec (e.g. the current model or a recent file) so the user can adjust it.

        Extra keys (like a session's ``trust``) are ignored: trust is asked for when loading.
        """
        spec = (spec or "").strip()
        py = PY_SPEC.match(spec)
        if spec == "demo" or spec.startswith("cifar:"):
            self.select_tab("cifar")
            for i in range(self.cifar_list.count()):
                if self.cifar_list.item(i).data(Qt.UserRole) == spec:
                    self.cifar_list.setCurrentRow(i)
        elif spec.startswith("torchvision:"):
            self.select_tab("torchvision")
            self.tv_filter.clear()
            found = self.tv_list.findItems(spec.partition(":")[2], Qt.MatchExactly)
            if found:
                self.tv_list.setCurrentItem(found[0])
            self.tv_pretrained.setChecked(bool(pretrained))
        elif spec.startswith("timm:"):
            self.select_tab("timm")
            self.timm_filter.clear()
            found = self.timm_list.findItems(spec.partition(":")[2], Qt.MatchExactly)
            if found:
                self.timm_list.setCurrentItem(found[0])
                self.timm_list.scrollToItem(found[0])
            self.timm_pretrained.setChecked(bool(pretrained))
        elif py:
            self.select_tab("python")
            self.py_edit.setText(py["file"])
            self.py_class.setEditText(py["cls"])
            self.py_weights.setText(py["weights"] or "")
        elif spec:
            self.select_tab("file")
            self.file_edit.setText(spec)
            self.arch_combo.setEditText(arch or "")
        self.classes_spin.setValue(int(num_classes or 0))
        self.input_edit.setText("x".join(str(v) for v in input_size) if input_size else "")
        self._update()

    def _model_spec(self) -> tuple[Optional[str], str]:
        """(spec or None, what is missing) for the visible tab."""
        tab = self.current_tab()
        if tab == "torchvision":
            item = self.tv_list.currentItem()
            if item is None or item.isHidden():
                return None, "Choose a torchvision model."
            return f"torchvision:{item.text()}", ""
        if tab == "timm":
            item = self.timm_list.currentItem()
            if item is None or item.isHidden():
                return None, "Choose a timm model."
            return f"timm:{item.text()}", ""
        if tab == "cifar":
            item = self.cifar_list.currentItem()
            return (item.data(Qt.UserRole), "") if item is not None else (None, "Choose the demo or a CIFAR model.")
        if tab == "file":
            text = self.file_edit.text().strip()
            if not text:
                return None, "Choose a model file."
            path = Path(text).expanduser()
            if not path.is_file():
                return None, f"No file at {text}."
            arch = self.arch_combo.currentText().strip()
            if arch and not re.match(r"^(cifar|torchvision|timm):\w+$", arch):
                return None, "Write the architecture as cifar:NAME, torchvision:NAME or timm:NAME."
            return text, ""
        file = self.py_edit.text().strip()
        cls = self.py_class.currentText().strip()
        weights = self.py_weights.text().strip()
        if not file:
            return None, "Choose the Python file that defines the model."
        if not file.endswith(".py") or not Path(file).expanduser().is_file():
            return None, f"No Python file at {file}."
        if not cls.isidentifier():
            return None, "Enter the class (or function) that builds the model."
        if weights and not Path(weights).expanduser().is_file():
            return None, f"No weights file at {weights}."
        return f"{file}:{cls}" + (f":{weights}" if weights else ""), ""

    def _problem(self) -> str:
        """Why Open is disabled, '' when the choice is complete."""
        spec, missing = self._model_spec()
        if spec is None:
            return missing
        try:
            parse_input_size(self.input_edit.text())
        except ValueError:
            return "Write the input size as C×H×W, e.g. 3x32x32, or leave it empty."
        return ""

    def is_complete(self) -> bool:
        return not self._problem()

    def _update(self, *_) -> None:
        problem = self._problem()
        self.buttons.button(QDialogButtonBox.Open).setEnabled(not problem)
        self.status.setText(_status_html(problem, self.spec()["spec"]))
        self._update_cache_note()
        self.specChanged.emit()

    def _update_timm_note(self) -> None:
        item = self.timm_list.currentItem()
        if item is None or item.isHidden():
            self.timm_cache.setText("")
            return
        file, repo = cached_weights(item.text())
        if file is not None:
            text = f"✔ Weights found in the cache: {_esc(str(file))}"
            if not self.timm_pretrained.isChecked():
                text += " (not used: the checkbox is off)"
        elif repo:
            text = (f"Not in the cache: {_esc(item.text())} will start untrained. Its weights come from the "
                    f"Hugging Face repository {_esc(repo)}: fetch them on a machine with internet and copy the "
                    "Hugging Face cache here.")
        else:
            text = f"timm publishes no weights for {_esc(item.text())}: it starts untrained."
        self.timm_cache.setText(text)

    def _update_cache_note(self) -> None:
        self._update_timm_note()
        item = self.tv_list.currentItem()
        if item is None or item.isHidden():
            self.tv_cache.setText("")
            return
        try:
            file = torchvision_cache_path(item.text())
            import torchvision
            url = torchvision.models.get_model_weights(item.text()).DEFAULT.url
        except (ValueError, KeyError, AttributeError):  # a model without published weights
            self.tv_cache.setText(f"{item.text()} has no published ImageNet weights: it starts untrained.")
            return
        if file.exists():
            text = f"✔ ImageNet weights found in the cache: {_esc(str(file))}"
            if not self.tv_pretrained.isChecked():
                text += " (not used: the checkbox is off)"
        else:
            text = (f"Not in the cache: {item.text()} will start untrained. To use its ImageNet weights, "
                    f"download <a href='{url}'>{_esc(file.name)}</a> and copy it to {_esc(str(file.parent))}.")
        self.tv_cache.setText(text)

    def spec(self) -> dict:
        """The choice as load_model's arguments: spec, arch, num_classes, input_size, pretrained, download."""
        spec, _ = self._model_spec()
        tab = self.current_tab()
        arch = self.arch_combo.currentText().strip() if tab == "file" else ""
        try:
            size = parse_input_size(self.input_edit.text())
        except ValueError:
            size = None
        return {
            "spec": spec or "",
            "arch": arch or None,
            "num_classes": self.classes_spin.value() or None,
            "input_size": size,
            # Only torchvision and timm models have pretrained weights to choose; the engine ignores it otherwise.
            "pretrained": (self.tv_pretrained.isChecked() if tab == "torchvision" else
                           self.timm_pretrained.isChecked() if tab == "timm" else True),
            # Offline, the engine's error names the URL and the exact cache path to copy the file to.
            "download": tab == "torchvision" and self.tv_pretrained.isChecked() and self.tv_download.isChecked(),
        }


# ---------------------------------------------------------------- open data

class OpenDataDialog(QDialog):
    """Choose data: the shipped demo subset, a dataset folder or an .npz file."""

    KINDS = ("demo", "folder", "npz")
    _HELP = {
        "demo": "A CIFAR-10 subset shipped with the studio: 500 training and 100 test images per class "
                "(10 classes, 32×32). Enough to calibrate data-driven criteria, check accuracy and try a "
                "short fine-tune; use the full dataset for final numbers.",
        "folder": "One of:<ul style='margin-left:-20px'>"
                  "<li><b>ImageFolder</b>: <code>train/</code> and <code>val/</code> (or <code>test/</code>), "
                  "each with one subfolder of images per class. A folder of class folders alone is used "
                  "for evaluation only.</li>"
                  "<li><b>CIFAR-10/100</b> in torchvision's python format: the folder holding "
                  "<code>cifar-10-batches-py/</code> or <code>cifar-100-python/</code> (or that folder "
                  "itself).</li>"
                  "<li><b>MNIST / FashionMNIST</b> idx files as torchvision downloads them: the folder "
                  "holding <code>MNIST/raw/</code> or <code>FashionMNIST/raw/</code> (gzipped or not; "
                  "the folder name tells the two apart).</li></ul>",
        "npz": "A NumPy archive (numpy.savez) with <code>x_test</code>, <code>y_test</code> and, for "
               "training, <code>x_train</code>, <code>y_train</code>: uint8 images of shape N×H×W×C "
               "(or N×H×W for grayscale) and one integer label per image. An optional "
               "<code>class_names</code> string array names the classes.",
    }

    def __init__(self, parent: Optional[QWidget] = None, current: Optional[str] = None):
        super().__init__(parent)
        self.setWindowTitle("Open Data")
        self.resize(560, 380)
        self.radios = {
            "demo": QRadioButton("Demo subset (CIFAR-10, shipped with the studio)"),
            "folder": QRadioButton("Dataset folder"),
            "npz": QRadioButton(".npz file"),
        }
        self.group = QButtonGroup(self)
        choice = QGroupBox("Source")
        choice_layout = QVBoxLayout(choice)
        for radio in self.radios.values():
            self.group.addButton(radio)
            choice_layout.addWidget(radio)
        self.path_edit = QLineEdit()
        self.browse = QPushButton("Browse…")
        self.browse.clicked.connect(self._browse)
        self.help = _hint()
        self.help.setStyleSheet("")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Open | QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        path_row = QHBoxLayout()
        path_row.addWidget(QLabel("Path:"))
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(self.browse)
        layout = QVBoxLayout(self)
        layout.addWidget(choice)
        layout.addLayout(path_row)
        layout.addWidget(self.help)
        layout.addStretch(1)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)

        self.group.buttonToggled.connect(self._update)
        self.path_edit.textChanged.connect(self._update)
        self.radios["demo"].setChecked(True)
        if current:
            self.select_spec(current)
        self._update()

    def kind(self) -> str:
        return next(k for k, r in self.radios.items() if r.isChecked())

    def select_kind(self, kind: str) -> None:
        self.radios[kind].setChecked(True)

    def select_spec(self, spec: str) -> None:
        """Pre-fill from a data spec: 'demo', a folder or an .npz path."""
        spec = spec.strip()
        if spec.lower() == "demo":
            self.select_kind("demo")
            return
        self.select_kind("npz" if spec.lower().endswith(".npz") else "folder")
        self.path_edit.setText(spec)

    def _browse(self) -> None:
        if self.kind() == "npz":
            path, _ = QFileDialog.getOpenFileName(self, "Open .npz Data", self.path_edit.text(),
                                                  "NumPy archives (*.npz);;All files (*)")
        else:
            path = QFileDialog.getExistingDirectory(self, "Open Dataset Folder", self.path_edit.text())
        if path:
            self.path_edit.setText(path)

    def _problem(self) -> str:
        kind = self.kind()
        if kind == "demo":
            return ""
        text = self.path_edit.text().strip()
        path = Path(text).expanduser()
        if not text:
            return "Choose a folder." if kind == "folder" else "Choose an .npz file."
        if kind == "folder" and not path.is_dir():
            return f"No folder at {text}."
        if kind == "npz" and not (path.is_file() and path.suffix.lower() == ".npz"):
            return f"No .npz file at {text}."
        return ""

    def _update(self, *_) -> None:
        kind = self.kind()
        self.path_edit.setEnabled(kind != "demo")
        self.browse.setEnabled(kind != "demo")
        self.path_edit.setPlaceholderText({"demo": "", "folder": "dataset folder",
                                           "npz": "data.npz"}[kind])
        self.help.setText(self._HELP[kind])
        problem = self._problem()
        self.buttons.button(QDialogButtonBox.Open).setEnabled(not problem)
        self.status.setText(_status_html(problem, self.spec()))

    def is_complete(self) -> bool:
        return not self._problem()

    def spec(self) -> str:
        """The data spec for load_data: 'demo' or the path."""
        return "demo" if self.kind() == "demo" else self.path_edit.text().strip()


# ---------------------------------------------------------------- message boxes

def _widen(box: QMessageBox, width: int = 460) -> None:
    """QMessageBox sizes itself to its first line; a spacer keeps long paths from wrapping per word."""
    layout = box.layout()
    if isinstance(layout, QGridLayout):
        layout.addItem(QSpacerItem(width, 0, QSizePolicy.Minimum, QSizePolicy.Expanding),
                       layout.rowCount(), 0, 1, layout.columnCount())


def model_needs_trust(error: BaseException) -> bool:
    """True when ``error`` is the loader refusing a full pickle, so retrying with trust=True may work."""
    return isinstance(error, StudioError) and _PICKLE_REFUSAL in error.problem


def make_trust_box(parent: Optional[QWidget], path) -> QMessageBox:
    """The warning shown before a full pickle is unpickled; `.open_button` is the accepting button."""
    path = Path(str(path))
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Warning)
    box.setWindowTitle("Open a full pickle?")
    box.setTextFormat(Qt.RichText)
    box.setText(f"<b>{_esc(path.name)}</b> is a full pickle, not just weights.")
    box.setInformativeText(
        "<p>Opening it unpickles Python objects, and <b>unpickling runs code stored in the file</b>: a "
        "malicious file can do anything your user account can do. Only open files from a source you "
        "trust.</p>"
        "<p><b>Safer:</b> in the code that made the file, save <code>model.state_dict()</code> instead "
        "and open that file with its architecture (e.g. <code>cifar:resnet20</code>), or open the "
        "model's code as a Python class.</p>"
        f"<p style='color:gray'>{_esc(str(path))}</p>")
    box.open_button = box.addButton("Open anyway", QMessageBox.AcceptRole)
    cancel = box.addButton(QMessageBox.Cancel)
    box.setDefaultButton(cancel)
    box.setEscapeButton(cancel)
    _widen(box)
    return box


def ask_trust(parent: Optional[QWidget], path) -> bool:
    """Ask before unpickling ``path``; True only when the user chose "Open anyway"."""
    box = make_trust_box(parent, path)
    box.exec()
    return box.clickedButton() is box.open_button


def make_error_box(parent: Optional[QWidget], error: BaseException | str, details: str = "") -> QMessageBox:
    """A message box for an error: a StudioError's problem and fix, or a bug with its traceback."""
    box = QMessageBox(parent)
    box.setWindowTitle(APP_TITLE)
    box.setTextInteractionFlags(Qt.TextSelectableByMouse)
    box.setTextFormat(Qt.PlainText)
    if isinstance(error, StudioError):
        box.setIcon(QMessageBox.Warning)
        box.setText(error.problem)
        box.setInformativeText(error.fix)
        detail_text = details
    elif isinstance(error, BaseException):
        box.setIcon(QMessageBox.Critical)
        message = str(error).strip()
        box.setText(f"Unexpected error: {type(error).__name__}" + (f": {message}" if message else ""))
        box.setInformativeText("This is a bug in Compression Studio, not a problem with your files. "
                               "The details show where it happened; please include them when you report it.")
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        detail_text = "\n\n".join(t for t in (details, trace) if t)
    else:
        box.setIcon(QMessageBox.Warning)
        box.setText(str(error))
        detail_text = details
    if detail_text:
        box.setDetailedText(detail_text)
    box.setStandardButtons(QMessageBox.Ok)
    _widen(box)
    return box


def show_error(parent: Optional[QWidget], error: BaseException | str, details: str = "") -> None:
    """Show an error modally (see make_error_box)."""
    make_error_box(parent, error, details).exec()


def make_rate_dialog(parent: Optional[QWidget], current: float) -> QInputDialog:
    """The "Set rate…" input: a percentage of output channels to remove, 0 to 99 %."""
    dialog = QInputDialog(parent)
    dialog.setWindowTitle("Set Pruning Rate")
    dialog.setLabelText("Share of output channels to remove from the selected layers (%):")
    dialog.setInputMode(QInputDialog.DoubleInput)
    dialog.setDoubleDecimals(1)
    dialog.setDoubleRange(0.0, 99.0)  # the engine needs rates in [0, 1): 100 % would remove the layer
    dialog.setDoubleStep(5.0)
    dialog.setDoubleValue(max(0.0, min(99.0, current * 100)))
    return dialog


def ask_rate(parent: Optional[QWidget], current: float) -> Optional[float]:
    """Ask for a pruning rate; returns a fraction in [0, 0.99], or None when cancelled."""
    dialog = make_rate_dialog(parent, current)
    if dialog.exec() != QDialog.Accepted:
        return None
    return round(dialog.doubleValue() / 100, 4)
