"""Patches of torch-pruning internals that keep building and listing coupled groups alive, fast and bounded.

Installed at import, for good: the reshape guard (a shuffle's reshape no longer crashes graph
building) and the walk that skips channels already reached (``install_walk_dedup``).
Installed only while listing or pruning, under a lock: ``tp_guards`` (no per-group refresh of
the index mapping while listing, and an index budget). The index mappings themselves are in
``graph.tp_mappings``.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Any, Callable, Iterator

from studio.engine.errors import StudioError
from studio.engine.graph import tp_mappings  # noqa: F401 - installs the chunk and shuffle mappings

# torch-pruning's tracing notes are for its own developers; the studio's hazards, protection
# and check of the pruned model say what a user needs, in words they can act on.
for _note in ("Maximum recursive depth reached", "Unwrapped parameters detected"):
    warnings.filterwarnings("ignore", message=_note, category=UserWarning, module="torch_pruning")

_TP_PATCH_LOCK = threading.Lock()
# Index budget for listing one model's groups. Real CNNs stay far below: DenseNet-201 maps
# 2.6 M indices in total and its largest step is 0.03 M (VGG's flatten); transformers can
# make torch-pruning's lists grow without bound instead.
_MAX_STEP_INDICES = 1_000_000
_MAX_TOTAL_INDICES = 10_000_000


class TooManyIndices(Exception):
    """torch-pruning's index mapping ran away (it multiplies through chains of reshapes)."""


def runaway_indices() -> StudioError:
    """The plain-words error for a model whose channel index lists grow without bound."""
    return StudioError("torch-pruning cannot follow this model's channels: its channel index lists grow without "
                       "bound through the model's chains of reshapes, so no group can be pruned safely. "
                       "Nothing was changed.",
                       "Prune the model's convolutional parts by loading them as their own model, or use a "
                       "convolutional architecture.")


def install_reshape_guard() -> None:
    """Keep torch-pruning's graph building alive through a channel shuffle (done once, at import).

    A shuffle's view(n, groups, c // groups, h, w) makes torch-pruning divide the channel
    counts on both sides of the reshape, which is zero for ShuffleNetV2 and raises
    ZeroDivisionError while the graph is built: the whole model was lost. Without the mapping
    torch-pruning treats that reshape as element-wise, which is wrong across a shuffle; the
    shuffle hazard (`hazards.find_hazards`) protects the groups that feed it, so nothing wrong
    is pruned and the rest of the model is.
    """
    from torch_pruning.dependency import index_mapping as tp_mapping
    real = tp_mapping.update_reshape_index_mapping
    if getattr(real, "studio_guard", False):
        return

    def guarded(graph: Any, node: Any) -> None:
        try:
            real(graph, node)
        except ZeroDivisionError:
            pass   # a reshape into channel groups: no flatten mapping (see above)
    guarded.studio_guard = True  # type: ignore[attr-defined]
    tp_mapping.update_reshape_index_mapping = guarded


install_reshape_guard()


def install_walk_dedup() -> None:
    """Stop torch-pruning's group walk from re-walking channels it has already reached (done once, at import).

    Building a group, torch-pruning follows every edge from every (layer, indices) it
    reaches, and skips a step only when it has seen the very same index list at that layer
    before. Where channels meet again along many paths in different subsets (RexNet's
    partial residuals), the walk re-expands each subset: rexnet_100 had not listed its groups
    after five minutes. Every index mapping maps each channel on its own, so a step whose
    channels have all reached that layer already can add nothing; skipping it leaves the
    merged group's channels unchanged (checked on ten models from ResNet to ViT). Where one
    channel is coupled to several root channels (GhostNet, ShuffleNetV2), which of them it
    is credited to in the group's importance can differ, as it depends on the walk's order.
    """
    from torch_pruning.dependency.group import Group
    if getattr(Group.has_pruning_op, "studio_dedup", False):
        return
    real_add = Group.add_dep

    def reached(group: Any) -> dict:
        return group.__dict__.setdefault("_studio_reached", {})

    def add_dep(self: Any, dep: Any, idxs: Any) -> None:
        real_add(self, dep, idxs)
        reached(self).setdefault((dep.target, dep.handler), set()).update(getattr(i, "idx", i) for i in idxs)

    def has_pruning_op(self: Any, dep: Any, idxs: Any) -> bool:
        seen = reached(self).get((dep.target, dep.handler))
        return seen is not None and all(getattr(i, "idx", i) in seen for i in idxs)
    has_pruning_op.studio_dedup = True  # type: ignore[attr-defined]
    Group.add_dep, Group.has_pruning_op = add_dep, has_pruning_op


install_walk_dedup()


@contextlib.contextmanager
def tp_guards(dg: Any, listing_only: bool = True) -> Iterator[None]:
    """Make listing ``dg``'s groups fast and bounded.

    torch-pruning's get_pruning_group refreshes the index mapping of the whole graph each
    time (needed after pruning, not while only listing groups); on DenseNet-201 that is
    quadratic and took ~45 s. The mapping cannot change between two reads, so for this
    graph the refresh is skipped (other graphs still get the real call), which gives
    identical groups. On some models its index lists multiply through
    reshapes until memory runs out; an index budget turns that into a clear failure.
    While pruning (``listing_only`` False) the mapping must be refreshed after each group,
    so only the budget of one step applies.
    """
    from torch_pruning.dependency import graph as tp_graph
    from torch_pruning.dependency import index_mapping as tp_mapping

    real = tp_graph.index_mapping
    mappings = [c for c in vars(tp_mapping).values()
                if isinstance(c, type) and c.__name__.endswith("IndexMapping") and "__call__" in vars(c)]
    originals = {c: c.__call__ for c in mappings}
    used = [0]

    class _Once:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @staticmethod
        def update_index_mapping(graph: Any) -> None:
            if dg is None or graph is not dg:
                real.update_index_mapping(graph)

    def guarded(cls: type) -> Callable:
        call = originals[cls]

        def wrapper(self: Any, idxs: Any) -> Any:
            # A forward flatten mapping turns each index into `stride` indices: check first.
            grow = max(1, int(getattr(self, "_stride", 1))) if not getattr(self, "reverse", True) else 1
            used[0] += len(idxs) * grow if listing_only else 0
            if len(idxs) * grow > _MAX_STEP_INDICES or used[0] > _MAX_TOTAL_INDICES:
                raise TooManyIndices()
            return call(self, idxs)
        return wrapper

    with _TP_PATCH_LOCK:  # build_dependency has just computed the mapping once
        if listing_only:
            tp_graph.index_mapping = _Once()
        for cls in mappings:
            cls.__call__ = guarded(cls)
        try:
            yield
        finally:
            tp_graph.index_mapping = real
            for cls, call in originals.items():
                cls.__call__ = call
