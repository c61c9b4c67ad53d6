"""Least squares on a layer's inputs: the maths under reconstruction, LASSO selection and CaP.

A conv's output at one position is a linear function of the input patch under its kernel,
so matching a layer's output is a linear least-squares problem in its weights (He, Zhang &
Sun, ICCV 2017). The fits need only the sums XᵀX and XᵀY over sampled positions, which are
streamed batch by batch (`NormalEquations`): memory is d × d per layer, d = the inputs of one
output (in-channels per group × kernel area, + 1 for a bias), whatever the data size.

- `layer_rows` / `layer_targets`: a layer's input patches and output at the same sampled
  positions (10 per image, as He et al.), per conv group.
- `NormalEquations`: accumulate, measure the error of given weights, solve with a ridge.
- `elimination_order`: CaP's selection as we read it (Xie et al., 2021): remove, one at a
  time, the input channel whose removal leaves the least error *after* the remaining
  channels are refit (a block update of the inverse, as in Optimal Brain Surgeon).
- `lasso_ranking`: He et al.'s LASSO on the per-channel contributions, solved along its
  regularisation path by scikit-learn; a channel ranks by the largest penalty it survives.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

POSITIONS_PER_IMAGE = 10     # He et al. 2017 sample 10 positions per image
MAX_UNKNOWNS = 4608          # d above this (512 channels × 3×3) is skipped: d² doubles would not fit sensibly
UNFOLD_ELEMENTS = 32_000_000  # unfold at most this many numbers at once (bounded memory on large images)


def fittable(layer: nn.Module) -> Optional[str]:
    """Why ``layer`` cannot be fitted by least squares here, or None when it can."""
    if isinstance(layer, nn.Linear):
        return None
    if not isinstance(layer, nn.Conv2d):
        return f"a {type(layer).__name__} (only Conv2d and Linear are fitted)"
    if layer.padding_mode != "zeros":
        return f"a conv with {layer.padding_mode} padding"
    if isinstance(layer.padding, str):
        return "a conv with 'same' padding"
    return None


def unknowns(layer: nn.Module) -> int:
    """The inputs of one output of ``layer`` (the size of each of its least-squares systems)."""
    w = layer.weight
    return int(w[0].numel()) + (layer.bias is not None)


def groups_of(layer: nn.Module) -> int:
    return int(getattr(layer, "groups", 1))


def sample_positions(batch: int, positions: int, seed: int) -> torch.Tensor:
    """``POSITIONS_PER_IMAGE`` output positions per image, the same for every call with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(positions, (batch, min(POSITIONS_PER_IMAGE, positions)), generator=g)


def layer_rows(layer: nn.Module, x: torch.Tensor, picks: Optional[torch.Tensor]) -> torch.Tensor:
    """``layer``'s input as rows of its least-squares system: (samples, groups, inputs per group).

    For a conv, the unfolded input patches under the kernel at the positions ``picks``
    (batch × k, indices into the flattened output map); for a Linear, the flattened input.
    """
    if isinstance(layer, nn.Linear):
        return x.detach().reshape(-1, 1, x.shape[-1]).double()
    n = x.shape[0]
    per_image = x[0].numel() * layer.kernel_size[0] * layer.kernel_size[1] // max(1, layer.stride[0] ** 2)
    chunk = max(1, UNFOLD_ELEMENTS // max(1, per_image))
    rows = []
    for start in range(0, n, chunk):
        patches = F.unfold(x[start:start + chunk].detach(), layer.kernel_size, dilation=layer.dilation,
                           padding=layer.padding, stride=layer.stride)            # (b, C·kh·kw, L)
        idx = picks[start:start + chunk].to(x.device)
        taken = patches.gather(2, idx.unsqueeze(1).expand(-1, patches.shape[1], -1))   # (b, C·kh·kw, k)
        rows.append(taken.permute(0, 2, 1).reshape(-1, patches.shape[1]))
    out = torch.cat(rows).double()
    return out.view(out.shape[0], groups_of(layer), -1)


def layer_targets(layer: nn.Module, y: torch.Tensor, picks: Optional[torch.Tensor],
                  keep: Optional[torch.Tensor] = None, groups: Optional[int] = None) -> torch.Tensor:
    """``layer``'s output at the same positions, channels ``keep`` only: (samples, groups, outputs per group).

    ``groups`` is that of the layer the targets are for (a pruned depthwise conv has fewer).
    """
    if isinstance(layer, nn.Linear):
        flat = y.detach().reshape(-1, y.shape[-1])
    else:
        maps = y.detach().flatten(2)                                          # (b, O, L)
        idx = picks.to(y.device)
        flat = maps.gather(2, idx.unsqueeze(1).expand(-1, maps.shape[1], -1)).permute(0, 2, 1)
        flat = flat.reshape(-1, maps.shape[1])
    if keep is not None:
        flat = flat[:, keep.to(flat.device)]
    flat = flat.double()
    return flat.view(flat.shape[0], groups or groups_of(layer), -1)


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weights (and bias, as a last column) as (groups, outputs per group, unknowns)."""
    g = groups_of(layer)
    w = layer.weight.detach().double().reshape(layer.weight.shape[0], -1)
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach().double().unsqueeze(1)], 1)
    return w.view(g, w.shape[0] // g, w.shape[1])


def set_weight_matrix(layer: nn.Module, w: torch.Tensor, keep_zeros: bool = False) -> None:
    """Write (groups, outputs per group, unknowns) back into the layer's weight and bias."""
    flat = w.reshape(-1, w.shape[-1])
    if layer.bias is not None:
        layer.bias.data.copy_(flat[:, -1].to(layer.bias.dtype))
        flat = flat[:, :-1]
    new = flat.reshape(layer.weight.shape).to(layer.weight.dtype)
    if keep_zeros:
        new = torch.where(layer.weight.data == 0, torch.zeros_like(new), new)   # unstructured zeros stay
    layer.weight.data.copy_(new)


class NormalEquations:
    """Streamed sums XᵀX, XᵀY and YᵀY of one layer's least-squares systems (one per conv group)."""

    def __init__(self, bias: bool):
        self.bias = bias
        self.xx: Optional[torch.Tensor] = None   # (groups, d, d)
        self.xy: Optional[torch.Tensor] = None   # (groups, d, o)
        self.yy = 0.0
        self.samples = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``x`` (samples, groups, inputs) and targets ``y`` (samples, groups, outputs)."""
        if self.bias:
            x = torch.cat([x, torch.ones_like(x[..., :1])], -1)
        xx, xy = torch.einsum("sgi,sgj->gij", x, x), torch.einsum("sgi,sgo->gio", x, y)
        self.xx = xx if self.xx is None else self.xx + xx
        self.xy = xy if self.xy is None else self.xy + xy
        self.yy += float((y * y).sum())
        self.samples += x.shape[0]

    def error(self, w: torch.Tensor) -> float:
        """‖XWᵀ − Y‖² / ‖Y‖² for weights ``w`` (groups, outputs, inputs)."""
        fit = torch.einsum("goi,gij,goj->", w, self.xx, w) - 2 * torch.einsum("goi,gio->", w, self.xy)
        return float((fit + self.yy) / max(self.yy, 1e-30))

    def solve(self, ridge: float) -> tuple[torch.Tensor, str]:
        """The weights that minimise ‖XWᵀ − Y‖² + λ‖W‖², λ = ``ridge`` × the mean of diag(XᵀX).

        Returns (weights, note). A system that is singular at this ridge (a ridge of 0 and
        an input that is a combination of others, say) is solved with a ridge ten times
        larger, up to 1e-2, and the note says so.
        """
        scale = torch.diagonal(self.xx, dim1=1, dim2=2).mean(1).clamp_min(1e-12)   # per group
        eye = torch.eye(self.xx.shape[-1], dtype=self.xx.dtype)
        tried = ridge
        while True:
            a = self.xx + (tried * scale)[:, None, None] * eye
            chol, info = torch.linalg.cholesky_ex(a)
            if int(info.max()) == 0:
                w = torch.cholesky_solve(self.xy, chol).transpose(1, 2)
                note = "" if tried == ridge else f"singular system: solved with ridge {tried:g} instead of {ridge:g}"
                return w, note
            tried = max(tried * 10, 1e-6)
            if tried > 1e-2:
                raise np.linalg.LinAlgError("the system stays singular at ridge 1e-2")


def channel_blocks(rows_of: dict, d: int, n: int) -> torch.Tensor:
    """Indicator (d, n): which rows of a consumer's system belong to each of the n root channels."""
    s = torch.zeros(d, n, dtype=torch.float64)
    for c, rows in rows_of.items():
        s[rows, c] = 1.0
    return s


def elimination_order(problems: list, n: int, ridge: float) -> torch.Tensor:
    """Compensation-aware scores: the error left when each channel is removed, in greedy order.

    ``problems`` is one (XᵀX (d×d), W (outputs×d), rows: {channel: [row indices]}) per
    consumer of the group, over the group's channels 0..n-1. Each step removes the channels
    whose removal, with the remaining inputs refit by least squares, adds the least
    normalised error summed over the consumers (cost of block b: tr(W_b (H_bb)⁻¹ W_bᵀ) with
    H = (XᵀX)⁻¹), then updates every consumer's inverse and weights in closed form (an
    Optimal Brain Surgeon block update). Up to 32 channels go one at a time; wider groups
    drop 1/32 of what is left per step, so a 512-channel group takes about 100 steps, not 512.
    A channel's score is the total error once it is removed, so it grows along the order:
    keeping the top-k by score keeps the greedy choice for every k.
    """
    state = []
    for xx, w, rows in problems:
        lam = ridge * float(torch.diagonal(xx).mean().clamp_min(1e-12))
        h = torch.linalg.inv(xx + lam * torch.eye(xx.shape[0], dtype=xx.dtype))
        energy = abs(float(torch.einsum("oi,ij,oj->", w, xx, w))) or 1.0
        state.append([h, w.clone(), {c: torch.as_tensor(r, dtype=torch.long) for c, r in rows.items() if r},
                      energy])
    scores = torch.zeros(n, dtype=torch.float64)
    left, total, rank = list(range(n)), 0.0, 0
    while left:
        costs = _removal_costs(state, left)
        order = costs.argsort()[:max(1, math.ceil(len(left) / 32))]
        for j in order.tolist():
            total += max(float(costs[j]), 0.0)
            scores[left[j]] = total + 1e-12 * rank          # strictly increasing along the order
            rank += 1
        _remove(state, [left[j] for j in order.tolist()])
        gone = set(order.tolist())
        left = [c for j, c in enumerate(left) if j not in gone]
    return scores


def _removal_costs(state: list, left: list) -> torch.Tensor:
    """The normalised error each channel in ``left`` would add if removed alone, summed over consumers."""
    costs = torch.zeros(len(left), dtype=torch.float64)
    for h, w, rows, energy in state:
        present = [i for i, c in enumerate(left) if c in rows]
        sizes = {len(rows[left[i]]) for i in present}
        if not present:
            continue
        if len(sizes) == 1:      # every channel has as many rows (a conv, or a flatten of equal maps): batched
            blocks = torch.stack([rows[left[i]] for i in present])              # (m, k)
            hb = h[blocks[:, :, None], blocks[:, None, :]]                      # (m, k, k)
            wb = w[:, blocks]                                                   # (o, m, k)
            part = torch.einsum("omk,mkl,oml->m", wb, torch.linalg.pinv(hb), wb)
        else:
            part = torch.stack([torch.einsum("ob,bc,oc->", w[:, rows[left[i]]],
                                             torch.linalg.pinv(h[rows[left[i]]][:, rows[left[i]]]),
                                             w[:, rows[left[i]]]) for i in present])
        costs[present] += part / energy
    return costs


def _remove(state: list, channels: list) -> None:
    """Remove ``channels`` from every consumer: the others compensate (block OBS update)."""
    for entry in state:
        h, w, rows, _ = entry
        found = [rows[c] for c in channels if c in rows]
        if not found:
            continue
        b = torch.cat(found)
        inv_bb = torch.linalg.pinv(h[b][:, b])
        entry[1] = w - w[:, b] @ inv_bb @ h[b]
        entry[0] = h - h[:, b] @ inv_bb @ h[b]


def contribution_gram(problems: list, n: int) -> torch.Tensor:
    """Q (channels × channels): inner products of the channels' contributions to the consumers' outputs.

    Channel c contributes Z_c = X_c W_cᵀ; ⟨Z_c, Z_c'⟩ = Σ over their rows of XᵀX ⊙ WᵀW.
    Each consumer is normalised by its output energy, so consumers weigh alike.
    """
    q = torch.zeros(n, n, dtype=torch.float64)
    for xx, w, rows in problems:
        blocks = channel_blocks(rows, xx.shape[0], n)
        part = blocks.T @ (xx * (w.T @ w)) @ blocks
        q += part / (abs(float(part.sum())) or 1.0)
    return q


def lasso_ranking(q: torch.Tensor, alphas: int = 100) -> torch.Tensor:
    """He et al.'s LASSO min_β ‖Y − Σ β_c Z_c‖² + α‖β‖₁ along its path; scores by survival.

    Y = Σ Z_c (the unpruned output), so the problem is fixed by Q alone: with Q = LLᵀ, the
    rows Lᵀ and targets Lᵀ·1 give the same objective up to a constant, and scikit-learn's
    coordinate-descent `lasso_path` solves it from large α (no channel) to small (all).
    A channel's score is the largest α at which it is still non-zero, so the k channels with
    the highest scores are those the LASSO keeps when α is raised until k are left (for a
    path where channels leave one by one), with its coefficient at the smallest α as tie-break.
    """
    from sklearn.linear_model import lasso_path

    n = q.shape[0]
    jitter = 1e-10 * float(torch.diagonal(q).mean().clamp_min(1e-12))
    chol = torch.linalg.cholesky(q + jitter * torch.eye(n, dtype=q.dtype))
    x = chol.T.numpy()
    y = x @ np.ones(n)
    path_alphas, coefs, _ = lasso_path(x, y, alphas=alphas, eps=1e-4, max_iter=5000)
    alive = np.abs(coefs) > 1e-12                         # (channels, alphas), alphas decreasing
    survived = np.where(alive.any(1), path_alphas[np.argmax(alive, axis=1)], 0.0)
    tie = np.abs(coefs[:, -1]) / (np.abs(coefs[:, -1]).max() + 1e-30)
    return torch.as_tensor(survived + 1e-9 * float(path_alphas.max()) * tie, dtype=torch.float64)
