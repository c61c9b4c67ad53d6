"""The report's target-search sections: the outcome, the trials and their Pareto front, sensitivity.

Like `studio.engine.jobs.report`, this module owns the *content* (rows, labels, chart SVG)
that both the HTML report and the PDF report (`studio.app.pdf_report`) show; each renderer
only adds its markup. Everything is read from ``metrics["search"]``, which the search job
writes (a run folder without a search has no such sections).
"""
from __future__ import annotations

from typing import Optional

from studio.engine.jobs.report_format import COLORS, MINUS, escape, finite, human_count, human_pct, nice_ticks

TRIAL_COLUMNS = ("Trial", "Rates", "Figures", "Reduction", "Top-1 pruned", "Top-1 tuned", "Targets", "Floor",
                 "Time")
_UNITS = {"macs": ("MACs", human_count), "params": ("params", human_count),
          "size": ("size", lambda v: f"{v / 1e3:.1f} kB"), "latency": ("latency", lambda v: f"{v:.2f} ms")}


def search_of(metrics: dict) -> Optional[dict]:
    search = metrics.get("search")
    return search if isinstance(search, dict) and isinstance(search.get("trials"), list) else None


def search_rows(metrics: dict) -> list:
    """The search's facts as (label, text) pairs: targets, floor, outcome, trials, analysis cost."""
    search = search_of(metrics)
    if search is None:
        return []
    original = search.get("original") or {}
    sens = search.get("sensitivity") or {}
    winner = search.get("winner")
    rows = [("Method", search.get("method")),
            ("Targets", ", ".join(search.get("targets") or [])),
            ("Accuracy floor", f"{human_pct(search.get('floor'))} (original {human_pct(original.get('top1'))}, "
                               f"at most {search.get('max_drop', 0):g} point(s) lost)"),
            ("Outcome", "targets and floor met" if search.get("outcome") == "met" else "not met"),
            ("Winner", f"trial {winner}" if winner is not None else "none"),
            ("Trials", f"{len(search['trials'])}" + (f" ({search['ran']})" if search.get("ran") else ""))]
    if sens:
        rows.append(("Sensitivity analysis",
                     f"{len(sens.get('groups') or [])} groups × {len(sens.get('rates') or [])} rates on "
                     f"{sens.get('images')} images, criterion {sens.get('criterion')}: "
                     f"{finite(sens.get('seconds')) or 0:.1f} s ({(finite(sens.get('seconds_per_probe')) or 0) * 1000:.0f}"
                     " ms per probe)"))
    return [(label, str(text)) for label, text in rows if text not in (None, "")]


def _figures_text(values: dict) -> str:
    return ", ".join(f"{_UNITS.get(k, (k, str))[1](v)} {'' if k in ('size', 'latency') else _UNITS.get(k, (k,))[0]}"
                     .strip() for k, v in (values or {}).items() if finite(v) is not None)


def trial_rows(metrics: dict) -> list:
    """One row of texts per trial, in the order of `TRIAL_COLUMNS`."""
    search = search_of(metrics)
    if search is None:
        return []
    rows = []
    for t in search["trials"]:
        ratios = ", ".join(f"{v:.2f}× {_UNITS.get(k, (k,))[0]}" for k, v in (t.get("ratios") or {}).items())
        mark = " ★" if t.get("trial") == search.get("winner") else ""
        where = (f"s {t['structured']:.2f}, u {t['unstructured']:.2f}" if "structured" in t
                 else f"τ {finite(t.get('tau')) or 0:.4f}")
        label = f"{t['member']} · {t.get('trial')}" if t.get("member") else str(t.get("trial"))
        rows.append((f"{label}{mark}", where, _figures_text(t.get("figures")),
                     ratios, human_pct(t.get("top1_pruned")), human_pct(t.get("top1")),
                     "met" if t.get("met") else "missed", "ok" if t.get("floor_ok") else "under",
                     f"{finite(t.get('seconds')) or 0:.0f} s"))
    return rows


def sensitivity_table(metrics: dict) -> tuple:
    """``(columns, rows)``: per group, the top-1 points lost at each probed rate, and the winner's rate."""
    search = search_of(metrics)
    sens = (search or {}).get("sensitivity") or {}
    groups, rates = sens.get("groups") or [], sens.get("rates") or []
    if not groups:
        return [], []
    chosen = {}
    winner = next((t for t in search["trials"] if t.get("trial") == search.get("winner")), None)
    if winner:
        chosen = winner.get("layer_rates") or {}
    base = finite(sens.get("base_top1")) or 0.0
    columns = ["Group (root layer)", "Channels", *[f"{r:.0%}" for r in rates], "Chosen rate"]
    rows = []
    for g in groups:
        drops = [f"{(base - v) * 100:.1f}".replace("-", MINUS) for v in g.get("top1") or []]
        rate = next((chosen[name] for name in g.get("layers") or [] if name in chosen), 0.0)
        rows.append((str(g.get("root")), str(g.get("channels")), *drops, f"{rate:.2f}" if rate else "0 (kept)"))
    return columns, rows


# --------------------------------------------------------------------------- charts

def xy_chart(title: str, series: list, *, x_label: str, y_unit: str = "", x_unit: str = "", width: int = 460,
             height: int = 260, lines: bool = True, marks: list = ()) -> str:
    """An SVG chart on numeric axes. ``series`` is [(label, [(x, y), ...]), ...]; ``marks`` are
    [(label, x, y)] drawn as rings (best point, original model). Points with a None are dropped."""
    series = [(label, [(x, y) for x, y in pts if finite(x) is not None and finite(y) is not None])
              for label, pts in series]
    series = [(label, pts) for label, pts in series if pts]
    marks = [(label, x, y) for label, x, y in marks if finite(x) is not None and finite(y) is not None]
    if not series:
        return ""
    left, right, top, bottom = 52, 14, 40, 40
    pw, ph = width - left - right, height - top - bottom
    xs = [x for _, pts in series for x, _ in pts] + [x for _, x, _ in marks]
    ys = [y for _, pts in series for _, y in pts] + [y for _, _, y in marks]
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))

    def px(x):
        return left + (x - xt[0]) / (xt[-1] - xt[0]) * pw

    def py(y):
        return top + ph - (y - yt[0]) / (yt[-1] - yt[0]) * ph

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
           f'<text x="{left}" y="16" class="ct">{escape(title)}</text>']
    for t in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{py(t) + 4:.1f}" class="tick" text-anchor="end">{t:g}{escape(y_unit)}</text>')
    for t in xt:
        out.append(f'<text x="{px(t):.1f}" y="{top + ph + 16}" class="tick" text-anchor="middle">'
                   f'{t:g}{escape(x_unit)}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" class="tick" text-anchor="middle">'
               f'{escape(x_label)}</text>'
               f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>')
    for i, (label, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        if lines and len(pts) > 1:
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5" '
                       f'opacity="0.8"><title>{escape(label)}</title></polyline>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="{2 if lines else 4}" fill="{color}">'
                       f'<title>{escape(label)}: {x:.3g}{escape(x_unit)}, {y:.3g}{escape(y_unit)}</title></circle>')
    for label, x, y in marks:
        out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="8" fill="none" stroke="#111827" stroke-width="2">'
                   f'<title>{escape(label)}</title></circle>'
                   f'<text x="{px(x) + 10:.1f}" y="{py(y) - 8:.1f}" class="tick">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def pareto_chart(metrics: dict, *, width: int = 460, height: int = 260) -> str:
    """Top-1 of every trial against the first target's reduction, the winner and the original ringed."""
    search = search_of(metrics)
    if search is None or not search["trials"]:
        return ""
    kind = next(iter(search["trials"][0].get("ratios") or {}), None)
    if kind is None:
        return ""
    name = _UNITS.get(kind, (kind,))[0]
    pts = [(t["ratios"].get(kind), 100 * t["top1"] if finite(t.get("top1")) is not None else None)
           for t in search["trials"]]
    marks = [("original", 1.0, 100 * (finite((search.get("original") or {}).get("top1")) or 0))]
    winner = next((t for t in search["trials"] if t.get("trial") == search.get("winner")), None)
    if winner:
        marks.append((f"winner (trial {winner['trial']})", winner["ratios"].get(kind), 100 * winner["top1"]))
    return xy_chart(f"Trials: top-1 against {name} reduction", [("trials", pts)], x_label=f"{name} reduction",
                    x_unit="×", y_unit="%", lines=False, marks=marks, width=width, height=height)


def sensitivity_chart(metrics: dict, *, width: int = 460, height: int = 260) -> str:
    """The fitted top-1 of each group against its rate (each curve: only that group pruned)."""
    search = search_of(metrics)
    sens = (search or {}).get("sensitivity") or {}
    rates, base = sens.get("rates") or [], finite(sens.get("base_top1"))
    series = [(str(g.get("root")), [(0.0, 100 * (finite(g.get("fit_base")) or base or 0))] +
               [(r * 100, 100 * v) for r, v in zip(rates, g.get("fit") or [])]) for g in sens.get("groups") or []]
    return xy_chart("Sensitivity: top-1 with one group pruned (fit)", series, x_label="channels removed in the group",
                    x_unit="%", y_unit="%", width=width, height=height)
