"""Channels that can only be pruned together: importance averaged over each such set.

Through a channel shuffle or equal chunks (``graph.tp_mappings``), one channel of a group's
root layer can pull others of the same layer along: in a ShuffleNetV2 stage, pruning one
channel of the stream removes a whole set of them in every block. torch-pruning ranks the
root's channels one by one, so at a rate of 0.3 it picked channels from many sets, and their
union took 92 % of stage 4 (or every channel of a layer, and the group was skipped).
Averaging the importance over each set makes the ranking pick whole sets, the least
important first, so a group is cut to its rate, over by less than one set.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from studio.engine.graph import Hazard
from studio.engine.graph.tp_mappings import expands
from studio.engine.graph.tp_patches import tp_guards


def couples(group: Any) -> bool:
    """Whether any edge of ``group`` maps one channel to several (only then can sets form)."""
    return any(expands(m) for dep, _ in group for m in dep.index_mapping if m is not None)


def channel_sets(dg: Any, group: Any) -> list[list[int]]:
    """The root layer's channels of ``group`` in sets that torch-pruning prunes together."""
    root = group[0].dep
    sets, placed = [], set()
    for i in sorted(set(int(i) for i in group[0].idxs)):
        if i in placed:
            continue
        members = sorted(set(int(j) for j in dg.get_pruning_group(root.target.module, root.handler, [i])[0].idxs))
        placed.update(members)
        sets.append(members)
    return sets


def set_averaged(estimate: Callable, dg: Any) -> Callable:
    """``estimate(group)`` with each coupled set's channels given the set's mean importance."""
    def averaged(group: Any) -> Any:
        imp = estimate(group)
        if imp is None or not couples(group):
            return imp
        out = imp.clone()
        for members in channel_sets(dg, group):
            idx = torch.tensor([m for m in members if m < len(imp)], dtype=torch.long)
            if len(idx):
                out[idx] = imp[idx].mean()
        return out
    return averaged


def tied_whole(dg: Any, groups: list, names: dict) -> list[Hazard]:
    """A hazard for each group whose root channels form one single set: pruning any channel prunes all.

    Found in the 48-channel stream of ShuffleNetV2's 8-block stage 3, where the chained
    shuffles and chunks tie every channel to every other.
    """
    found = []
    with tp_guards(dg):
        for group in groups:
            if not couples(group) or len(channel_sets(dg, group)) != 1:
                continue
            root = names.get(group[0].dep.target.module)
            layers = [names[dep.target.module] for dep, _ in group
                      if dg.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names]
            found.append(Hazard(f"The channels of the group of {root} are tied into one set by the model's channel "
                                f"shuffles and chunks: pruning any of them would prune all {len(group[0].idxs)}. "
                                "Left whole.", [n for n in layers if n] or [root]))
    return found
