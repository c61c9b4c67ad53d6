"""A run's comparison report as a PDF (report.pdf in the run folder), drawn by Qt alone.

The content mirrors the HTML report of `studio.engine.jobs.report`: header, before / pruned /
fine-tuned numbers, training charts, per-layer channels, exports, the plan and warnings, plus
a short summary of the recipe. The page is a `QTextDocument` (Qt's HTML subset) printed with
`QPdfWriter`; the charts are the engine's own SVG charts rasterised with `QSvgRenderer` and
added to the document as image resources, so no browser is needed. A QGuiApplication (or
QApplication) must exist, as in the GUI; the offscreen platform is enough.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QByteArray, QMarginsF, QPointF, QRectF, QSizeF, Qt, QUrl
from PySide6.QtGui import (
    QAbstractTextDocumentLayout,
    QColor,
    QFont,
    QGuiApplication,
    QImage,
    QPageLayout,
    QPageSize,
    QPainter,
    QPdfWriter,
    QPen,
    QTextBlockFormat,
    QTextCursor,
    QTextDocument,
    QTextFormat,
)
from PySide6.QtSvg import QSvgRenderer

from studio.engine.errors import StudioError
from studio.engine.files import atomic_write
from studio.engine.jobs.report import (
    EXPORT_COLUMNS,
    EXPORTS_NOTE,
    LAYER_COLUMNS,
    export_rows,
    header_rows,
    headlines,
    history_charts,
    layer_chart,
    layer_rows,
    model_name,
    plan_rows,
    read_recipe,
    report_title,
    stage_rows,
    warning_lines,
)
from studio.engine.jobs.report import escape as _e
from studio.engine.jobs.report_search import (TRIAL_COLUMNS, pareto_chart, search_rows, sensitivity_chart,
                                              sensitivity_table, trial_rows)

PDF_NAME = "report.pdf"
RESOLUTION = 300                 # dpi of the PDF's device: crisp chart images, exact text
MARGINS_MM = QMarginsF(18, 15, 18, 12)
FOOTER_INCH = 0.4                # bottom strip of the printable area kept for the footer
CHART_SCALE = 3.0                # SVG charts are rasterised at 3× their nominal size (~288 dpi)
TEXT_WIDTH_PX = 640              # usable width of the A4 page (174 mm) in 96-dpi image pixels
GOOD, BAD, MUTED, LINE, SOFT = "#15803d", "#b91c1c", "#6b7280", "#e5e7eb", "#f1f5f9"
# The engine's SVG charts are styled by the HTML page's CSS classes; QtSvg needs them inside
SVG_STYLE = ("<style type=\"text/css\">"
             ".ct{font-size:13px;font-weight:bold;fill:#1f2937;font-family:sans-serif}"
             ".tick{font-size:11px;fill:#4b5563;font-family:sans-serif}"
             ".mono{font-family:monospace}.grid{stroke:#e5e7eb}.axis{stroke:#9ca3af}</style>")

STYLE = f"""
body {{ color: #1f2937; }}
h1 {{ font-size: 17pt; margin-bottom: 2px; }}
h2 {{ font-size: 12pt; margin-top: 16px; margin-bottom: 6px; color: #111827; }}
p {{ margin-top: 2px; margin-bottom: 4px; }}
.sub {{ color: {MUTED}; font-family: monospace; }}
.muted {{ color: {MUTED}; }}
.mono {{ font-family: monospace; }}
.badge {{ color: #92400e; background-color: #fef3c7; font-size: 8pt; font-weight: bold; }}
th {{ font-weight: bold; }}
td.k {{ color: {MUTED}; padding-right: 14px; }}
.good {{ color: {GOOD}; font-weight: bold; }}
.bad {{ color: {BAD}; font-weight: bold; }}
"""


# ---------------------------------------------------------------------------------------------
# reading the run folder

def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StudioError(f"{path} is damaged ({exc}).", "Re-run the job, or restore the file from a backup.") from exc
    except OSError as exc:
        raise StudioError(f"Cannot read the {what} {path}: {exc.strerror or exc}.",
                          "Check the file's permissions, or run the job again.") from exc


def read_metrics(run_dir: Path) -> tuple[dict, Optional[dict]]:
    """metrics.json (required, as in `studio.engine.jobs.runs.read_run`) and recipe.json (optional) of a run folder."""
    if not run_dir.is_dir():
        raise StudioError(f"Run folder not found: {run_dir}.", "Pick a folder written by a studio run.")
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise StudioError(f"{run_dir} is not a run folder: it has no metrics.json.",
                          "Pick the folder that holds metrics.json, recipe.json and report.html.")
    metrics = _read_json(metrics_file, "metrics file")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("before"), dict):
        raise StudioError(f"{metrics_file} is not a compression run's metrics (no before/after numbers).",
                          "Training-only runs (studio train) have no comparison; open a pruning run.")
    return read_recipe(run_dir, metrics, lambda path: _read_json(path, "recipe"))


# ---------------------------------------------------------------------------------------------
# charts: the engine's SVG, rasterised

def svg_to_image(svg: str, scale: float = CHART_SCALE) -> QImage:
    """Render an SVG string onto a white QImage ``scale`` times its nominal size."""
    styled = svg.replace(">", ">" + SVG_STYLE, 1) if "<style" not in svg else svg
    renderer = QSvgRenderer(QByteArray(styled.encode("utf-8")))
    if not renderer.isValid():
        raise StudioError("A report chart could not be drawn (invalid SVG).", "Please report this as a bug.")
    size = renderer.defaultSize()
    image = QImage(max(1, round(size.width() * scale)), max(1, round(size.height() * scale)),
                   QImage.Format.Format_RGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.TextAntialiasing)
    renderer.render(painter, QRectF(0, 0, image.width(), image.height()))
    painter.end()
    return image


class _Charts:
    """Collects chart images for one document and returns the <img> tags that show them."""

    def __init__(self):
        self.images: dict[str, QImage] = {}

    def tag(self, svg: str, width: float) -> str:
        if not svg:
            return ""
        image = svg_to_image(svg)
        name = f"chart-{len(self.images)}.png"
        self.images[name] = image
        height = width * image.height() / image.width()
        return f'<img src="{name}" width="{width:.0f}" height="{height:.0f}">'

    def add_to(self, doc: QTextDocument) -> None:
        for name, image in self.images.items():
            doc.addResource(QTextDocument.ResourceType.ImageResource, QUrl(name), image)


# ---------------------------------------------------------------------------------------------
# sections (Qt's rich-text subset: tables instead of grids and cards)

def _kv_table(rows: list) -> str:
    body = "".join(f'<tr><td class="k">{_e(k)}</td><td>{v}</td></tr>' for k, v in rows)
    return f'<table cellspacing="0" cellpadding="1">{body}</table>'


def _grid(head: list, rows: list, numeric=None, wrap=()) -> str:
    """A table ruled between rows; ``head`` and cells are HTML.

    The ``numeric`` columns (default: all but the first) align right; only the ``wrap`` columns
    may break lines, so a row never splits across pages and names stay whole.
    """
    numeric = set(range(1, len(head))) if numeric is None else set(numeric)
    rule = f"border-bottom: 1px solid {LINE};"

    def attrs(i, header=False):
        align = "right" if i in numeric else "left"
        nowrap = "" if i in wrap else " white-space: nowrap;"
        shade = f" background-color: {SOFT};" if header else ""
        return f' align="{align}" style="{rule}{nowrap}{shade}"'

    header = "".join(f"<th{attrs(i, True)}>{h}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td{attrs(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return (f'<table width="100%" cellspacing="0" cellpadding="3" style="border-collapse: collapse;">'
            f"<thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>")


def _header(metrics: dict) -> str:
    badge = ('&nbsp;&nbsp;<span class="badge">&nbsp;untrained weights: accuracy figures mean little&nbsp;</span>'
             if (metrics.get("model") or {}).get("trained") is False else "")
    meta = _kv_table([(k, _e(v)) for k, v in header_rows(metrics)])
    return f'<h1>Compression report</h1><p><span class="sub">{_e(model_name(metrics))}</span>{badge}</p>{meta}'


def _summary(metrics: dict) -> str:
    """The headline changes (the HTML report's cards) as one small table."""
    cells = [[_e(row.label), _e(f"{row.before} → {row.after}"),
              f'<span class="{"" if row.good is None else ("good" if row.good else "bad")}">{_e(row.change)}</span>']
             for row in headlines(metrics, compact=True)]
    return "<h2>Summary</h2>" + _grid(["", "Before → after", "Change"], cells) if cells else ""


def _stage_table(metrics: dict) -> str:
    titles, rows = stage_rows(metrics, compact=True)
    if not titles:
        return ""
    return "<h2>Numbers</h2>" + _grid(["", *(_e(t) for t in titles)],
                                      [[_e(c) for c in (label, *cells)] for label, cells in rows])


def _history(metrics: dict, charts: _Charts) -> str:
    # drawn narrower than in the HTML page so their text stays legible at half the page width
    blocks = []
    for title, svgs in history_charts(metrics, width=380, height=230):
        tags = "&nbsp;".join(charts.tag(svg, TEXT_WIDTH_PX / 2 - 4) for svg in svgs)
        blocks.append(f"<h2>{_e(title)}</h2><p>{tags}</p>")
    return "".join(blocks)


def _layers(metrics: dict, charts: _Charts) -> str:
    rows = [[f'<span class="mono">{_e(name)}</span>', *(_e(c) for c in cells)] for name, *cells in layer_rows(metrics)]
    if not rows:
        return ""
    chart = charts.tag(layer_chart(metrics["layers"]), TEXT_WIDTH_PX)
    return ("<h2>Layers</h2>" + (f"<p>{chart}</p>" if chart else "") +
            _grid(list(LAYER_COLUMNS), rows, numeric=range(2, 7)))


def _exports(metrics: dict) -> str:
    rows = [[_e(fmt), f'<span class="mono">{_e(name)}</span>', *(_e(c) for c in cells)]
            for fmt, name, *cells in export_rows(metrics)]
    if not rows:
        return ""
    table = _grid(list(EXPORT_COLUMNS), rows, numeric=(2, 3), wrap=(4,))
    return f'<h2>Exports</h2><p class="muted">{EXPORTS_NOTE}</p>' + table


def _plan(metrics: dict) -> str:
    rows = [(label, f'<span class="mono">{_e(value)}</span>') for label, value in plan_rows(metrics)]
    return "<h2>Pruning plan</h2>" + _kv_table(rows) if rows else ""


def _recipe(recipe: Optional[dict]) -> str:
    """The training settings of the recipe; the full file stays in the run folder."""
    if not recipe:
        return ""
    rows = []
    for key, title in (("sparse_training", "Sparse training"), ("finetune", "Fine-tuning")):
        cfg = recipe.get(key)
        if isinstance(cfg, dict) and (cfg.get("epochs") or 0) > 0:
            parts = [f"{cfg['epochs']} epoch{'s' if cfg['epochs'] != 1 else ''}", f"lr {cfg.get('lr')}",
                     str(cfg.get("optimizer", "")), f"{cfg.get('schedule', '')} schedule",
                     f"device {cfg.get('device', 'auto')}" + (", AMP" if cfg.get("amp") else "")]
            if key == "sparse_training" and cfg.get("bn_l1"):
                parts.append(f"BN L1 λ {cfg['bn_l1']:g}")
            rows.append((title, _e(", ".join(p for p in parts if p))))
    data = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
    if data.get("batch_size"):
        rows.append(("Batch size", _e(data["batch_size"])))
    if "retrain" in recipe:
        rows.append(("After pruning", "retrain from scratch" if recipe["retrain"] else "fine-tune the kept weights"))
    if recipe.get("exports"):
        rows.append(("Exports", _e(", ".join(str(x) for x in recipe["exports"]))))
    if "seed" in recipe:
        rows.append(("Seed", _e(recipe["seed"])))
    if not rows:
        return ""
    return ("<h2>Recipe</h2>" + _kv_table(rows) +
            '<p class="muted">The full recipe is recipe.json in the run folder: run it again to reproduce the run.</p>')


def _search(metrics: dict, charts: _Charts) -> str:
    """The target search: outcome, Pareto front and sensitivity charts, trials, per-group losses."""
    rows = search_rows(metrics)
    if not rows:
        return ""
    svgs = [svg for svg in (pareto_chart(metrics, width=380, height=230),
                            sensitivity_chart(metrics, width=380, height=230)) if svg]
    tags = "&nbsp;".join(charts.tag(svg, TEXT_WIDTH_PX / 2 - 4) for svg in svgs)
    trials = _grid(list(TRIAL_COLUMNS), [[_e(c) for c in row] for row in trial_rows(metrics)], numeric=(1, 4, 5, 8),
                   wrap=(2, 3))
    columns, sens_rows = sensitivity_table(metrics)
    sens = ("<h3>Sensitivity: top-1 points lost with only that group pruned</h3>" +
            _grid([_e(c) for c in columns], [[f'<span class="mono">{_e(r[0])}</span>', *(_e(c) for c in r[1:])]
                                             for r in sens_rows], numeric=range(1, len(columns)))) if sens_rows else ""
    return ("<h2>Target search</h2>" + _kv_table([(k, _e(v)) for k, v in rows]) + (f"<p>{tags}</p>" if tags else "")
            + "<h3>Trials</h3>" + trials + sens)


def _warnings(metrics: dict) -> str:
    items = "".join(f"<li>{_e(w)}</li>" for w in warning_lines(metrics))
    return f"<h2>Warnings</h2><ul>{items}</ul>" if items else ""


def report_html(metrics: dict, recipe: Optional[dict], charts: _Charts) -> str:
    """The report as Qt rich text; chart images are collected in ``charts``."""
    version = metrics.get("studio_version")
    body = "".join(part for part in (
        _header(metrics), _summary(metrics), _stage_table(metrics), _search(metrics, charts), _history(metrics, charts),
        _layers(metrics, charts), _exports(metrics), _plan(metrics), _warnings(metrics), _recipe(recipe)) if part)
    footer = (f'<p class="muted" style="margin-top: 18px;">Generated by Compression Studio'
              f"{(' ' + _e(version)) if version else ''} on {datetime.date.today().isoformat()}.</p>")
    return (f"<html><head><title>{_e(report_title(metrics))}</title><style>{STYLE}</style></head>"
            f"<body>{body}{footer}</body></html>")


# ---------------------------------------------------------------------------------------------
# writing

def build_document(metrics: dict, recipe: Optional[dict] = None) -> QTextDocument:
    """The report as a QTextDocument with its chart images attached (not yet paginated)."""
    charts = _Charts()
    text = report_html(metrics, recipe, charts)
    doc = QTextDocument()
    font = QFont()
    font.setPointSizeF(9.0)
    doc.setDefaultFont(font)
    doc.setDocumentMargin(0)   # the page margins are the writer's
    charts.add_to(doc)         # resources first: setHtml lays out the images at once
    doc.setHtml(text)
    return doc


def _line_top(doc: QTextDocument, block) -> float:
    """Document y of the block's first line (pagination may push lines down inside a block)."""
    top = doc.documentLayout().blockBoundingRect(block).top()
    layout = block.layout()
    return top + (layout.lineAt(0).y() if layout is not None and layout.lineCount() else 0.0)


def keep_headings_with_next(doc: QTextDocument, page_height: float) -> int:
    """Move each heading that would end a page to the next one; returns how many were moved."""
    moved = 0
    block = doc.begin()
    while block.isValid():
        following = block.next()
        while following.isValid() and not following.text().strip():
            following = following.next()   # skip empty spacer blocks
        if block.blockFormat().headingLevel() and following.isValid():
            doc.documentLayout().documentSize()   # finish the (lazy) layout after earlier moves
            if int(_line_top(doc, block) // page_height) != int(_line_top(doc, following) // page_height):
                fmt = QTextBlockFormat()
                fmt.setPageBreakPolicy(QTextFormat.PageBreakFlag.PageBreak_AlwaysBefore)
                QTextCursor(block).mergeBlockFormat(fmt)
                moved += 1
        block = block.next()
    return moved


def _paint_pages(doc: QTextDocument, writer: QPdfWriter, title: str, body: QSizeF) -> None:
    painter = QPainter()
    if not painter.begin(writer):
        raise StudioError("Could not start writing the PDF report.",
                          "Check that the run folder is writable and the disk is not full.")
    try:
        footer_font = QFont(doc.defaultFont())
        footer_font.setPointSizeF(7.5)
        pages = doc.pageCount()
        for page in range(pages):
            if page:
                writer.newPage()
            painter.save()
            painter.translate(0, -page * body.height())
            context = QAbstractTextDocumentLayout.PaintContext()
            context.clip = QRectF(0, page * body.height(), body.width(), body.height())
            doc.documentLayout().draw(painter, context)
            painter.restore()
            # footer: a rule, the title on the left, the page number on the right
            top = body.height() + writer.resolution() * 0.12
            painter.setPen(QPen(QColor(LINE), writer.resolution() / 150))
            painter.drawLine(QPointF(0, top), QPointF(body.width(), top))
            painter.setPen(QColor(MUTED))
            painter.setFont(footer_font)
            text_rect = QRectF(0, top + writer.resolution() * 0.04, body.width(), writer.resolution() * 0.25)
            painter.drawText(text_rect, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop), title)
            painter.drawText(text_rect, int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop),
                             f"Page {page + 1} of {pages}")
    finally:
        painter.end()


def write_pdf_report(run_dir) -> Path:
    """Write ``run_dir/report.pdf`` from the run's metrics.json (and recipe.json); return its path.

    The file is written to a temporary file beside it and renamed when complete: on any error
    nothing is left behind and an existing report.pdf is kept. A missing or damaged
    metrics.json is a `StudioError`.
    """
    run_dir = Path(run_dir).expanduser()
    metrics, recipe = read_metrics(run_dir)
    if QGuiApplication.instance() is None:
        raise StudioError("Writing a PDF report needs the Qt application to be running.",
                          "Create a QGuiApplication first (the GUI does), or use the run's report.html.")
    doc = build_document(metrics, recipe)
    title = report_title(metrics)
    target = run_dir / PDF_NAME
    with atomic_write(target) as tmp:
        writer = QPdfWriter(str(tmp))
        writer.setResolution(RESOLUTION)
        writer.setTitle(title)
        writer.setCreator("Compression Studio")
        writer.setPageLayout(QPageLayout(QPageSize(QPageSize.PageSizeId.A4), QPageLayout.Orientation.Portrait,
                                         MARGINS_MM, QPageLayout.Unit.Millimeter))
        # lay the text out at the PDF's own resolution (exact font metrics), leaving room for the footer
        doc.documentLayout().setPaintDevice(writer)
        body = QSizeF(writer.width(), writer.height() - RESOLUTION * FOOTER_INCH)
        doc.setPageSize(body)
        keep_headings_with_next(doc, body.height())
        _paint_pages(doc, writer, title, body)
        del writer   # the PDF is complete and closed when the writer goes away
        if tmp.stat().st_size == 0:
            raise StudioError(f"Could not write the PDF report in {run_dir}.",
                              "Check that the folder is writable and the disk is not full.")
    return target


def write_pdf_report_in_subprocess(run_dir, timeout_s: float = 300) -> Path:
    """`write_pdf_report` in a child process, for callers on a worker thread.

    Qt's text layout and PDF painting hold Python's GIL for up to ~100 ms at a time, which
    would freeze the UI thread just as long; a child process has its own interpreter. Its
    failure is a `StudioError` with the child's last error line.
    """
    import os
    import subprocess
    import sys
    run_dir = Path(run_dir).expanduser()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}   # a PDF needs no display
    try:
        done = subprocess.run([sys.executable, "-m", "studio.app.pdf_report", str(run_dir)], env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise StudioError(f"Writing report.pdf took longer than {timeout_s:.0f} s and was stopped.",
                          "The HTML report in the run folder has the same content.") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise StudioError(f"report.pdf could not be written: {lines[-1] if lines else 'unknown error'}",
                          "The HTML report in the run folder has the same content.")
    return run_dir / PDF_NAME


def main(argv=None) -> int:
    """``python -m studio.app.pdf_report RUN_DIR``: write RUN_DIR/report.pdf."""
    import sys
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m studio.app.pdf_report RUN_DIR", file=sys.stderr)
        return 2
    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 - fonts and painting need it
    try:
        print(write_pdf_report(args[0]))
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
