"""write_pdf_report: a real run folder to report.pdf with Qt only; atomic, and clear errors."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from studio.app import pdf_report
from studio.app.pdf_report import build_document, read_metrics, svg_to_image, write_pdf_report
from studio.engine.errors import StudioError
from studio.engine.jobs.report import line_chart

# the widgets need no display: render offscreen unless the caller chose a platform (read when
# pytest-qt creates the QApplication, after these imports)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="module")
def real_run(tiny_pruning_run):
    """One real tiny pruning run folder (metrics.json, recipe.json, report.html, checkpoint)."""
    return tiny_pruning_run[0]


@pytest.fixture
def run(real_run, tmp_path):
    """A private copy of the run folder, so tests can damage it."""
    folder = tmp_path / "run"
    shutil.copytree(real_run, folder)
    return folder


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part") or p.name.startswith(".report"))


def test_writes_a_pdf_with_chart_images(qapp, run):
    path = write_pdf_report(run)
    assert path == run / "report.pdf"
    data = path.read_bytes()
    assert data.startswith(b"%PDF")
    assert data.rstrip().endswith(b"%%EOF")
    assert len(data) > 20_000
    assert data.count(b"/Subtype /Image") >= 3   # loss, accuracy and channels-per-layer charts
    assert b"/Type /Page" in data
    assert _leftovers(run) == []


def test_document_holds_every_section(qapp, run):
    metrics, recipe = read_metrics(run)
    text = build_document(metrics, recipe).toPlainText()
    for expected in ("Compression report", "cifar:resnet20", "Summary", "Numbers", "Before", "Pruned", "Fine-tuned",
                     "Top-1 accuracy", "Fine-tuning", "Layers", "layer1.0.conv1", "Exports", "model.ckpt.pt",
                     "Pruning plan", "remove 50% of channels", "Warnings", "random weights", "Recipe", "Seed"):
        assert expected in text, expected
    # the headline numbers are the run's
    assert "272 K → 68.8 K" in text
    assert "3.96× fewer" in text


def test_charts_are_real_images(qapp, run):
    metrics, recipe = read_metrics(run)
    doc = build_document(metrics, recipe)
    html = doc.toHtml()
    assert html.count("chart-") >= 3   # loss, accuracy and channels-per-layer charts
    svg = line_chart("loss", [("train", [(1, 2.0), (2, 1.0), (3, 0.5)])])
    image = svg_to_image(svg)
    assert image.width() == 460 * 3 and image.height() == 250 * 3
    colours = {image.pixelColor(x, y).name() for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert "#ffffff" in colours and len(colours) > 5   # white page with drawn lines and text


def test_existing_report_is_replaced_atomically(qapp, run):
    (run / "report.pdf").write_bytes(b"old")
    write_pdf_report(run)
    assert (run / "report.pdf").read_bytes().startswith(b"%PDF")
    assert _leftovers(run) == []


def test_failure_while_writing_leaves_nothing(qapp, run, monkeypatch):
    (run / "report.pdf").write_bytes(b"old report")

    def broken(*_args):
        raise StudioError("disk trouble", "")

    monkeypatch.setattr(pdf_report, "_paint_pages", broken)
    with pytest.raises(StudioError, match="disk trouble"):
        write_pdf_report(run)
    assert (run / "report.pdf").read_bytes() == b"old report"
    assert _leftovers(run) == []


def test_damaged_metrics_is_a_studio_error_and_no_file(qapp, run):
    (run / "metrics.json").write_text('{"before": {"params": 1', encoding="utf-8")
    with pytest.raises(StudioError) as info:
        write_pdf_report(run)
    assert "damaged" in info.value.problem and info.value.fix
    assert not (run / "report.pdf").exists()
    assert _leftovers(run) == []


def test_missing_metrics_and_missing_folder(qapp, run, tmp_path):
    (run / "metrics.json").unlink()
    with pytest.raises(StudioError, match="no metrics.json"):
        write_pdf_report(run)
    with pytest.raises(StudioError, match="not found"):
        write_pdf_report(tmp_path / "nowhere")
    assert not (run / "report.pdf").exists()


def test_metrics_without_a_comparison(qapp, run):
    (run / "metrics.json").write_text(json.dumps({"model": {"spec": "x"}, "history": {}}), encoding="utf-8")
    with pytest.raises(StudioError, match="before/after"):
        write_pdf_report(run)


def test_damaged_recipe_still_gives_a_report_with_a_warning(qapp, run):
    (run / "recipe.json").write_text("{not json", encoding="utf-8")
    metrics, recipe = read_metrics(run)
    assert recipe is None
    assert any("recipe.json could not be read" in w for w in metrics["warnings"])
    assert write_pdf_report(run).read_bytes().startswith(b"%PDF")


def test_minimal_metrics_without_data_or_history(qapp, run):
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("history", "layers", "exports", "warnings", "pruned"):
        metrics.pop(key, None)
    for stage in ("before", "after"):
        metrics[stage].pop("top1", None)
        metrics[stage].pop("top5", None)
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "recipe.json").unlink()
    text = build_document(*read_metrics(run)).toPlainText()
    assert "Layers" not in text and "Top-1 accuracy" not in text and "Recipe" not in text
    data = write_pdf_report(run).read_bytes()
    assert data.startswith(b"%PDF") and b"/Subtype /Image" not in data   # no history, no layers: no charts


def test_child_process_writer_for_worker_threads(run):
    from studio.app.pdf_report import write_pdf_report_in_subprocess
    path = write_pdf_report_in_subprocess(run)
    assert path.read_bytes().startswith(b"%PDF")
    (run / "metrics.json").write_text("{broken", encoding="utf-8")
    (run / "report.pdf").unlink()
    with pytest.raises(StudioError, match="report.pdf could not be written: error: .*damaged"):
        write_pdf_report_in_subprocess(run)
    assert not (run / "report.pdf").exists()
