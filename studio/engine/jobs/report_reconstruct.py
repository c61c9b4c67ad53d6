"""What the report and the window show of a reconstruction: its facts and its per-layer errors."""
from __future__ import annotations

from studio.engine.jobs.report_format import finite, human_pct

METHOD_TITLES = {"ls": "least squares after the plan's criterion (He et al. 2017)",
                 "lasso": "LASSO channel selection, then least squares (He et al. 2017)",
                 "cap": "channels by the error left after compensation, then least squares (CaP, our reading)"}
RECONSTRUCTION_COLUMNS = ("Layer", "Type", "Unknowns", "Samples", "Error before", "Error after", "Note")


def reconstruction_rows(metrics: dict) -> list:
    """(label, text) facts: method, images, time, and top-1 after pruning, reconstruction and fine-tuning."""
    rec = metrics.get("reconstruction")
    if not rec:
        return []
    layers = rec.get("layers") or []
    fitted = [r for r in layers if r.get("fitted")]
    top1 = [("after pruning", (metrics.get("pruned") or {}).get("top1")),
            ("after reconstruction", (metrics.get("reconstructed") or {}).get("top1"))]
    if (metrics.get("history") or {}).get("fine-tune"):
        top1.append(("after fine-tuning", (metrics.get("after") or {}).get("top1")))
    rows = [("Method", METHOD_TITLES.get(rec.get("method"), rec.get("method"))),
            ("Calibration", f"{rec.get('images')} images, {rec.get('positions_per_image')} positions each, "
                            f"ridge {rec.get('ridge')}"),
            ("Layers refit", f"{len(fitted)} of {len(layers)} in {finite(rec.get('seconds')) or 0:.1f} s"),
            ("Top-1", ", ".join(f"{human_pct(v)} {label}" for label, v in top1 if v is not None))]
    return [(label, str(text)) for label, text in rows if text]


def reconstruction_layer_rows(metrics: dict) -> list:
    """One row of texts per layer, in the order of `RECONSTRUCTION_COLUMNS` (errors are ‖ΔY‖² / ‖Y‖²)."""
    def err(value) -> str:
        value = finite(value)
        return "—" if value is None else f"{value:.4f}"
    return [[r["layer"], r.get("type", ""), str(r.get("unknowns", "")), str(r.get("samples", "")),
             err(r.get("before")), err(r.get("after")), r.get("note", "")]
            for r in (metrics.get("reconstruction") or {}).get("layers") or []]
