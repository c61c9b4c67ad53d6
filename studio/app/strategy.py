"""The strategy panel: how to prune, and how to train before and after pruning.

It edits the strategy part of a `Recipe` (plan, sparse training, fine-tuning or retraining,
batch size, device) and shows the predicted size of the pruned model that the main window
computes. `changed` fires on user edits only, so the main window can re-estimate without
reacting to its own `set_recipe` calls.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Optional

from PySide6.QtCore import QLocale, QSignalBlocker, QSize, Qt, Signal
from PySide6.QtGui import QDoubleValidator, QPalette, QValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QLabel,
    QLineEdit,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.app.inspector import dim_color, scrolling_body, section_label
from studio.app.target_panel import TargetForm
from studio.engine.jobs import Recipe
from studio.engine.jobs.recipe import ReconstructOptions, SearchOptions
from studio.engine.jobs.report import human_count
from studio.engine.pruning import CRITERIA

PANEL_WIDTH = 340           # preferred dock width
MAX_RATE_PCT = 95
NEEDS_DATA_COLOR = "#c98a12"
AFTER_PRUNING = (("finetune", "Fine-tune"), ("reconstruct", "Reconstruct (no training)"),
                 ("reconstruct+finetune", "Reconstruct, then fine-tune"), ("retrain", "Retrain from scratch"))
RECONSTRUCT_CHOICES = (("ls", "Least squares"), ("lasso", "LASSO + least squares"),
                       ("cap", "Compensation-aware (CaP)"))
DEVICES = (("auto", "Auto (best available)"), ("cuda", "CUDA (NVIDIA GPU)"),
           ("mps", "MPS (Apple GPU)"), ("cpu", "CPU"))


def unavailable_devices() -> dict[str, str]:
    """Devices PyTorch cannot use on this machine, with the reason in plain words."""
    import torch

    why = {}
    if not torch.cuda.is_available():
        why["cuda"] = ("PyTorch sees no CUDA GPU here (no NVIDIA GPU, no driver, or a CPU-only "
                       "PyTorch build).")
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        why["mps"] = "Apple's GPU backend (MPS) needs an Apple-silicon Mac and a PyTorch build with MPS."
    return why


def float_text(value: float) -> str:
    """0.01 → '0.01', 1e-05 → '1e-5': the shortest text that reads back as exactly ``value``."""
    text = repr(float(value))
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), text)


def ratio_text(before: int, after: int) -> str:
    """'272 K → 140 K  (1.94×)'."""
    text = f"{human_count(before)} → {human_count(after)}"
    if before > 0 and after > 0:
        text += f"  ({before / after:.2f}×)"
    return text


class NumberEdit(QLineEdit):
    """A float field that accepts scientific notation (1e-5), for λ and learning rates.

    `edited` fires when the user finishes an edit that changed the value; an unfinished or
    invalid text keeps the last good value.
    """

    edited = Signal()

    def __init__(self, bottom: float, top: float, value: float, parent: Optional[QWidget] = None):
        super().__init__(parent)
        validator = QDoubleValidator(bottom, top, 12, self)
        validator.setNotation(QDoubleValidator.ScientificNotation)
        validator.setLocale(QLocale.c())           # '1e-5' and '0.01' whatever the user's locale
        self.setValidator(validator)
        self.setAlignment(Qt.AlignRight)
        self._bottom = bottom
        self._value = value
        self.setText(float_text(value))
        self.editingFinished.connect(self._finish)

    def value(self) -> float:
        return self._value

    def setValue(self, value: float) -> None:  # noqa: N802 - Qt naming, like QDoubleSpinBox
        self._value = float(value)
        self.setText(float_text(self._value))

    def focusOutEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().focusOutEvent(event)
        self._finish()     # Qt skips editingFinished for unfinished text ('1e'): show the kept value again

    def _finish(self) -> None:
        try:
            value = float(self.text())
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < self._bottom or \
                self.validator().validate(self.text(), 0)[0] != QValidator.Acceptable:
            self.setText(float_text(self._value))
            return
        self.setText(float_text(value))
        if value != self._value:
            self._value = value
            self.edited.emit()


class StrategyPanel(QWidget):
    """Pruning criterion and rates, sparse training, fine-tuning/retraining, and the live prediction."""

    changed = Signal()

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self._labels: list[QLabel] = []
        self._unavailable = unavailable_devices()
        self._build()
        self.set_recipe(Recipe())
        self.show_prediction(None, None, "")

    # ---- construction ------------------------------------------------------------
    def _form(self, title: str, parent_layout: QVBoxLayout) -> QFormLayout:
        box = QWidget()
        box.setObjectName(title)
        form = QFormLayout(box)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow(section_label(title))
        form.setHorizontalSpacing(10)
        form.setVerticalSpacing(5)
        form.setLabelAlignment(Qt.AlignLeft | Qt.AlignVCenter)
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        parent_layout.addWidget(box)
        self._boxes.append(box)
        return form

    def _row(self, form: QFormLayout, label: str, widget: QWidget, tip: str) -> QWidget:
        """Add a labelled row; the label and the field share the tooltip."""
        lab = QLabel(label)
        lab.setBuddy(widget)
        lab.setToolTip(tip)
        widget.setToolTip(tip)
        form.addRow(lab, widget)
        self._labels.append(lab)
        return widget

    def _note(self) -> QLabel:
        label = QLabel()
        label.setWordWrap(True)
        pal = label.palette()
        pal.setColor(QPalette.WindowText, dim_color(self))
        label.setPalette(pal)
        font = label.font()
        font.setPointSizeF(font.pointSizeF() * 0.92)
        label.setFont(font)
        return label

    @staticmethod
    def _percent(decimals: int = 1) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(0, MAX_RATE_PCT)
        spin.setDecimals(decimals)
        spin.setSingleStep(5)
        spin.setSuffix(" %")
        return spin

    @staticmethod
    def _count(low: int, high: int, off: str = "") -> QSpinBox:
        spin = QSpinBox()
        spin.setRange(low, high)
        if off:
            spin.setSpecialValueText(off)     # shown at the minimum (0): "off"
        return spin

    def _build(self) -> None:
        self._boxes: list[QWidget] = []
        self._scroll, self._body = scrolling_body(self)
        body = self._body
        lay = QVBoxLayout(body)
        lay.setContentsMargins(10, 6, 10, 10)
        lay.setSpacing(2)

        # -- Pruning
        form = self._form("Pruning", lay)
        self._pruning_form = form
        self._rates_mode = QComboBox()
        self._rates_mode.addItem("Set rates by hand", False)
        self._rates_mode.addItem("Find rates for a target", True)
        self._row(form, "Rates", self._rates_mode,
                  "By hand: one rate plus per-layer rates in the inspector. For a target: state what you want "
                  "(2× fewer MACs, 3 ms, 100 kB) and an accuracy floor; the studio analyses each layer's "
                  "sensitivity, allocates the rates and verifies them with trials.")
        self._criterion = QComboBox()
        for name, crit in CRITERIA.items():
            self._criterion.addItem(crit.title, name)
            self._criterion.setItemData(self._criterion.count() - 1, crit.description, Qt.ToolTipRole)
        self._row(form, "Criterion", self._criterion,
                  "How each channel's importance is scored; the lowest-scoring channels are removed.")
        self._criterion_info = self._note()
        self._criterion_info.setTextFormat(Qt.RichText)
        form.addRow(self._criterion_info)
        self._rate = self._row(form, "Rate", self._percent(),
                               "Share of output channels removed from every prunable layer, unless the "
                               "layer has its own rate (set it in the inspector).")
        self._ranking = QComboBox()
        self._ranking.addItem("Per layer (local)", False)
        self._ranking.addItem("Across layers (global)", True)
        self._row(form, "Ranking", self._ranking,
                  "Local: every layer loses the same share of its channels. Global: channels of all "
                  "layers compete on one scale, so redundant layers lose more and sensitive ones less.")
        self._round_to = self._row(form, "Round to", self._count(0, 512, "off"),
                                   "Keep each layer's channel count a multiple of this (8 suits GPU tensor "
                                   "cores). 'off' keeps the exact counts.")
        self._steps = self._row(form, "Steps", self._count(1, 64),
                                "Prune in this many smaller steps, re-scoring channels after each, "
                                "instead of all at once.")
        self._sparsity = self._row(form, "Sparsity", self._percent(),
                                   "After removing channels, also zero this share of the remaining weights "
                                   "(smallest first). Shrinks compressed files; dense compute stays the same.")
        self._strict = QCheckBox("Strict: never skip a group")
        self._strict.setToolTip("When pruning a group would break the model, the studio finds that group, leaves "
                                "it unpruned, names it in the log and report, and prunes the rest. Strict stops "
                                "the job instead, naming the groups, so that you protect them yourself.")
        form.addRow(self._strict)       # across both columns: the panel stays narrow

        # -- Target (target mode only)
        self._target_box_form = self._form("Target", lay)
        self.target_form = TargetForm()
        self._target_box_form.addRow(self.target_form)
        self.analyseRequested = self.target_form.analyseRequested

        # -- Sparse training
        form = self._form("Sparse training", lay)
        self._sparse_epochs = self._row(form, "Epochs", self._count(0, 1000, "off"),
                                        "Train before pruning with an L1 penalty on the BatchNorm scales "
                                        "(network slimming), so unneeded channels fade out first. Needs data.")
        self._bn_l1 = self._row(form, "λ (BN L1)", NumberEdit(0.0, 1.0, 1e-5),
                                "Strength of the L1 penalty on BatchNorm scales during sparse training, "
                                "e.g. 1e-5 to 1e-4. Larger pushes more channels toward zero.")

        # -- After pruning
        form = self._form("After pruning", lay)
        self._mode = QComboBox()
        for key, text in AFTER_PRUNING:
            self._mode.addItem(text, key)
        self._row(form, "Then", self._mode,
                  "Fine-tune: keep the surviving weights and train a little more. Reconstruct: refit the layers "
                  "that lost inputs by least squares on a few calibration images, so their outputs match the "
                  "original's (seconds, no training; He et al. 2017), optionally followed by fine-tuning. "
                  "Retrain from scratch: re-initialise the smaller network and train it fully (needs more epochs).")
        self._after_form = form
        self._recon_method = QComboBox()
        for key, text in RECONSTRUCT_CHOICES:
            self._recon_method.addItem(text, key)
        self._row(form, "Channels by", self._recon_method,
                  "Least squares keeps the criterion's channels and refits. LASSO (He et al. 2017) and "
                  "compensation-aware (CaP, Xie et al. 2021) choose the channels for the refit instead.")
        self._recon_batches = self._row(form, "Calibration", self._count(1, 1000),
                                        "Batches of training images the fits are computed on (batch size below).")
        self._recon_batches.setSuffix(" batches")
        self._epochs = self._row(form, "Epochs", self._count(0, 1000, "off"),
                                 "Training epochs after pruning; 'off' skips training (the accuracy drop "
                                 "is then measured as is). Needs data.")
        self._lr = self._row(form, "Learning rate", NumberEdit(1e-8, 10.0, 0.01),
                             "Starting learning rate of the cosine schedule, e.g. 0.01 for fine-tuning, "
                             "0.1 when retraining from scratch.")
        self._batch = self._row(form, "Batch size", self._count(1, 8192),
                                "Images per training step (also used for calibration batches). Lower it if "
                                "the device runs out of memory.")
        self._device = QComboBox()
        for key, text in DEVICES:
            self._device.addItem(text, key)
            why = self._unavailable.get(key)
            if why:
                item = self._device.model().item(self._device.count() - 1)
                item.setEnabled(False)
                item.setToolTip(f"Not available: {why}")
        self._row(form, "Device", self._device,
                  "Where training runs. Auto picks a CUDA GPU, then an Apple GPU, then the CPU.")
        self._amp = QCheckBox("Mixed precision (AMP)")
        self._amp.setToolTip("Train in float16 where safe: faster and lighter on NVIDIA GPUs. Only used on "
                             "CUDA; ignored on the CPU and on Apple GPUs.")
        form.addRow(self._amp)

        lay.addStretch(1)

        # -- Prediction and Run: pinned under the scrolling form, so that on a short screen
        # they stay in sight while the form scrolls.
        footer = QFrame()
        footer.setObjectName("strategy-footer")
        footer.setFrameShape(QFrame.Shape.NoFrame)
        footer.setStyleSheet("#strategy-footer { border-top: 1px solid palette(mid); }")
        foot = QVBoxLayout(footer)
        foot.setContentsMargins(10, 0, 10, 8)
        foot.setSpacing(4)
        self.layout().addWidget(footer)
        form = self._form("Prediction", foot)
        self._pred_params = self._row(form, "Params", QLabel("—"),
                                      "Parameter count now → after pruning (ratio in brackets).")
        self._pred_macs = self._row(form, "MACs", QLabel("—"),
                                    "Multiply-accumulates per image now → after pruning: a proxy for compute.")
        for label in (self._pred_params, self._pred_macs):
            label.setTextInteractionFlags(Qt.TextSelectableByMouse)
            font = label.font()
            font.setBold(True)
            label.setFont(font)
        self._pred_message = self._note()
        form.addRow(self._pred_message)
        self.run_button = QToolButton()
        self.run_button.setToolButtonStyle(Qt.ToolButtonTextOnly)
        self.run_button.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.run_button.hide()                   # until the window hands over its Run action
        foot.addWidget(self.run_button)

        # One label width for every group of the form, so all fields line up in one column.
        # The footer's two labels keep their own short width: it is apart from the form, and
        # the figures beside them are what sets the panel's narrowest width.
        form_labels = self._labels[:-2]
        width = max(lab.sizeHint().width() for lab in form_labels)
        for lab in form_labels:
            lab.setMinimumWidth(width)

        self._criterion.currentIndexChanged.connect(self._update_criterion_info)
        self._sparse_epochs.valueChanged.connect(self._update_enabled)
        self._epochs.valueChanged.connect(self._update_enabled)
        self._mode.currentIndexChanged.connect(self._update_enabled)
        self._recon_method.currentIndexChanged.connect(self._update_enabled)
        self._device.currentIndexChanged.connect(self._update_enabled)
        for spin in (self._rate, self._round_to, self._steps, self._sparsity, self._sparse_epochs,
                     self._epochs, self._batch, self._recon_batches):
            spin.setKeyboardTracking(False)      # one `changed` per finished edit, not per keystroke
            spin.setAlignment(Qt.AlignRight)
            spin.valueChanged.connect(self.changed)
        self._rates_mode.currentIndexChanged.connect(self._update_enabled)
        self.target_form.changed.connect(self.changed)
        for combo in (self._rates_mode, self._criterion, self._ranking, self._mode, self._recon_method,
                      self._device):
            # Size by a short text, not the longest item, so the panel can stay narrow.
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
            combo.currentIndexChanged.connect(self.changed)
        self._amp.toggled.connect(self.changed)
        self._strict.toggled.connect(self.changed)
        self._bn_l1.edited.connect(self.changed)
        self._lr.edited.connect(self.changed)

    def _inputs(self) -> list[QWidget]:
        return [self._rates_mode, self.target_form, self._criterion, self._rate, self._ranking, self._round_to, self._steps, self._sparsity,
                self._sparse_epochs, self._bn_l1, self._mode, self._recon_method, self._recon_batches,
                self._epochs, self._lr, self._batch, self._device, self._amp, self._strict]

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(PANEL_WIDTH, 600)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        # Horizontal scrolling is off, so never get narrower than the fields need.
        self._scroll.setMinimumWidth(self._body.minimumSizeHint().width()
                                     + self._scroll.verticalScrollBar().sizeHint().width())
        super().showEvent(event)

    # ---- public interface --------------------------------------------------------
    def set_recipe(self, recipe: Recipe) -> None:
        """Show ``recipe``'s strategy in the widgets without emitting `changed`."""
        blockers = [QSignalBlocker(w) for w in self._inputs()]
        plan, sparse, tune = recipe.plan, recipe.sparse_training, recipe.finetune
        self._rates_mode.setCurrentIndex(1 if recipe.search is not None else 0)
        self.target_form.set_search(recipe.search or SearchOptions())
        index = self._criterion.findData(plan.criterion)
        self._criterion.setCurrentIndex(max(index, 0))
        # A recipe written by hand may go past the usual range: widen it rather than clip the value.
        self._rate.setMaximum(max(MAX_RATE_PCT, plan.rate * 100))
        self._sparsity.setMaximum(max(MAX_RATE_PCT, plan.unstructured_sparsity * 100))
        self._rate.setValue(plan.rate * 100)
        self._ranking.setCurrentIndex(1 if plan.global_ranking else 0)
        self._round_to.setValue(plan.round_to or 0)
        self._steps.setValue(plan.iterative_steps)
        self._sparsity.setValue(plan.unstructured_sparsity * 100)
        self._strict.setChecked(bool(plan.strict))
        self._sparse_epochs.setValue(sparse.epochs)
        self._bn_l1.setValue(sparse.bn_l1)
        rec = recipe.reconstruct
        mode = ("retrain" if recipe.retrain else "finetune" if rec is None
                else "reconstruct+finetune" if tune.epochs > 0 else "reconstruct")
        self._mode.setCurrentIndex(max(0, self._mode.findData(mode)))
        self._recon = rec or ReconstructOptions()
        self._recon_method.setCurrentIndex(max(0, self._recon_method.findData(self._recon.method)))
        self._recon_batches.setValue(self._recon.batches)
        self._epochs.setValue(tune.epochs)
        self._lr.setValue(tune.lr)
        self._batch.setValue(recipe.data.batch_size)
        self._select_device(tune.device)
        self._amp.setChecked(bool(tune.amp))
        del blockers
        self._update_criterion_info()
        self._update_enabled()

    def apply_to(self, recipe: Recipe) -> None:
        """Write the widgets' values into ``recipe`` (plan, sparse training, after-pruning training, data)."""
        plan = recipe.plan
        plan.criterion = self._criterion.currentData()
        plan.rate = round(self._rate.value() / 100, 4)
        plan.global_ranking = bool(self._ranking.currentData())
        plan.round_to = self._round_to.value() or None
        plan.iterative_steps = self._steps.value()
        plan.unstructured_sparsity = round(self._sparsity.value() / 100, 4)
        plan.strict = self._strict.isChecked()
        recipe.sparse_training.epochs = self._sparse_epochs.value()
        recipe.sparse_training.bn_l1 = self._bn_l1.value()
        mode = self._mode.currentData()
        recipe.retrain = mode == "retrain"
        recipe.finetune.epochs = 0 if mode == "reconstruct" else self._epochs.value()
        recipe.reconstruct = None if not mode.startswith("reconstruct") or self.target_mode else replace(
            self._recon, method=self._recon_method.currentData(), batches=self._recon_batches.value())
        recipe.finetune.lr = self._lr.value()
        recipe.data.batch_size = self._batch.value()
        recipe.search = self.target_form.search_options() if self.target_mode else None
        if self.target_mode:
            recipe.retrain = False                 # trials fine-tune; retraining does not apply
        # Both trainings run on the same hardware.
        for cfg in (recipe.sparse_training, recipe.finetune):
            cfg.device = self._device.currentData()
            cfg.amp = self._amp.isChecked()

    def show_prediction(self, before: Optional[tuple[int, int]], after: Optional[tuple[int, int]],
                        message: str = "") -> None:
        """Show (params, MACs) now and after pruning, e.g. '272 K → 140 K  (1.94×)', and a status line."""
        for i, label in enumerate((self._pred_params, self._pred_macs)):
            if before is None:
                label.setText("—")
            elif after is None:
                label.setText(f"{human_count(before[i])} → …")
            else:
                label.setText(ratio_text(before[i], after[i]))
        self._pred_message.setText(message)
        self._pred_message.setVisible(bool(message))

    def prediction_text(self) -> str:
        """The prediction as shown, one line per figure (for the status bar and tests)."""
        return f"Params {self._pred_params.text()}\nMACs {self._pred_macs.text()}"

    def set_run_action(self, action) -> None:
        """Show the window's Run action as the button under the prediction (its text and enabled state follow it)."""
        self.run_button.setDefaultAction(action)
        self.run_button.show()

    @property
    def target_mode(self) -> bool:
        """True when the user asks for a target instead of setting rates."""
        return bool(self._rates_mode.currentData())

    def set_target_mode(self, on: bool) -> None:
        self._rates_mode.setCurrentIndex(1 if on else 0)

    def set_editable(self, editable: bool) -> None:
        """Enable or disable every strategy field (disabled while a job runs)."""
        for box in self._boxes[:-1]:             # the prediction stays readable
            box.setEnabled(bool(editable))

    # ---- internals ---------------------------------------------------------------
    def _select_device(self, device: str) -> None:
        index = self._device.findData(device)
        if index < 0:
            # 'cuda:1' and the like: keep the exact choice visible rather than silently changing it.
            self._device.addItem(device, device)
            index = self._device.count() - 1
        self._device.setCurrentIndex(index)

    def _update_criterion_info(self) -> None:
        crit = CRITERIA.get(self._criterion.currentData())
        if crit is None:
            self._criterion_info.setText("")
            return
        dim = dim_color(self).name()
        text = f"{crit.description}<br><i style='color:{dim}'>{crit.paper}</i>"
        if crit.needs_data:
            text += (f" &nbsp;<b style='color:{NEEDS_DATA_COLOR}'>needs data</b>")
        self._criterion_info.setText(text)

    def _update_enabled(self) -> None:
        self._bn_l1.setEnabled(self._sparse_epochs.value() > 0)
        tuning = self._epochs.value() > 0
        training = tuning or self._sparse_epochs.value() > 0
        # Batch size stays editable: it also sizes the calibration batches of data-driven criteria.
        mode = self._mode.currentData() or "finetune"
        reconstructing = mode.startswith("reconstruct")
        self._epochs.setEnabled(mode != "reconstruct")
        # LASSO and CaP choose the channels themselves, in place of the criterion.
        self._criterion.setEnabled(not (reconstructing and self._recon_method.currentData() != "ls"))
        tuning = tuning and mode != "reconstruct"
        self._lr.setEnabled(tuning)
        self._device.setEnabled(training)
        device = self._device.currentData() or ""
        self._amp.setEnabled(training and (device == "auto" or device.startswith("cuda")))
        # Target mode: the allocation sets per-layer rates, and each trial fine-tunes.
        target = self.target_mode
        for widget in (self._rate, self._ranking, self._steps):
            self._pruning_form.setRowVisible(widget, not target)
        self._target_box_form.parentWidget().setVisible(target)
        self._mode.setEnabled(not target)
        for widget in (self._recon_method, self._recon_batches):
            self._after_form.setRowVisible(widget, reconstructing and not target)
        label = self._after_form.labelForField(self._epochs)
        if label is not None:
            label.setText("Epochs per trial" if target else "Epochs")
