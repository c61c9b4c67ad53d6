"""Turn a run folder's numbers into one self-contained HTML comparison report.

The page has no scripts, no external files and no network access: charts are inline SVG
drawn by the small helpers below, styles are inline CSS, and every string that came from
the user (model spec, layer names, notes, warnings) is HTML-escaped. Any section whose data
is missing (no data set, no fine-tuning, no exports) is simply left out.

This module also owns the report's *content* for the PDF report (`studio.app.pdf_report`):
the public functions under "report content" say which rows, labels, values and chart series
a report shows, so that both renderers only add their own markup.
"""
from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from studio.engine.errors import StudioError
from studio.engine.files import write_text
from studio.engine.jobs.report_format import (
    COLORS,
    delta_pt,
    escape,
    finite,
    human_bytes,
    human_count,
    human_ms,
    human_pct,
    nice_ticks,
    ratio_text,
    tick_label,
)
from studio.engine.jobs.report_reconstruct import (
    RECONSTRUCTION_COLUMNS,
    reconstruction_layer_rows,
    reconstruction_rows,
)
from studio.engine.jobs.report_search import (
    TRIAL_COLUMNS,
    pareto_chart,
    search_rows,
    sensitivity_chart,
    sensitivity_table,
    trial_rows,
)

STAGES = (("before", "Before"), ("pruned", "Pruned"), ("reconstructed", "Reconstructed"), ("after", "Fine-tuned"))
PHASE_TITLES = {"sparse-train": "Sparse training", "fine-tune": "Fine-tuning", "retrain": "Retraining from scratch"}


_e = escape   # the short name the markup below uses


# ---------------------------------------------------------------------------------------------
# number formatting


def _when(created) -> str:
    try:
        return datetime.datetime.fromisoformat(str(created)).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(created)


def latency_entry(stage: Optional[dict], batch: str) -> Optional[dict]:
    """A stage's latency measurement for ``batch`` (a key of its "latency"); None unless it has a finite median_ms."""
    lat = (stage or {}).get("latency") or {}
    entry = lat.get(batch) if isinstance(lat, dict) else None
    return entry if isinstance(entry, dict) and finite(entry.get("median_ms")) is not None else None


def latency_batches(stages: list) -> list:
    """The latency keys ("cpu/bs1", "8", ...) measured in any of ``stages``: numbers first, in order, then by name."""
    keys = set()
    for stage in stages:
        lat = (stage or {}).get("latency")
        if isinstance(lat, dict):
            keys.update(str(k) for k in lat)
    return sorted(keys, key=lambda k: (int(k) if k.isdigit() else math.inf, k))


# ---------------------------------------------------------------------------------------------
# SVG charts


def line_chart(title: str, series: list, *, y_unit: str = "", width: int = 460, height: int = 250) -> str:
    """An SVG line chart. ``series`` is [(label, [(x, y), ...]), ...]; points with y None are dropped."""
    series = [(label, [(x, y) for x, y in pts if finite(x) is not None and finite(y) is not None])
              for label, pts in series]
    series = [(label, pts) for label, pts in series if pts]
    if not series:
        return ""
    left, right, top, bottom = 52, 14, 40, 38
    pw, ph = width - left - right, height - top - bottom
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    yt = nice_ticks(min(ys), max(ys))
    y_lo, y_hi = yt[0], yt[-1]

    def px(x):
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y):
        return top + ph - (y - y_lo) / (y_hi - y_lo) * ph

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg">',
           f'<title>{_e(title)}</title>',
           f'<text x="{left}" y="16" class="ct">{_e(title)}</text>']
    step = yt[1] - yt[0]
    for t in yt:
        y = py(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
                   f'{_e(tick_label(t, step) + y_unit)}</text>')
    # whole epochs only, thinned so labels never collide
    first, last = math.ceil(min(xs)), math.floor(max(xs))
    every = max(1, math.ceil((last - first + 1) / 10))
    for x in range(first, last + 1, every):
        out.append(f'<text x="{px(x):.1f}" y="{top + ph + 16}" class="tick" text-anchor="middle">{x}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" class="tick" text-anchor="middle">epoch</text>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>')
    lx = left
    for i, (label, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}">'
                       f'<title>{_e(label)}, epoch {_e(x)}: {_e(f"{y:.4g}{y_unit}")}</title></circle>')
        out.append(f'<rect x="{lx}" y="24" width="10" height="10" fill="{color}"/>'
                   f'<text x="{lx + 14}" y="33" class="tick">{_e(label)}</text>')
        lx += 24 + 7 * len(label)
    out.append("</svg>")
    return "\n".join(out)


def layer_chart(layers: list, width: int = 760) -> str:
    """Horizontal bar pairs: channels before (grey) and after (blue) for each pruned-or-kept layer."""
    rows = [(str(l.get("name", "")), finite(l.get("channels_before")), finite(l.get("channels_after")))
            for l in layers if isinstance(l, dict)]
    rows = [(n, b, a) for n, b, a in rows if b is not None and a is not None]
    if not rows:
        return ""
    longest = max(len(n) for n, _, _ in rows)
    label_w = min(240, 12 + 6.6 * longest)
    bar_w = width - label_w - 70
    row_h, top = 18, 34
    height = top + row_h * len(rows) + 8
    most = max(b for _, b, _ in rows) or 1
    legend = max(label_w, 160)   # right of the title, however short the layer names
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" aria-label="Channels per layer" xmlns="http://www.w3.org/2000/svg">',
           "<title>Channels per layer, before and after pruning</title>",
           '<text x="0" y="16" class="ct">Channels per layer</text>',
           f'<rect x="{legend:.0f}" y="6" width="10" height="10" fill="#cbd5e1"/>'
           f'<text x="{legend + 14:.0f}" y="15" class="tick">before</text>',
           f'<rect x="{legend + 70:.0f}" y="6" width="10" height="10" fill="{COLORS[0]}"/>'
           f'<text x="{legend + 84:.0f}" y="15" class="tick">after</text>']
    for i, (name, before, after) in enumerate(rows):
        y = top + i * row_h
        shown = name if len(name) * 6.6 + 12 <= label_w else "…" + name[-int((label_w - 12) / 6.6) + 1:]
        out.append(f'<g><title>{_e(name)}: {before:.0f} → {after:.0f} channels</title>'
                   f'<text x="{label_w - 6:.0f}" y="{y + 11}" class="tick mono" text-anchor="end">{_e(shown)}</text>'
                   f'<rect x="{label_w:.0f}" y="{y + 1}" width="{bar_w * before / most:.1f}" height="7" fill="#cbd5e1"/>'
                   f'<rect x="{label_w:.0f}" y="{y + 8}" width="{bar_w * after / most:.1f}" height="7" '
                   f'fill="{COLORS[0]}"/>'
                   f'<text x="{label_w + bar_w * before / most + 4:.1f}" y="{y + 12}" class="tick">'
                   f'{after:.0f}/{before:.0f}</text></g>')
    out.append("</svg>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# report content: what the HTML report and the PDF report (studio.app.pdf_report) show

LAYER_COLUMNS = ("Layer", "Type", "Channels before", "Channels after", "Kept", "Params before", "Params after")
EXPORT_COLUMNS = ("Format", "File", "Size", "max |Δ|", "Note")
EXPORTS_NOTE = ("Each file was reloaded and run on a fixed random batch; "
                "“max |Δ|” is the largest difference from the model's own outputs.")


class Headline(NamedTuple):
    """One headline change of the run: ``before`` and ``after`` as text; ``good`` None when neutral."""
    label: str
    before: str
    after: str
    change: str
    good: Optional[bool]


def model_name(metrics: dict) -> str:
    """The model as the report names it: its spec, else its architecture."""
    model = metrics.get("model") or {}
    return model.get("spec") or model.get("arch") or "model"


def report_title(metrics: dict) -> str:
    """The report's title, e.g. 'Compression report — cifar:resnet20'."""
    return f"Compression report — {model_name(metrics)}"


def header_rows(metrics: dict) -> list:
    """The run's facts under the title as (label, text) pairs; unknown ones are left out."""
    model = metrics.get("model") or {}
    data = metrics.get("data") or {}
    plan = metrics.get("plan") or {}
    wall = finite(metrics.get("wall_seconds"))
    rows = [("Architecture", model.get("arch") if model.get("arch") != model_name(metrics) else None),
            ("Weights", model.get("weights_note")),
            ("Input", "×".join(str(s) for s in model.get("input_size") or []) or None),
            ("Classes", model.get("num_classes")),
            ("Data", " — ".join(str(x) for x in (data.get("spec"), data.get("summary")) if x) or "none (data-free)"),
            ("Criterion", plan.get("criterion")),
            ("Created", _when(metrics["created"]) if metrics.get("created") else None),
            ("Device", metrics.get("device")),
            ("Run time", f"{wall:.1f} s" if wall else None)]
    return [(label, str(value)) for label, value in rows if value not in (None, "")]


def headlines(metrics: dict, *, compact: bool = False) -> list:
    """The headline changes from before to the final model (fine-tuned, else pruned) as `Headline` rows.

    Size, MACs and parameters; latency at the first measured batch; top-1 accuracy. ``compact``
    gives the PDF's shorter wording: no noun after a ratio, latency named by its batch only.
    """
    before = metrics.get("before") or {}
    final = metrics.get("after") or metrics.get("pruned") or {}
    if not before or not final:
        return []
    rows = []
    for label, key, fmt, better, worse, noun in (("Parameters", "params", human_count, "fewer", "more", "params"),
                                                 ("MACs", "macs", human_count, "fewer", "more", "MACs"),
                                                 ("Size on disk", "dense_bytes", human_bytes, "smaller", "larger", "")):
        b, a = finite(before.get(key)), finite(final.get(key))
        if b is None or a is None:
            continue
        change = ratio_text(b, a, better, worse)
        if change and change != "no change" and not compact:
            change = f"{change} {noun}".strip()
        rows.append(Headline(label, fmt(b), fmt(a), change, None if change == "no change" else a < b))
    for batch in latency_batches([before, final])[:1]:
        b, a = latency_entry(before, batch), latency_entry(final, batch)
        if b and a and b["median_ms"] and a["median_ms"]:
            bm, am = b["median_ms"], a["median_ms"]
            change = ratio_text(bm, am, "faster", "slower")
            label = f"Latency ({batch})" if compact else f"Latency (batch {batch}, {b.get('device', '?')})"
            rows.append(Headline(label, human_ms(bm), human_ms(am), change, None if change == "no change" else am < bm))
    b, a = finite(before.get("top1")), finite(final.get("top1"))
    if b is not None and a is not None:
        rows.append(Headline("Top-1 accuracy", human_pct(b), human_pct(a), delta_pt(b, a), a >= b))
    return rows


def _latency_cell(stage: dict, batch: str) -> str:
    entry = latency_entry(stage, batch)
    if not entry:
        return "—"
    p90 = f" (p90 {human_ms(entry['p90_ms'])})" if finite(entry.get("p90_ms")) is not None else ""
    return human_ms(entry["median_ms"]) + p90


def stage_rows(metrics: dict, *, compact: bool = False) -> tuple:
    """The numbers of each stage (before, pruned, fine-tuned) as ``(titles, rows)``.

    ``titles`` names the stages the run has; each row is ``(label, [text per stage])``, and a
    row with no value at all (a step that never ran, e.g. no data → no accuracy) is left out.
    Latency rows are labelled 'Latency, batch cpu/bs1 (cpu)', or with ``compact`` 'Latency,
    cpu/bs1' (the device only where the batch key does not already name it).
    """
    # Without training the final model is the pruned (or refit) one: no "Fine-tuned" column repeating it.
    trained = any(k in (metrics.get("history") or {}) for k in ("fine-tune", "retrain"))
    stages = [(title, metrics[key]) for key, title in STAGES if isinstance(metrics.get(key), dict)
              and (key != "after" or trained or not isinstance(metrics.get("pruned"), dict))]
    if not stages:
        return [], []
    rows = [("Parameters", lambda s: human_count(s.get("params"))),
            ("MACs", lambda s: human_count(s.get("macs"))),
            ("Size, dense", lambda s: human_bytes(s.get("dense_bytes"))),
            ("Size, compressed", lambda s: human_bytes(s.get("compressed_bytes"))),
            ("Zero weights", lambda s: human_pct(s.get("sparsity")))]
    for batch in latency_batches([s for _, s in stages]):
        device = next(((latency_entry(s, batch) or {}).get("device") for _, s in stages if latency_entry(s, batch)),
                      None)
        if compact:
            label = f"Latency, {batch}" + (f" ({device})" if device and device not in batch else "")
        else:
            label = f"Latency, batch {batch}" + (f" ({device})" if device else "")
        rows.append((label, lambda s, batch=batch: _latency_cell(s, batch)))
    rows += [("Top-1 accuracy", lambda s: human_pct(s.get("top1"))),
             ("Top-5 accuracy", lambda s: human_pct(s.get("top5")))]
    body = []
    for label, cell in rows:
        cells = [cell(s) for _, s in stages]
        if any(c != "—" for c in cells):
            body.append((label, cells))
    return [title for title, _ in stages], body


def history_series(metrics: dict) -> list:
    """The training curves of each phase as ``(phase_title, loss_series, accuracy_series)``.

    Phases come in the order of `PHASE_TITLES`, then unknown ones by name; each series is
    ``[(label, [(epoch, value), ...]), ...]`` as `line_chart` takes it, epochs counted from 1
    like the progress display and accuracies in percent.
    """
    history = metrics.get("history") or {}
    if not isinstance(history, dict):
        return []
    order = [p for p in PHASE_TITLES if p in history] + sorted(p for p in history if p not in PHASE_TITLES)
    out = []
    for phase in order:
        epochs = [e for e in history.get(phase) or [] if isinstance(e, dict)]
        if not epochs:
            continue

        def points(key, scale=1.0):
            # epochs are stored 0-based
            return [((i if finite(e.get("epoch")) is None else e["epoch"]) + 1,
                     None if finite(e.get(key)) is None else e[key] * scale) for i, e in enumerate(epochs)]

        out.append((PHASE_TITLES.get(phase, phase),
                    [("train loss", points("train_loss")), ("val loss", points("val_loss"))],
                    [("val top-1", points("val_top1", 100)), ("train top-1", points("train_accuracy", 100))]))
    return out


def history_charts(metrics: dict, *, width: int = 460, height: int = 250) -> list:
    """`history_series` drawn as ``(phase_title, [loss chart SVG, accuracy chart SVG])``.

    ``width`` and ``height`` size each chart; empty charts, and phases with none, are left out.
    """
    out = []
    for title, loss, accuracy in history_series(metrics):
        charts = [line_chart(f"{title}: loss", loss, width=width, height=height),
                  line_chart(f"{title}: accuracy", accuracy, y_unit="%", width=width, height=height)]
        charts = [c for c in charts if c]
        if charts:
            out.append((title, charts))
    return out


def _layer_row(layer: dict) -> tuple:
    cb, ca = finite(layer.get("channels_before")), finite(layer.get("channels_after"))
    kept = human_pct(ca / cb) if cb and ca is not None else "—"
    return (str(layer.get("name", "")), str(layer.get("type", "")), human_count(cb), human_count(ca), kept,
            human_count(layer.get("params_before")), human_count(layer.get("params_after")))


def layer_rows(metrics: dict) -> list:
    """One row of texts per layer, in the order of `LAYER_COLUMNS` (the chart is `layer_chart`)."""
    return [_layer_row(layer) for layer in metrics.get("layers") or [] if isinstance(layer, dict)]


def _export_row(export: dict) -> tuple:
    path = str(export.get("path") or "")
    diff = finite(export.get("max_abs_diff"))
    diff_text = "skipped" if not path else ("not checked" if diff is None else f"{diff:.1e}")
    return (str(export.get("format", "")), Path(path).name if path else "—",
            "—" if not path else human_bytes(export.get("bytes")), diff_text, str(export.get("note") or ""))


def export_rows(metrics: dict) -> list:
    """One row of texts per exported file, in the order of `EXPORT_COLUMNS` (see `EXPORTS_NOTE`)."""
    return [_export_row(export) for export in metrics.get("exports") or [] if isinstance(export, dict)]


def _plan_value(key: str, value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True) if value else "none"
    if key == "rate" and finite(value) is not None:
        return f"{value:g} (remove {value * 100:.0f}% of channels)"
    if key == "unstructured_sparsity" and finite(value) is not None:
        return f"{value:g} ({value * 100:.0f}%)"
    return str(value)


def plan_rows(metrics: dict) -> list:
    """The pruning plan as (label, text) pairs, e.g. ('Rate', '0.5 (remove 50% of channels)')."""
    plan = metrics.get("plan")
    if not isinstance(plan, dict):
        return []
    return [(k.replace("_", " ").capitalize(), _plan_value(k, v)) for k, v in plan.items()]


def warning_lines(metrics: dict) -> list:
    """The run's warnings as texts (empty ones left out)."""
    return [str(w) for w in metrics.get("warnings") or [] if w]


# ---------------------------------------------------------------------------------------------
# page sections

CSS = """
:root { color-scheme: light; --fg: #1f2937; --muted: #6b7280; --line: #e5e7eb; --accent: #2563eb;
        --good: #15803d; --bad: #b91c1c; --bg-soft: #f8fafc; }
* { box-sizing: border-box; }
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1100px; padding: 24px 28px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.sub { color: var(--muted); margin: 0 0 14px; word-break: break-all; }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
.meta dt { color: var(--muted); } .meta dd { margin: 0; word-break: break-word; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
         vertical-align: middle; margin-left: 8px; }
.badge.warn { background: #fef3c7; color: #92400e; border: 1px solid #f59e0b; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); gap: 12px; margin-top: 18px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; background: var(--bg-soft); }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 18px; font-weight: 600; margin: 4px 0 2px; font-variant-numeric: tabular-nums; }
.card .change { font-weight: 600; }
.good { color: var(--good); } .bad { color: var(--bad); } .muted { color: var(--muted); }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { font-weight: 600; background: var(--bg-soft); }
td.n, th.n { text-align: right; white-space: nowrap; }
tbody tr:hover { background: #f1f5f9; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
svg.chart { max-width: 100%; height: auto; }
svg .ct { font-size: 13px; font-weight: 600; fill: #1f2937; }
svg .tick { font-size: 11px; fill: #4b5563; }
svg .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
svg .grid { stroke: #e5e7eb; } svg .axis { stroke: #9ca3af; }
ul.warnings li { margin: 4px 0; }
details pre { background: var(--bg-soft); border: 1px solid var(--line); padding: 10px; overflow: auto; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
@media print { body { padding: 0; } .card, svg.chart, tr { break-inside: avoid; } }
"""


def _table(head, rows, numeric, mono=()) -> str:
    """A table of texts (escaped here): ``numeric`` columns align right, ``mono`` body cells are monospaced."""
    def cls(i, header=False):
        return ' class="n"' if i in numeric else (' class="mono"' if i in mono and not header else "")
    head = "".join(f"<th{cls(i, True)}>{_e(h)}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _header(metrics: dict) -> str:
    badge = ('<span class="badge warn" title="Accuracy numbers of untrained weights mean little">'
             "untrained weights</span>") if (metrics.get("model") or {}).get("trained") is False else ""
    meta = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in header_rows(metrics))
    return (f"<header><h1>Compression report{badge}</h1><p class=\"sub mono\">{_e(model_name(metrics))}</p>"
            f"<dl class=\"meta\">{meta}</dl></header>")


def _card(row: Headline) -> str:
    cls = "" if row.good is None else ("good" if row.good else "bad")
    return (f'<div class="card"><div class="label">{_e(row.label)}</div>'
            f'<div class="value">{_e(row.before)} → {_e(row.after)}</div>'
            f'<div class="change {cls}">{_e(row.change) or "&nbsp;"}</div></div>')


def _cards(metrics: dict) -> str:
    cards = [_card(row) for row in headlines(metrics)]
    return f'<section class="cards">{"".join(cards)}</section>' if cards else ""


def _stage_table(metrics: dict) -> str:
    titles, rows = stage_rows(metrics)
    if not titles:
        return ""
    return "<h2>Numbers</h2>" + _table(["", *titles], [[label, *cells] for label, cells in rows],
                                       numeric=range(1, len(titles) + 1))


def _history_charts(metrics: dict) -> str:
    return "".join(f'<h2>{_e(title)}</h2><div class="charts">{"".join(charts)}</div>'
                   for title, charts in history_charts(metrics))


def _layers(metrics: dict) -> str:
    rows = layer_rows(metrics)
    if not rows:
        return ""
    return "<h2>Layers</h2>" + layer_chart(metrics["layers"]) + _table(LAYER_COLUMNS, rows, numeric=range(2, 7),
                                                                       mono=(0,))


def _exports(metrics: dict) -> str:
    rows = export_rows(metrics)
    if not rows:
        return ""
    return (f'<h2>Exports</h2><p class="muted">{EXPORTS_NOTE}</p>' +
            _table(EXPORT_COLUMNS, rows, numeric=(2, 3), mono=(1,)))


def _plan(metrics: dict) -> str:
    rows = "".join(f"<dt>{_e(label)}</dt><dd class=\"mono\">{_e(value)}</dd>" for label, value in plan_rows(metrics))
    return f'<h2>Pruning plan</h2><dl class="meta">{rows}</dl>' if rows else ""


def _warnings(metrics: dict) -> str:
    items = "".join(f"<li>{_e(w)}</li>" for w in warning_lines(metrics))
    return f'<h2>Warnings</h2><ul class="warnings">{items}</ul>' if items else ""


def _search(metrics: dict) -> str:
    rows = search_rows(metrics)
    if not rows:
        return ""
    facts = "".join(f"<dt>{_e(label)}</dt><dd>{_e(value)}</dd>" for label, value in rows)
    charts = "".join(c for c in (pareto_chart(metrics), sensitivity_chart(metrics)) if c)
    columns, sens_rows = sensitivity_table(metrics)
    sens = ("<h3>Sensitivity: top-1 points lost with only that group pruned</h3>" +
            _table(columns, sens_rows, numeric=range(1, len(columns)), mono=(0,))) if sens_rows else ""
    return (f'<h2>Target search</h2><dl class="meta">{facts}</dl><div class="charts">{charts}</div>'
            "<h3>Trials</h3>" + _table(TRIAL_COLUMNS, trial_rows(metrics), numeric=(1, 4, 5, 8)) + sens)


def _protected(metrics: dict) -> str:
    rows = [[p["root"], ", ".join(p["layers"]), p["why"]] for p in metrics.get("protected_groups") or []]
    if not rows:
        return ""
    return ("<h2>Left unpruned, and why</h2><p>Pruning these groups broke the model, so they were found by "
            "bisection and kept whole; everything else was pruned.</p>"
            + _table(("Group", "Layers", "Why"), rows, numeric=(), mono=(0, 1)))


def _reconstruction(metrics: dict) -> str:
    rows = reconstruction_rows(metrics)
    if not rows:
        return ""
    facts = "".join(f"<dt>{_e(label)}</dt><dd>{_e(value)}</dd>" for label, value in rows)
    return (f'<h2>Reconstruction (no training)</h2><dl class="meta">{facts}</dl>'
            "<h3>Output error of each refit layer, ‖ΔY‖² / ‖Y‖² on the calibration images</h3>"
            + _table(RECONSTRUCTION_COLUMNS, reconstruction_layer_rows(metrics), numeric=(2, 3, 4, 5), mono=(0,)))


def _recipe(recipe: Optional[dict]) -> str:
    if not recipe:
        return ""
    return ("<h2>Recipe</h2><details><summary>recipe.json — run it again with this to reproduce the run"
            f"</summary><pre class=\"mono\">{_e(json.dumps(recipe, indent=2))}</pre></details>")


def render_report(metrics: dict, recipe: Optional[dict] = None) -> str:
    """The whole report page for a run's ``metrics.json`` (and optionally its recipe) as an HTML string."""
    if not isinstance(metrics, dict):
        raise StudioError("The run's metrics are not a JSON object.", "Run the job again to rewrite metrics.json.")
    title = report_title(metrics)
    version = metrics.get("studio_version")
    body = "\n".join(part for part in (
        _header(metrics), _cards(metrics), _stage_table(metrics), _protected(metrics), _search(metrics), _reconstruction(metrics),
        _history_charts(metrics),
        _layers(metrics),
        _exports(metrics), _plan(metrics), _warnings(metrics), _recipe(recipe)) if part)
    footer = f"Generated by Compression Studio{(' ' + _e(version)) if version else ''}."
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
            f"<footer>{footer}</footer>\n</body>\n</html>\n")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StudioError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}).",
                          "Run the job again to rewrite it.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise StudioError(f"Cannot read {path}: {exc}.", "Check the file's permissions, or run the job again.") from exc


def read_recipe(run_dir: Path, metrics: dict, read_json: Callable[[Path], object]) -> tuple:
    """The run folder's recipe.json for a report, read with ``read_json``: ``(metrics, recipe)``.

    ``recipe`` is None when the file is missing or not a JSON object. The recipe only adds a
    section, so a file ``read_json`` fails on (a `StudioError`) gives the report a warning
    instead of giving no report: the returned ``metrics`` is then a copy with that warning added.
    """
    recipe = None
    recipe_path = run_dir / "recipe.json"
    if recipe_path.is_file():
        try:
            recipe = read_json(recipe_path)
        except StudioError as exc:
            metrics = {**metrics, "warnings": [*(metrics.get("warnings") or []),
                                               f"recipe.json could not be read, so it is not shown: {exc.problem}"]}
    return metrics, recipe if isinstance(recipe, dict) else None


def write_report(run_dir) -> Path:
    """Read ``run_dir/metrics.json`` (and ``recipe.json`` if present) and atomically write ``run_dir/report.html``."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise StudioError(f"There is no metrics.json in {run_dir}.",
                          "Choose a run folder written by Compression Studio, or run the job again.")
    metrics = _read_json(metrics_path)
    if not isinstance(metrics, dict):
        raise StudioError(f"{metrics_path} does not hold a JSON object.", "Run the job again to rewrite it.")
    metrics, recipe = read_recipe(run_dir, metrics, _read_json)
    return write_text(run_dir / "report.html", render_report(metrics, recipe))
