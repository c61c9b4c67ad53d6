"""Layered (Sugiyama-style) top-to-bottom layout of a layer graph, ready to draw.

`layered_layout` gives every node a centre and box size and every edge a polyline, so the
GUI only draws. The steps are the classic ones:

1. break cycles by reversing DFS back edges;
2. rank nodes by the longest path from the sources (sources sit just above their first
   consumer);
3. split edges longer than one rank with dummy nodes; long edges from one source share one
   chain of dummies, and chains that still have exactly the same targets merge, so
   DenseNet's all-to-all concatenations become one bus instead of O(n³) dummies;
4. order each rank by barycenter sweeps down and up, keeping the ordering with the fewest
   crossings;
5. assign x with Brandes–Köpf (four alignments, balanced), where the main chain (the
   longest path) and dummy-to-dummy segments are aligned first: the main chain is one
   straight vertical line and skip connections run beside the blocks, not through them;
6. route each edge through its dummies, vertical inside each rank band.

grandalf (pure Python) was not used: it needs one dummy per rank per edge, and DenseNet-201
has ~170,000 of them, far beyond the 1 s budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import networkx as nx

Point = tuple[float, float]


@dataclass
class Layout:
    """Where to draw each node and edge; y grows downward, (0, 0) is the top-left corner."""
    positions: dict[Hashable, Point] = field(default_factory=dict)       # node centre
    sizes: dict[Hashable, tuple[float, float]] = field(default_factory=dict)  # box width, height
    edges: dict[tuple[Hashable, Hashable], list[Point]] = field(default_factory=dict)  # source bottom → target top
    rank: dict[Hashable, int] = field(default_factory=dict)
    width: float = 0.0
    height: float = 0.0


def default_node_size(node: Hashable, data: dict) -> tuple[float, float]:
    """A box wide enough for the node's label at about 7 px per character."""
    label = str(data.get("label", node))
    return max(72.0, 7.0 * len(label) + 20.0), 30.0


def layered_layout(g: nx.DiGraph, *,
                   node_size: Callable[[Hashable, dict], tuple[float, float]] = default_node_size,
                   rank_sep: float = 36.0, node_sep: float = 24.0, edge_sep: float = 12.0,
                   sweeps: int = 8) -> Layout:
    """Lay ``g`` out top to bottom.

    ``rank_sep`` is the vertical gap between ranks, ``node_sep`` the horizontal gap between
    boxes, ``edge_sep`` the gap between edges passing the same rank, ``sweeps`` the number
    of down-and-up ordering passes. Self-loops are not routed. An edge reversed to break a
    cycle is routed from its source's top to its target's bottom.
    """
    nodes = list(g.nodes)
    if not nodes:
        return Layout()
    index = {n: i for i, n in enumerate(nodes)}
    n_real = len(nodes)
    size = [tuple(map(float, node_size(n, g.nodes[n]))) for n in nodes]

    # 1. Acyclic: reverse back edges found by DFS in insertion order.
    out = [[index[v] for v in g.successors(n) if v != n] for n in nodes]
    reversed_edges = _back_edges(out)
    work: list[tuple[int, int]] = []
    for u in range(n_real):
        for v in out[u]:
            work.append((v, u) if (u, v) in reversed_edges else (u, v))
    work = list(dict.fromkeys(work))   # x→y plus a reversed y→x would be drawn twice
    preds: list[list[int]] = [[] for _ in range(n_real)]
    succs: list[list[int]] = [[] for _ in range(n_real)]
    for u, v in work:
        succs[u].append(v)
        preds[v].append(u)

    # 2. Longest-path ranks.
    rank = _longest_path_ranks(preds, succs)

    # 3. Dummy chains.
    layer_of = list(rank)
    chains, uses, dummies = _dummy_chains(work, rank)
    n_all = n_real + len(dummies)
    layer_of.extend(r for r, _ in dummies)
    up: list[list[int]] = [[] for _ in range(n_all)]
    down: list[list[int]] = [[] for _ in range(n_all)]
    linked: set[tuple[int, int]] = set()

    def link(a: int, b: int) -> None:
        if (a, b) not in linked:
            linked.add((a, b))
            down[a].append(b)
            up[b].append(a)

    for (u, v), k in uses.items():
        if k == 0:
            link(u, v)
        else:
            link(u, chains[u][0])
            link(chains[u][k - 1], v)
    for chain in chains.values():
        for a, b in zip(chain, chain[1:]):
            link(a, b)
    widths = [s[0] for s in size] + [0.0] * len(dummies)
    heights = [s[1] for s in size] + [0.0] * len(dummies)

    # 4. Ordering.
    layers = _initial_order(n_all, layer_of, down)
    layers = _reduce_crossings(layers, up, down, sweeps)

    # 5. x coordinates.
    spine = _spine(preds, rank, n_real)
    xs = _brandes_koepf(layers, up, down, widths, n_real, spine, node_sep, edge_sep)

    # 6. y coordinates and routes.
    band_h = [0.0] * len(layers)
    for r, layer in enumerate(layers):
        band_h[r] = max((heights[v] for v in layer), default=0.0)
    band_top, y = [], 0.0
    for r in range(len(layers)):
        band_top.append(y)
        y += band_h[r] + rank_sep
    ys = [band_top[layer_of[v]] + band_h[layer_of[v]] / 2 for v in range(n_all)]

    # Each chain as vertical runs (x, first dummy, last dummy), so an edge's polyline has
    # one bend per change of x rather than two points per rank it passes.
    runs: dict[int, list[tuple[float, int, int]]] = {}
    for u, chain in chains.items():
        rs: list[tuple[float, int, int]] = []
        for i, d in enumerate(chain):
            if rs and abs(rs[-1][0] - xs[d]) < 1e-6:
                rs[-1] = (rs[-1][0], rs[-1][1], i)
            else:
                rs.append((xs[d], i, i))
        runs[u] = rs
    routes: dict[tuple[int, int], list[Point]] = {}
    for (u, v), k in uses.items():
        pts: list[Point] = [(xs[u], ys[u] + heights[u] / 2)]
        if k:
            chain = chains[u]
            for x, first, last in runs[u]:
                if first >= k:
                    break
                r0, r1 = layer_of[chain[first]], layer_of[chain[min(last, k - 1)]]
                pts.append((x, band_top[r0]))
                pts.append((x, band_top[r1] + band_h[r1]))
        pts.append((xs[v], ys[v] - heights[v] / 2))
        routes[(u, v)] = [p for i, p in enumerate(pts) if i == 0 or p != pts[i - 1]]

    # Shift so the drawing starts at (0, 0).
    left = min(min(xs[v] - widths[v] / 2 for v in range(n_all)),
               min((p[0] for pts in routes.values() for p in pts), default=0.0))
    right = max(max(xs[v] + widths[v] / 2 for v in range(n_all)),
                max((p[0] for pts in routes.values() for p in pts), default=0.0))
    result = Layout(width=right - left, height=max(0.0, y - rank_sep))
    for i, n in enumerate(nodes):
        result.positions[n] = (xs[i] - left, ys[i])
        result.sizes[n] = size[i]
        result.rank[n] = rank[i]
    for u in range(n_real):
        for v in out[u]:
            if (u, v) in reversed_edges:
                pts = list(reversed(routes[(v, u)]))
            else:
                pts = routes[(u, v)]
            result.edges[(nodes[u], nodes[v])] = [(px - left, py) for px, py in pts]
    return result


def _back_edges(out: list[list[int]]) -> set[tuple[int, int]]:
    """Edges that close a cycle in an iterative DFS taken in insertion order."""
    state = [0] * len(out)   # 0 new, 1 on stack, 2 done
    back: set[tuple[int, int]] = set()
    for s in range(len(out)):
        if state[s]:
            continue
        state[s] = 1
        stack = [(s, 0)]
        while stack:
            u, i = stack[-1]
            if i < len(out[u]):
                stack[-1] = (u, i + 1)
                v = out[u][i]
                if state[v] == 1:
                    back.add((u, v))
                elif state[v] == 0:
                    state[v] = 1
                    stack.append((v, 0))
            else:
                state[u] = 2
                stack.pop()
    return back


def _longest_path_ranks(preds: list[list[int]], succs: list[list[int]]) -> list[int]:
    """rank(v) = length of the longest path from any source to v; sources then move down
    to just above their highest consumer so side inputs do not hang at the top."""
    n = len(preds)
    indeg = [len(p) for p in preds]
    order = [v for v in range(n) if indeg[v] == 0]
    rank = [0] * n
    i = 0
    while i < len(order):
        u = order[i]
        i += 1
        for v in succs[u]:
            rank[v] = max(rank[v], rank[u] + 1)
            indeg[v] -= 1
            if indeg[v] == 0:
                order.append(v)
    for v in range(n):
        if not preds[v] and succs[v]:
            rank[v] = min(rank[s] for s in succs[v]) - 1
    low = min(rank, default=0)
    return [r - low for r in rank]


def _dummy_chains(work: list[tuple[int, int]], rank: list[int]):
    """Dummy chains for edges longer than one rank.

    Returns ``(chains, uses, dummies)``: ``chains[u]`` lists the dummies below source u,
    one per rank; ``uses[(u, v)]`` is how many of them edge u→v runs through (0 for a
    one-rank edge); ``dummies`` holds each dummy's (rank, key). All long edges of a source
    share its chain, and the dummy at rank r is also shared with every other chain whose
    set of targets still below r is the same.
    """
    n_real = len(rank)
    dummy_id: dict[tuple[int, Any], int] = {}
    dummies: list[tuple[int, Any]] = []
    chains: dict[int, list[int]] = {}
    uses: dict[tuple[int, int], int] = {}
    long_targets: dict[int, list[int]] = {}
    for u, v in work:
        span = rank[v] - rank[u]
        uses[(u, v)] = span - 1 if span > 1 else 0
        if span > 1:
            long_targets.setdefault(u, []).append(v)
    for u, targets in long_targets.items():
        targets = sorted(set(targets), key=lambda t: rank[t])
        # remaining[k]: the targets from k on, one frozenset per suffix.
        remaining: list[frozenset] = [frozenset()] * (len(targets) + 1)
        for k in range(len(targets) - 1, -1, -1):
            remaining[k] = remaining[k + 1] | {targets[k]}
        chain: list[int] = []
        k = 0
        for r in range(rank[u] + 1, rank[targets[-1]]):
            while rank[targets[k]] <= r:
                k += 1
            key = (r, remaining[k])
            d = dummy_id.get(key)
            if d is None:
                d = dummy_id[key] = n_real + len(dummies)
                dummies.append(key)
            chain.append(d)
        chains[u] = chain
    return chains, uses, dummies


def _initial_order(n_all: int, layer_of: list[int], down: list[list[int]]) -> list[list[int]]:
    """Ranks ordered by first visit in a DFS from the sources: the first successor of each
    node (the main path, in forward order) ends up leftmost, side branches to its right."""
    n_layers = max(layer_of) + 1
    layers: list[list[int]] = [[] for _ in range(n_layers)]
    has_up = [False] * n_all
    for u in range(n_all):
        for v in down[u]:
            has_up[v] = True
    visited = [False] * n_all
    for s in [v for v in range(n_all) if not has_up[v]]:
        if visited[s]:
            continue
        stack = [s]
        while stack:
            u = stack.pop()
            if visited[u]:
                continue
            visited[u] = True
            layers[layer_of[u]].append(u)
            stack.extend(reversed([v for v in down[u] if not visited[v]]))
    for v in range(n_all):
        if not visited[v]:
            layers[layer_of[v]].append(v)
    return layers


def _crossings_between(upper_pos: dict[int, int], lower: list[int], up: list[list[int]]) -> int:
    """Crossings between two adjacent ranks: inversions of the edge list (Fenwick tree)."""
    edges = []
    for j, v in enumerate(lower):
        for u in up[v]:
            edges.append((upper_pos[u], j))
    if len(edges) < 2:
        return 0
    edges.sort()
    size = len(lower)
    tree = [0] * (size + 1)
    count = 0
    seen = 0
    for _, j in edges:
        # edges already seen whose lower end is to the right of j cross this one
        i, le = j + 1, 0
        while i > 0:
            le += tree[i]
            i -= i & -i
        count += seen - le
        i = j + 1
        while i <= size:
            tree[i] += 1
            i += i & -i
        seen += 1
    return count


def _total_crossings(layers: list[list[int]], up: list[list[int]]) -> int:
    total = 0
    for r in range(1, len(layers)):
        pos = {v: i for i, v in enumerate(layers[r - 1])}
        total += _crossings_between(pos, layers[r], up)
    return total


def _reduce_crossings(layers: list[list[int]], up: list[list[int]], down: list[list[int]],
                      sweeps: int) -> list[list[int]]:
    """Barycenter sweeps down then up; returns the ordering with the fewest crossings."""
    best = [list(layer) for layer in layers]
    best_count = _total_crossings(layers, up)
    if best_count == 0:
        return best
    pos: dict[int, float] = {v: i for layer in layers for i, v in enumerate(layer)}
    stale = 0
    for it in range(sweeps):
        use_median = it % 2 == 1   # alternate barycenter and median: each escapes the other's traps
        for direction in (1, -1):
            order = range(1, len(layers)) if direction == 1 else range(len(layers) - 2, -1, -1)
            for r in order:
                nbrs = up if direction == 1 else down
                keyed = []
                for i, v in enumerate(layers[r]):
                    ps = sorted(pos[u] for u in nbrs[v])
                    if not ps:
                        k = float(i)
                    elif use_median:
                        m = len(ps) // 2
                        k = ps[m] if len(ps) % 2 else (ps[m - 1] + ps[m]) / 2
                    else:
                        k = sum(ps) / len(ps)
                    keyed.append((k, i, v))
                keyed.sort()
                layers[r] = [v for _, _, v in keyed]
                for i, v in enumerate(layers[r]):
                    pos[v] = i
        count = _total_crossings(layers, up)
        if count < best_count:
            best, best_count, stale = [list(layer) for layer in layers], count, 0
            if count == 0:
                break
        else:
            stale += 1
            if stale >= 3:
                break
    return best


def _spine(preds: list[list[int]], rank: list[int], n_real: int) -> set[tuple[int, int]]:
    """Edges of the main chain: a longest path of one-rank steps ending at the deepest sink."""
    if not n_real:
        return set()
    v = max(range(n_real), key=lambda i: (rank[i], -i))
    spine: set[tuple[int, int]] = set()
    while True:
        tight = [u for u in preds[v] if rank[u] == rank[v] - 1]
        if not tight:
            return spine
        u = min(tight)   # first in forward order: the main path, not the shortcut
        spine.add((u, v))
        v = u


def _brandes_koepf(layers: list[list[int]], up: list[list[int]], down: list[list[int]],
                   widths: list[float], n_real: int, spine: set[tuple[int, int]],
                   node_sep: float, edge_sep: float) -> list[float]:
    """x of every node: four Brandes–Köpf alignments, balanced by the mean of the medians."""
    n_all = len(widths)

    def priority(u: int, v: int) -> bool:   # segment that should stay vertical
        return (u >= n_real and v >= n_real) or (u, v) in spine

    conflicts = _type1_conflicts(layers, up, priority)

    def sep(a: int, b: int) -> float:
        return (widths[a] + widths[b]) / 2 + \
            ((node_sep if a < n_real else edge_sep) + (node_sep if b < n_real else edge_sep)) / 2

    results: list[tuple[str, list[float]]] = []
    for vert in ("u", "d"):
        base = layers if vert == "u" else layers[::-1]
        nbrs = up if vert == "u" else down
        for horiz in ("l", "r"):
            adj = [list(layer) if horiz == "l" else layer[::-1] for layer in base]
            root, align = _vertical_alignment(adj, nbrs, conflicts, priority, vert)
            xs = _horizontal_compaction(adj, root, align, sep, n_all)
            if horiz == "r":
                xs = [-x for x in xs]
            results.append((horiz, xs))

    # Align the four to the narrowest one, then take the mean of the two middle values.
    def extent(xs: list[float]) -> tuple[float, float]:
        return (min(xs[v] - widths[v] / 2 for v in range(n_all)),
                max(xs[v] + widths[v] / 2 for v in range(n_all)))

    spans = [extent(xs) for _, xs in results]
    narrow = min(range(4), key=lambda i: spans[i][1] - spans[i][0])
    lo, hi = spans[narrow]
    aligned = []
    for (horiz, xs), (a, b) in zip(results, spans):
        shift = lo - a if horiz == "l" else hi - b
        aligned.append([x + shift for x in xs])
    final = []
    for v in range(n_all):
        c = sorted(a[v] for a in aligned)
        final.append((c[1] + c[2]) / 2)
    return final


def _type1_conflicts(layers: list[list[int]], up: list[list[int]],
                     priority: Callable[[int, int], bool]) -> set[tuple[int, int]]:
    """Non-priority segments that cross a priority one; they are never aligned."""
    conflicts: set[tuple[int, int]] = set()
    for r in range(1, len(layers)):
        prev, layer = layers[r - 1], layers[r]
        pos = {v: i for i, v in enumerate(prev)}
        k0, scan = 0, 0
        last = layer[-1] if layer else None
        for i, v in enumerate(layer):
            w = next((u for u in up[v] if priority(u, v)), None)
            k1 = pos[w] if w is not None else len(prev)
            if w is not None or v == last:
                for s in layer[scan:i + 1]:
                    for u in up[s]:
                        p = pos[u]
                        if (p < k0 or p > k1) and not priority(u, s):
                            conflicts.add((u, s))
                scan, k0 = i + 1, k1
    return conflicts


def _vertical_alignment(layers: list[list[int]], nbrs: list[list[int]], conflicts: set,
                        priority: Callable[[int, int], bool], vert: str) -> tuple[list[int], list[int]]:
    """Blocks of vertically aligned nodes: each node joins its median neighbour in the
    previous rank (its priority neighbour first), never crossing an earlier alignment."""
    size = len(nbrs)
    root = list(range(size))
    align = list(range(size))
    pos = [0] * size
    for layer in layers:
        for i, v in enumerate(layer):
            pos[v] = i
    for layer in layers:
        prev_idx = -1
        for v in layer:
            ws = nbrs[v]
            if not ws:
                continue
            seg = (lambda w: (w, v)) if vert == "u" else (lambda w: (v, w))
            pri = [w for w in ws if priority(*seg(w))]
            cand = sorted(pri or ws, key=lambda w: pos[w])
            mid = (len(cand) - 1) / 2
            for k in sorted({int(mid), int(mid + 0.5)}):
                w = cand[k]
                if align[v] == v and prev_idx < pos[w] and seg(w) not in conflicts:
                    align[w] = v
                    root[v] = root[w]
                    align[v] = root[v]
                    prev_idx = pos[w]
    return root, align


def _horizontal_compaction(layers: list[list[int]], root: list[int], align: list[int],
                           sep: Callable[[int, int], float], n_all: int) -> list[float]:
    """Place blocks as far left as their neighbours allow, then pull each right towards
    its right-hand neighbours where it has slack (two passes over the block graph)."""
    succ: dict[int, dict[int, float]] = {}
    pred: dict[int, dict[int, float]] = {}
    for layer in layers:
        for a, b in zip(layer, layer[1:]):
            ra, rb = root[a], root[b]
            d = sep(a, b)
            if d > succ.setdefault(ra, {}).get(rb, float("-inf")):
                succ[ra][rb] = d
                pred.setdefault(rb, {})[ra] = d
    roots = sorted({root[v] for layer in layers for v in layer})
    indeg = {r: len(pred.get(r, {})) for r in roots}
    order = [r for r in roots if indeg[r] == 0]
    i = 0
    while i < len(order):
        r = order[i]
        i += 1
        for s in succ.get(r, {}):
            indeg[s] -= 1
            if indeg[s] == 0:
                order.append(s)
    x: dict[int, float] = {}
    for r in order:
        x[r] = max((x[p] + d for p, d in pred.get(r, {}).items()), default=0.0)
    for r in reversed(order):
        right = min((x[s] - d for s, d in succ.get(r, {}).items()), default=None)
        if right is not None:
            x[r] = max(x[r], right)
    return [x.get(root[v], 0.0) for v in range(n_all)]
