"""The HTML report: well-formed, self-contained, human numbers, escaped user strings, atomic writes."""
from __future__ import annotations

import copy
import errno
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest

from studio.engine.errors import StudioError
from studio.engine.jobs import write_report
from studio.engine.jobs.report import (
    delta_pt,
    human_bytes,
    human_count,
    human_ms,
    nice_ticks,
    ratio_text,
    render_report,
)

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# SVG children written self-closing (<line/>) are reported by html.parser as start+end, so are fine.


class StrictParser(HTMLParser):
    """Records every tag; fails on mismatched or unclosed elements and on anything that loads a resource."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.tags, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag in ("script", "iframe", "object", "embed", "img", "link") or "src" in attrs:
            self.errors.append(f"external or active content: <{tag}>")
        if any(k.startswith("on") for k in attrs):
            self.errors.append(f"event handler on <{tag}>")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == [], parser.errors[:5]
    assert parser.stack == [], f"unclosed: {parser.stack}"
    assert page.startswith("<!DOCTYPE html>")
    return parser


def stage(params, macs, dense, median, top1, top5):
    return {"params": params, "macs": macs, "dense_bytes": dense, "compressed_bytes": int(dense * 0.9),
            "sparsity": 0.0, "top1": top1, "top5": top5,
            "latency": {"1": {"batch_size": 1, "device": "cpu", "median_ms": median, "p90_ms": median * 1.2,
                              "runs": 20}}}


def epoch(i, loss, top1):
    return {"phase": "fine-tune", "epoch": i, "epochs": 3, "train_loss": loss, "train_accuracy": top1 - 0.05,
            "val_loss": loss * 0.9, "val_top1": top1, "val_top5": 0.95, "lr": 0.01, "seconds": 10.2}


FULL = {
    "studio_version": "0.1.0", "created": "2026-11-22T15:00:00", "wall_seconds": 12.3, "device": "cpu",
    "model": {"spec": "cifar:resnet20", "kind": "cifar", "arch": "cifar:resnet20", "trained": True,
              "weights_note": "CIFAR-10 weights", "input_size": [3, 32, 32], "num_classes": 10},
    "data": {"spec": "cifar10:/data", "summary": "CIFAR-10, 5000 train / 1000 val", "num_classes": 10,
             "train_samples": 5000, "val_samples": 1000},
    "plan": {"criterion": "l1", "rate": 0.5, "layer_rates": {"layer3": 0.3}, "protected": ["fc"],
             "global_ranking": False, "round_to": None, "iterative_steps": 1, "unstructured_sparsity": 0.0},
    "before": stage(272474, 41_000_000, 1_100_000, 2.1, 0.91, 0.99),
    "pruned": stage(70_000, 20_400_000, 290_000, 1.3, 0.55, 0.90),
    "after": stage(70_000, 20_400_000, 290_000, 1.2, 0.902, 0.99),
    "layers": [{"name": "layer1.0.conv1", "type": "Conv2d", "channels_before": 16, "channels_after": 8,
                "params_before": 2304, "params_after": 1152},
               {"name": "layer3.2.conv2", "type": "Conv2d", "channels_before": 64, "channels_after": 32,
                "params_before": 36864, "params_after": 9216}],
    "history": {"fine-tune": [epoch(0, 1.2, 0.62), epoch(1, 0.8, 0.85), epoch(2, 0.5, 0.902)]},
    "exports": [{"format": "onnx", "path": "model.onnx", "bytes": 300_000, "max_abs_diff": 2.4e-6, "note": ""},
                {"format": "checkpoint", "path": "", "bytes": 0, "max_abs_diff": math.nan,
                 "note": "Skipped: no architecture name"}],
    "warnings": ["3 layers kept all their channels."],
}

MINIMAL = {
    "created": "2026-11-22T15:00:00", "device": "cpu",
    "model": {"spec": "my_model.pt", "arch": None, "trained": True, "input_size": [3, 32, 32], "num_classes": 10},
    "data": None, "plan": {"criterion": "l1", "rate": 0.3},
    "before": {"params": 1000, "macs": 2000, "dense_bytes": 4000, "latency": {}, "top1": None, "top5": None},
    "pruned": {"params": 700, "macs": 1400, "dense_bytes": 2800, "latency": {}, "top1": None, "top5": None},
    "after": None, "layers": [], "history": {}, "exports": [], "warnings": [],
}


def test_number_formatting():
    assert human_count(272474) == "272 K"
    assert human_count(1_234_567) == "1.23 M"
    assert human_count(41_000_000) == "41.0 M"
    assert human_count(999_999) == "1.00 M"    # rounds up into the next unit, not "1000 K"
    assert human_count(12) == "12" and human_count(None) == "—" and human_count(math.nan) == "—"
    assert human_bytes(1_100_000) == "1.10 MB" and human_bytes(512) == "512 B"
    assert human_ms(2.1) == "2.1 ms"
    assert ratio_text(41e6, 20.4e6, "fewer", "more") == "2.01× fewer"
    assert ratio_text(1.0, 1.2, "faster", "slower") == "1.20× slower"
    assert ratio_text(5, 5, "fewer", "more") == "no change" and ratio_text(None, 5, "a", "b") == ""
    assert delta_pt(0.91, 0.902) == "\u22120.8 pt" and delta_pt(0.5, 0.503) == "+0.3 pt"
    ticks = nice_ticks(0.37, 1.21)
    assert ticks[0] <= 0.37 and ticks[-1] >= 1.21 and 3 <= len(ticks) <= 8
    assert nice_ticks(5, 5)[0] < 5 < nice_ticks(5, 5)[-1]   # a flat series still gets an axis


def test_full_report_has_every_section_and_the_key_numbers():
    page = render_report(FULL, recipe={"model": {"spec": "cifar:resnet20"}, "exports": ["onnx"]})
    parser = parse(page)
    text = " ".join(" ".join(parser.text).split())

    for expected in ("272 K", "70.0 K", "41.0 M", "20.4 M", "1.10 MB", "290 kB", "2.01× fewer MACs",
                     "3.89× fewer params", "1.75× faster", "91.0%", "90.2%", "\u22120.8 pt", "2.1 ms",
                     "2026-11-22 15:00", "cifar10:/data", "l1", "layer3.2.conv2", "2.4e-06", "300 kB",
                     "skipped", "3 layers kept all their channels.", "Fine-tuning", "Pruned", "Fine-tuned",
                     "Top-5 accuracy", "remove 50% of channels", "recipe.json"):
        assert expected in text, expected
    # one loss chart + one accuracy chart for fine-tuning, and the per-layer bar chart
    assert parser.tags.count("svg") == 3
    assert parser.tags.count("polyline") == 4
    assert "untrained" not in text


def test_minimal_report_leaves_out_what_did_not_run():
    page = render_report(MINIMAL)
    parser = parse(page)
    text = " ".join(parser.text)
    assert "svg" not in parser.tags          # no history, no layers → no charts
    for absent in ("Top-1", "Top-5", "Latency", "Exports", "Warnings", "Fine-tuned", "Recipe"):
        assert absent not in text, absent
    assert "1.43× fewer params" in text and "none (data-free)" in text and "my_model.pt" in text


def test_untrained_model_is_flagged():
    metrics = copy.deepcopy(MINIMAL)
    metrics["model"]["trained"] = False
    assert "untrained weights" in " ".join(parse(render_report(metrics)).text)


def test_user_strings_are_escaped():
    evil = '<script>alert("x")</script>'
    metrics = copy.deepcopy(FULL)
    metrics["model"]["spec"] = evil
    metrics["data"]["summary"] = evil
    metrics["layers"][0]["name"] = evil
    metrics["exports"][0]["note"] = evil
    metrics["warnings"] = [evil]
    metrics["history"]["<img src=x onerror=alert(1)>"] = [epoch(0, 1.0, 0.5)]
    page = render_report(metrics)
    parser = parse(page)                     # fails on any <script>, <img> or on* attribute
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert evil in " ".join(parser.text)     # still shown to the reader, as text


def test_garbage_values_do_not_break_the_page():
    metrics = copy.deepcopy(FULL)
    metrics["before"]["params"] = "lots"
    metrics["after"]["latency"] = {"1": None}
    metrics["history"]["fine-tune"][1]["val_top1"] = None
    metrics["layers"].append("not a layer")
    parse(render_report(metrics))
    with pytest.raises(StudioError):
        render_report(["not", "a", "dict"])


def test_write_report_is_atomic(tmp_path, monkeypatch):
    (tmp_path / "metrics.json").write_text(json.dumps(FULL, allow_nan=True))
    (tmp_path / "recipe.json").write_text(json.dumps({"plan": {"rate": 0.5}}))
    path = write_report(tmp_path)
    assert path == tmp_path / "report.html"
    assert "2.01× fewer MACs" in path.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "recipe.json", "report.html"]

    # a failure while the page is being written leaves the previous report whole and no temp file
    previous = path.read_text(encoding="utf-8")
    original = Path.write_text

    def write_then_fail(self, data, *args, **kwargs):
        original(self, data[:50], *args, **kwargs)   # half a page, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_then_fail)
    with pytest.raises(StudioError, match="disk is full"):
        write_report(tmp_path)
    monkeypatch.undo()
    assert path.read_text(encoding="utf-8") == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "recipe.json", "report.html"]


def test_write_report_explains_missing_or_broken_inputs(tmp_path):
    with pytest.raises(StudioError, match="no metrics.json"):
        write_report(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(StudioError, match="not valid JSON"):
        write_report(tmp_path)
    # a broken recipe.json costs only the recipe appendix, and the report says so
    (tmp_path / "metrics.json").write_text(json.dumps(MINIMAL))
    (tmp_path / "recipe.json").write_text("{broken")
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "recipe.json could not be read" in page
