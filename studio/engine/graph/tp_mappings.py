"""Channel index mappings torch-pruning lacks: chunks read from autograd, chunks kept equal, channel shuffles.

torch-pruning follows a channel from the layer that makes it to every layer that reads it
through *index mappings* on the edges of its dependency graph (a concat adds an offset, a
split subtracts one). These places went wrong on real models, and are mapped here instead:

* ``torch.chunk``/``split`` on PyTorch 2: torch-pruning looked for the sizes under an autograd
  attribute that PyTorch renamed, inferred them instead, and paired the i-th reader with the
  i-th chunk. ShuffleNetV2 (``x1, x2 = x.chunk(2)``) died with IndexError while tracing. The
  sizes now come from autograd, and each reader is matched to the chunk it really reads.
* Equal chunks stay equal. ``x.chunk(2)`` splits at half of whatever width it gets, so
  pruning 3 channels from the first half and 1 from the second would move the split point.
  Channel ``i`` of every equal chunk is coupled, so they are pruned together.
* A channel shuffle (``torch.channel_shuffle``, or ``view(n, g, c/g, h, w) → transpose(1, 2) →
  view(n, c, h, w)`` written out as ShuffleNet does) moves
  channel ``j·(c/g) + k`` to ``k·g + j``. It is mapped as that permutation, and a channel is
  pruned together with the other ``g - 1`` channels of its *row* ``k``, so after pruning the
  same code (``c/g`` recomputed from the new width) still puts every kept channel in place.
* Reshapes: only a flatten of an (N, C, H, W) map into C·H·W features is mapped as a flatten
  (torch-pruning's own rule, which it lost to the same renaming); Swin's channels-last
  window reshapes keep one index per channel.
* A concat with a part whose width torch-pruning cannot infer (deep Swin stages) is left
  unmapped, as torch-pruning means to, instead of crashing the trace.

Each mapping is exact, so a model that runs after pruning computes what the unpruned model
computed on the kept channels. Where a model needs more than these (a split at sizes written
in the code), the pruned model fails its check and protection leaves that group alone.
"""
from __future__ import annotations

from typing import Any, Optional

from torch_pruning import _helpers, ops
from torch_pruning.dependency import constants
from torch_pruning.dependency import index_mapping as tp_mapping
from torch_pruning.dependency import shape_infer

_PASS_THROUGH = ("CloneBackward0", "TransposeBackward0", "PermuteBackward0")


def _hybrid(idx: int, root: Any) -> Any:
    return _helpers._HybridIndex(idx=idx, root_idx=root)


def _unique(pairs: list) -> list:
    """One entry per channel index (the first root index that reached it)."""
    seen: dict[int, Any] = {}
    for p in pairs:
        seen.setdefault(p.idx, p)
    return list(seen.values())


def expands(mapping: Any) -> bool:
    """Whether an edge's index mapping sends one channel to several that must go with it."""
    if isinstance(mapping, _Then):
        return expands(mapping.first) or expands(mapping.second)
    return isinstance(mapping, (_EqualChunks, _ShuffleRows))


# -- chunks ------------------------------------------------------------------------------------

def _split_sizes(grad_fn: Any) -> Optional[list[int]]:
    """The channel sizes of a channel split's chunks, read from its autograd node (None: another dim)."""
    dims = getattr(grad_fn, "_saved_self_sym_sizes", None)
    dim = getattr(grad_fn, "_saved_dim", None)
    if dims is None or dim is None or len(dims) < 2 or dim not in (1, 1 - len(dims)):
        return None
    sizes = getattr(grad_fn, "_saved_split_sizes", None)
    if sizes is not None:
        return [int(s) for s in sizes]
    step, total = int(getattr(grad_fn, "_saved_split_size", 0) or 0), int(dims[1])
    if step <= 0:
        return None
    return [min(step, total - start) for start in range(0, total, step)]


def _chunk_of(split_node: Any, reader: Any) -> Optional[int]:
    """Which chunk of ``split_node`` the ``reader`` node reads (autograd's output number).

    None when it reads several chunks, or none that autograd shows.
    """
    read = {int(nr) for fn, nr in getattr(reader.grad_fn, "next_functions", ()) or () if fn is split_node.grad_fn}
    return read.pop() if len(read) == 1 else None


class _EqualChunks:
    """Input channel ↔ channel of every equal chunk: ``i`` of one chunk is pruned with ``i`` of the others."""

    def __init__(self, size: int, count: int, reverse: bool):
        self.size, self.count, self.reverse = size, count, reverse

    def __call__(self, idxs: list) -> list:
        if self.reverse:   # chunk → input: the same position in every chunk
            return _unique([_hybrid(i.idx + c * self.size, i.root_idx) for i in idxs for c in range(self.count)])
        return _unique([_hybrid(i.idx % self.size, i.root_idx) for i in idxs if i.idx < self.size * self.count])


def _offsets(sizes: list[int]) -> list[int]:
    """Where each part starts along the channels, and the total at the end."""
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    return offsets


def _mappable(node: Any) -> bool:
    """Whether the split's sizes are known and every reader reads one known chunk."""
    sizes = getattr(node.module, "split_sizes", None)
    chunks = [_chunk_of(node, out) for out in node.outputs]
    return bool(sizes) and bool(chunks) and None not in chunks and node.enable_index_mapping \
        and max(chunks) < len(sizes)


def _map_split(node: Any) -> None:
    """Set the index mappings of one split node (``_mappable``)."""
    sizes = node.module.split_sizes
    chunks = [_chunk_of(node, out) for out in node.outputs]
    equal = len(sizes) > 1 and len(set(sizes)) == 1
    offsets = _offsets(sizes)   # from the sizes torch-pruning keeps current while pruning
    node.module.offsets = offsets
    for out, k in zip(node.outputs, chunks):
        if equal:
            down, up = _EqualChunks(sizes[0], len(sizes), False), _EqualChunks(sizes[0], len(sizes), True)
        else:
            span = offsets[k:k + 2]
            down = tp_mapping._SplitIndexMapping(offset=span, reverse=False)
            up = tp_mapping._SplitIndexMapping(offset=span, reverse=True)
        _set_edge(node, out, down, up)


class _Then:
    """Two index mappings, one after the other."""

    def __init__(self, first: Any, second: Any):
        self.first, self.second = first, second

    def __call__(self, idxs: list) -> list:
        return self.second(self.first(idxs))


def _set_edge(before: Any, after: Any, down: Any, up: Any) -> None:
    """Put ``down`` on the edge before → after and ``up`` on after → before.

    torch-pruning applies an edge's two slots in order. A concat reading a chunk puts its
    own mapping (concat → chunk) in the second slot, which must come first here, so both
    go into the first slot in that order.
    """
    for dep in before.dependencies:
        if dep.target is after:
            dep.index_mapping[0] = down
    for dep in after.dependencies:
        if dep.target is before:
            concat = dep.index_mapping[1]
            dep.index_mapping[0] = up if concat is None else _Then(concat, up)
            dep.index_mapping[1] = None


# -- channel shuffles --------------------------------------------------------------------------

class _ShuffleRows:
    """A channel shuffle of ``rows`` × ``cols``: pre-shuffle ``j·rows + k`` ↔ post-shuffle ``k·cols + j``.

    Every index maps to its whole row (all ``cols`` channels of row ``k``), so a row is pruned
    whole and the shuffle of the pruned width is still the same permutation.
    """

    def __init__(self, rows: int, cols: int, reverse: bool):
        self.rows, self.cols, self.reverse = rows, cols, reverse

    def __call__(self, idxs: list) -> list:
        if self.reverse:   # post → pre
            return _unique([_hybrid(j * self.rows + i.idx // self.cols, i.root_idx)
                            for i in idxs for j in range(self.cols)])
        return _unique([_hybrid((i.idx % self.rows) * self.cols + j, i.root_idx)
                        for i in idxs for j in range(self.cols)])


def _sizes(node: Any) -> tuple:
    return tuple(int(s) for s in getattr(node.grad_fn, "_saved_self_sym_sizes", ()) or ())


def _swaps_1_2(node: Any) -> bool:
    name = node.grad_fn.name()
    if name == "TransposeBackward0":
        return {node.grad_fn._saved_dim0, node.grad_fn._saved_dim1} in ({1, 2}, {-4, -3})
    if name == "PermuteBackward0":
        return tuple(node.grad_fn._saved_dims) in ((0, 2, 1, 3, 4), (0, 2, 1, -2, -1))
    return False


def shuffle_at(node: Any) -> Optional[tuple]:
    """``(split_view, last_step, cols)`` when ``node`` is the merging view of a channel shuffle, else None.

    The pattern: a view splitting the channels of an (N, C, H, W) map in two dims, a swap of
    those dims (transpose or permute, maybe with a contiguous copy), and this view merging them.
    """
    merged = _sizes(node)
    if node.type != ops.OPTYPE.RESHAPE or len(merged) != 5 or len(node.inputs) != 1:
        return None
    step, swaps = node.inputs[0], 0
    while step.type == ops.OPTYPE.ELEMENTWISE and step.grad_fn.name() in _PASS_THROUGH and len(step.inputs) == 1:
        swaps += _swaps_1_2(step) if step.grad_fn.name() != "CloneBackward0" else 0
        step = step.inputs[0]
    source = _sizes(step)
    if step.type != ops.OPTYPE.RESHAPE or swaps != 1 or len(source) != 4 \
            or source[1] != merged[1] * merged[2] or source[2:] != merged[3:]:
        return None
    return step, node.inputs[0], merged[2]


def _live_width(graph: Any, before: Any, traced: int) -> int:
    """The width entering a shuffle now: it shrinks as rows are pruned (``traced``, the size traced, before any)."""
    if len(before.inputs) != 1:
        return traced
    source = before.inputs[0]
    if source.type == ops.OPTYPE.CONCAT and source.module.concat_sizes:
        width = sum(source.module.concat_sizes)   # kept current by torch-pruning's ConcatPruner
    else:
        width = shape_infer.infer_out_channels_recursively(graph, source, [0])
    return width or traced


def _map_concat_into(split_view: Any) -> None:
    """Map a channel concat that feeds a written shuffle, where torch-pruning gave up.

    torch-pruning checks a concat's width against what it infers downstream, and its
    inference through the shuffle's views comes out wrong, so it leaves the concat
    unmapped. The view's own input size shows the concat is along the channels.
    """
    cat = split_view.inputs[0] if len(split_view.inputs) == 1 else None
    if cat is None or cat.type != ops.OPTYPE.CONCAT or cat.module.offsets is not None:
        return
    sizes = cat.module.concat_sizes
    if not sizes or None in sizes or sum(sizes) != _sizes(split_view)[1] or not cat.enable_index_mapping:
        return
    offsets = _offsets(sizes)
    cat.module.offsets = offsets
    for i, part in enumerate(cat.inputs):
        span = offsets[i:i + 2]
        for dep in cat.dependencies:
            if dep.target is part:
                dep.index_mapping[1] = tp_mapping._ConcatIndexMapping(offset=span, reverse=True)
        for dep in part.dependencies:
            if dep.target is cat:
                dep.index_mapping[1] = tp_mapping._ConcatIndexMapping(offset=span, reverse=False)


def _native_shuffle(node: Any) -> Optional[int]:
    """The group count of ``torch.channel_shuffle`` / ``nn.ChannelShuffle`` at ``node``, else None."""
    if node.type != ops.OPTYPE.ELEMENTWISE or node.grad_fn.name() != "ChannelShuffleBackward0" \
            or len(node.inputs) != 1:
        return None
    return int(node.grad_fn._saved_groups)


def _map_shuffles(graph: Any) -> None:
    """Map every channel shuffle of ``graph`` as a permutation of whole rows."""
    for node in list(graph.module2node.values()):
        written, groups = shuffle_at(node), _native_shuffle(node)
        if written is not None:   # the edge into the merging view carries the permutation
            split_view, before, cols = written
            width = _live_width(graph, split_view, _sizes(split_view)[1])
        elif groups:
            before, cols = node.inputs[0], groups
            width = _live_width(graph, node, 0)
        else:
            continue
        if width and width % cols == 0:
            rows = width // cols
            _set_edge(before, node, _ShuffleRows(rows, cols, False), _ShuffleRows(rows, cols, True))


# -- reshapes ----------------------------------------------------------------------------------

def _flattens(graph: Any, node: Any) -> bool:
    """Whether a reshape is one torch-pruning maps: a flatten of (N, C, H, W) into C·H·W features, or 1-D.

    torch-pruning means to map only those, but reads the input size under an autograd
    attribute PyTorch 2 renamed, so it mapped every reshape: in window attention (Swin,
    MaxViT) its index lists then multiplied until memory ran out. A shuffle's views are
    mapped as one permutation instead (above).
    """
    size = _sizes(node)
    if not size:
        return True   # no size recorded: torch-pruning's own fallback
    if len(size) == 1:
        return True
    if len(size) != 4:
        return False
    features = None
    for out in node.outputs:
        features = shape_infer.infer_in_channels_recursively(graph, out, [0])
        if features is not None:
            break
    return features is None or size[1] * size[2] * size[3] == features


# -- installation ------------------------------------------------------------------------------

def install() -> None:
    """Route torch-pruning's index-mapping updates through the mappings above (done once, at import)."""
    if getattr(tp_mapping.update_index_mapping, "studio_mappings", False):
        return
    real_init = shape_infer.init_shape_information
    real_split, real_reshape = tp_mapping.update_split_index_mapping, tp_mapping.update_reshape_index_mapping
    real_concat = tp_mapping.update_concat_index_mapping
    real_update = tp_mapping.update_index_mapping
    shuffled: set = set()

    def init(graph: Any) -> None:
        real_init(graph)
        for node in graph.module2node.values():
            sizes = _split_sizes(node.grad_fn) if node.type == ops.OPTYPE.SPLIT else None
            if sizes is not None:
                node.module.split_sizes = sizes

    def concat(graph: Any, node: Any) -> None:
        dim = getattr(node.grad_fn, "_saved_dim", 1)
        if dim == 1 or dim >= constants.MAX_VALID_DIM:   # the concats torch-pruning maps
            if node.module.concat_sizes is None:
                node.module.concat_sizes = [shape_infer.infer_channels_between(graph, n, node) for n in node.inputs]
            if None in node.module.concat_sizes:
                return   # a part of unknown width: torch-pruning would add None before checking for it (Swin-S)
        real_concat(graph, node)

    def split(graph: Any, node: Any) -> None:
        if not _mappable(node):
            real_split(graph, node)

    def reshape(graph: Any, node: Any) -> None:
        if node not in shuffled and shuffle_at(node) is None and _flattens(graph, node):
            real_reshape(graph, node)

    def update(graph: Any) -> None:
        shuffled.clear()
        shuffled.update(n for n in graph.module2node.values() if shuffle_at(n) is not None)
        shuffled.update(shuffle_at(n)[0] for n in list(shuffled))
        real_update(graph)   # concats first: a chunk read by a concat composes with its mapping
        for node in list(shuffled):
            if node.type == ops.OPTYPE.RESHAPE and shuffle_at(node) is None:   # a shuffle's splitting view
                _map_concat_into(node)
        for node in list(graph.module2node.values()):
            if node.type == ops.OPTYPE.SPLIT and _mappable(node):
                _map_split(node)
        _map_shuffles(graph)

    update.studio_mappings = True  # type: ignore[attr-defined]
    shape_infer.init_shape_information = init
    tp_mapping.update_concat_index_mapping = concat
    tp_mapping.update_split_index_mapping = split
    tp_mapping.update_reshape_index_mapping = reshape
    tp_mapping.update_index_mapping = update


install()
