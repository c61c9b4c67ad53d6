"""Time the layer graph and its layout on large torchvision models.

Run ``.venv/bin/python bench/graph_layout.py``. For ResNet-50, ResNet-152 and DenseNet-201
(3×224×224 input) it times `build_graph` without and with the torch-pruning groups, and
`layered_layout`, each the median of 3 runs, and prints a markdown table with the ratio
of graph (no groups) + layout to the 1 s goal.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torchvision  # noqa: E402

from studio.engine.graph import (
    build_graph,  # noqa: E402
    layered_layout,  # noqa: E402
)

GOAL_S = 1.0


def median_time(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "resnet152", "densenet201"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = (3, 224, 224)
    rows = []
    for name in args.models:
        model = getattr(torchvision.models, name)()
        t_graph, lg = median_time(lambda: build_graph(model, size, with_groups=False), args.runs)
        t_groups, lg_full = median_time(lambda: build_graph(model, size, with_groups=True), args.runs)
        t_layout, _ = median_time(lambda: layered_layout(lg.graph), args.runs)
        total = t_graph + t_layout
        rows.append(f"| {name} | {lg.graph.number_of_nodes()} | {lg.graph.number_of_edges()} | "
                    f"{len(lg_full.groups)} | {t_graph:.3f} | {t_groups:.3f} | {t_layout:.3f} | "
                    f"{total:.3f} | {total / GOAL_S:.2f} |")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"input 1×{'×'.join(map(str, size))}, median of {args.runs} runs\n")
    print("| model | nodes | edges | groups | graph s (no groups) | graph s (with groups) | "
          "layout s | graph + layout s | ÷ 1 s goal |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
