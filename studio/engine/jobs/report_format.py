"""Number formatting and chart scales shared by the report's sections (HTML and PDF).

Every figure a report prints goes through these: counts ('41.0 M'), bytes ('1.10 MB'),
times, percentages, ratios ('2.01× fewer'), accuracy changes in points, HTML escaping, and
the round tick values the SVG charts use.
"""
from __future__ import annotations

import html
import math
from typing import Optional

COLORS = ("#2563eb", "#ea580c", "#16a34a", "#9333ea")
MINUS = "\u2212"


def escape(value) -> str:
    """``str(value)`` escaped for HTML text and attribute values (quotes included)."""
    return html.escape(str(value), quote=True)


def finite(value) -> Optional[float]:
    """A finite float, or None for anything missing, non-numeric (bools included) or NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _sig3(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _scaled(value, units) -> str:
    v = finite(value)
    if v is None:
        return "—"
    a = abs(v)
    sign = MINUS if v < 0 else ""
    for i, (suffix, scale) in enumerate(units):
        if scale == 1 and a == int(a):
            text = str(int(a))
        else:
            text = _sig3(a / scale)
        # move up a unit when rounding reaches 1000 (999 999 → "1.00 M", not "1000 K")
        if float(text) < 1000 or i == len(units) - 1:
            return f"{sign}{text}{suffix}"
    raise AssertionError("unreachable")


def human_count(value) -> str:
    """272474 → '272 K', 41_000_000 → '41.0 M'."""
    return _scaled(value, (("", 1), (" K", 1e3), (" M", 1e6), (" G", 1e9), (" T", 1e12)))


def human_bytes(value) -> str:
    """1_100_000 → '1.10 MB' (decimal units, as file managers show them)."""
    return _scaled(value, ((" B", 1), (" kB", 1e3), (" MB", 1e6), (" GB", 1e9), (" TB", 1e12)))


def human_ms(value) -> str:
    v = finite(value)
    return "—" if v is None else f"{v:.3g} ms"


def human_pct(fraction) -> str:
    v = finite(fraction)
    return "—" if v is None else f"{v * 100:.1f}%"


def ratio_text(before, after, better: str, worse: str) -> str:
    """'2.01× fewer' when after is smaller; '1.20× more' when larger; '' when unknown."""
    b, a = finite(before), finite(after)
    if b is None or a is None or a <= 0 or b <= 0:
        return ""
    if abs(b - a) / b < 0.005:
        return "no change"
    return f"{b / a:.2f}× {better}" if b > a else f"{a / b:.2f}× {worse}"


def delta_pt(before, after) -> str:
    """Accuracy change in percentage points: '−0.8 pt', '+0.3 pt'."""
    b, a = finite(before), finite(after)
    if b is None or a is None:
        return ""
    d = (a - b) * 100
    return f"{'+' if d >= 0 else MINUS}{abs(d):.1f} pt"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list:
    """Round tick values (steps of 1, 2, 2.5 or 5 × 10^n) that cover [lo, hi]."""
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    start, end = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    return [start + i * step for i in range(int(round((end - start) / step)) + 1)]


def tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    if decimals and abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1   # steps like 0.25 need one more digit
    return f"{value:.{decimals}f}".replace("-", MINUS)
