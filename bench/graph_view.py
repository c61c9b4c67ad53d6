"""Benchmark: drawing and moving around a big graph in the studio's graph view.

Builds torchvision's ResNet-152 (random init; 517 nodes, 566 edges) and times, with the
median of several repetitions: laying it out, `GraphView.set_graph`, selecting a node with
its coupled group lit up, updating every node's rate, and repainting the view at fit,
at 30 % and at 100 % zoom, plus one wheel-zoom step. A repaint under ~16 ms keeps 60 fps.

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/graph_view.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torchvision  # noqa: E402
from machine import cpu_model  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from studio.app.graph_view import GraphView, layout_graph  # noqa: E402
from studio.engine.graph import build_graph  # noqa: E402


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    torch.set_num_threads(1)
    app = QApplication(sys.argv[:1])  # noqa: F841 - widgets need it
    layer_graph = build_graph(torchvision.models.resnet152(weights=None), (3, 224, 224))
    view = GraphView()
    view.resize(1100, 800)
    view.show()
    app.processEvents()
    rows = {"layout (node sizes + layered layout)": timed(lambda: layout_graph(layer_graph), args.repeats)}
    layout = layout_graph(layer_graph)
    rows["set_graph (scene items)"] = timed(lambda: view.set_graph(layer_graph, layout), args.repeats)
    rates = {name: 0.3 for name in layer_graph.prunable}
    rows["set_rates on every prunable layer"] = timed(lambda: view.set_rates(rates, set()), args.repeats)
    rows["select a node + light up its group"] = timed(
        lambda: (view.select_nodes([]), view.select_nodes(["layer1.0.conv1"])), args.repeats)

    def repaint() -> None:
        view.viewport().grab()

    view.fit()
    rows["repaint at fit (whole graph)"] = timed(repaint, args.repeats)
    view.resetTransform()
    view.scale(0.3, 0.3)
    rows["repaint at 30 %"] = timed(repaint, args.repeats)
    view.resetTransform()
    rows["repaint at 100 %"] = timed(repaint, args.repeats)
    rows["wheel-zoom step + repaint"] = timed(lambda: (view.zoom_by(1.15), repaint()), args.repeats)

    g = layer_graph.graph
    print(f"{datetime.date.today()}, {cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"ResNet-152: {g.number_of_nodes()} nodes, {g.number_of_edges()} edges, median of {args.repeats}")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.1f} ms |")


if __name__ == "__main__":
    main()
