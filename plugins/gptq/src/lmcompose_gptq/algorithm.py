"""GPTQ's quantization of one weight matrix (Frantar, Ashkboos, Hoefler, Alistarh, ICLR 2023).

Given H = 2XXᵀ/n over the calibration tokens of the matrix's input:

1. dead inputs (H_jj = 0) get H_jj = 1 and their weights are zeroed (0 is a grid point);
2. with ``act_order``, the groups' scale/zero are fitted first, on the original weights
   (static groups), and the columns are then processed in order of decreasing H_jj, each
   rounded on the grid of the group it belongs to in the original order;
3. H is damped by λ = percdamp · mean(diag H); the upper Cholesky factor U of (H + λI)⁻¹ is
   computed in float64 from H accumulated in float64 (the reference code uses float32 for
   both; see :func:`lmcompose.calibration.inverse_cholesky_upper` for why) and the sweep
   runs in float32 with it (λ grows ×10 up to three times if the factorization fails; after
   that the caller falls back to round-to-nearest for this matrix and reports it);
4. columns are quantized one at a time in lazy blocks of ``blocksize``: each column's
   rounding error, divided by U_jj, is spread over the block's remaining columns, and the
   block's errors over all later columns at the end of the block. Without act-order, each
   group's scale/zero are fitted when the sweep reaches the group's first column, on the
   group's weights as updated so far (also the columns past the current block, whose
   pending updates are applied for the fit).

The grid is :class:`lmcompose.quant.QuantGrid`, the one ``rtn`` uses, so every weight of
the result lies on the returned grid and ``QuantGrid.snap_`` is a no-op on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lmcompose.calibration import Gram, inverse_cholesky_upper
from lmcompose.quant import QuantGrid, fit_scale_zero, group_index, max_level, n_groups


@dataclass(frozen=True)
class GPTQResult:
    """What quantizing one matrix gave: its grid, whether the Hessian stayed singular so
    round-to-nearest was used (``fell_back``), the damping λ applied and how many ×10
    increases of it were needed."""

    grid: QuantGrid
    fell_back: bool
    damping: float
    extra_tries: int


def gptq_quantize(
    w: torch.Tensor,
    h: torch.Tensor,
    bits: int,
    group_size: int,
    symmetric: bool,
    act_order: bool,
    blocksize: int,
    percdamp: float,
    messages: list[str],
    where: str,
) -> QuantGrid:
    """Quantize ``w`` (out, in; changed in place) with GPTQ given H (in, in); return its grid
    (:func:`gptq_quantize_result` also says whether it fell back and the damping)."""
    return gptq_quantize_result(w, h, bits, group_size, symmetric, act_order, blocksize, percdamp, messages, where).grid


@torch.no_grad()
def gptq_quantize_result(
    w: torch.Tensor,
    h: torch.Tensor,
    bits: int,
    group_size: int,
    symmetric: bool,
    act_order: bool,
    blocksize: int,
    percdamp: float,
    messages: list[str],
    where: str,
) -> GPTQResult:
    """Quantize ``w`` (out, in; changed in place) with GPTQ given H (in, in); messages for the
    user (fallback, extra damping) are appended to ``messages``."""
    out_f, in_f = w.shape
    g = group_size if 0 < group_size < in_f else in_f
    W = w.detach().float().clone()
    H = h.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    ng = n_groups(in_f, g)
    scale_t = torch.zeros(ng, out_f, dtype=torch.float32, device=W.device)  # (groups, out): a group's row is contiguous
    zero_t = torch.zeros_like(scale_t)
    col_group = group_index(in_f, g, W.device)
    perm = None
    if act_order:
        for k in range(ng):
            scale_t[k], zero_t[k] = fit_scale_zero(W[:, k * g : (k + 1) * g], bits, symmetric)
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H, col_group = W[:, perm], H[perm][:, perm], col_group[perm]

    upper, damp, extra = inverse_cholesky_upper(H, percdamp)
    if upper is None:
        messages.append(
            f"{where}: Hessian not positive definite even with damping {damp:.3g}; "
            "used round-to-nearest for this layer (more calibration samples or a larger percdamp avoid this)"
        )
        grid = QuantGrid.fit(w.float(), bits, group_size, symmetric)
        grid.snap_(w)
        return GPTQResult(grid, True, damp, extra)
    if extra:
        messages.append(
            f"{where}: Hessian not positive definite at percdamp={percdamp}; used damping {damp:.3g} ({extra} x10 "
            f"increases)"
        )
    hinv = upper.float()

    # the sweep runs on the transpose, so that a column is a contiguous row: the rank-1
    # updates (addr_) and the rounding then touch contiguous memory, about 2x faster here
    Wt = W.t().contiguous()
    Qt = torch.empty_like(Wt)
    groups = col_group.tolist()
    maxq = max_level(bits)
    for i1 in range(0, in_f, blocksize):
        i2 = min(i1 + blocksize, in_f)
        W1 = Wt[i1:i2].clone()
        Err1 = torch.empty_like(W1)
        Hinv1 = hinv[i1:i2, i1:i2]
        diag = Hinv1.diagonal().tolist()
        for i in range(i2 - i1):
            col = i1 + i
            if not act_order and col % g == 0:
                k, end = col // g, min(col + g, in_f)
                current = W1[i : min(end, i2) - i1]
                if end > i2:  # the group runs past this block: apply the block's pending updates first
                    current = torch.cat([current, Wt[i2:end] - hinv[i1:col, i2:end].t() @ Err1[:i]], dim=0)
                scale_t[k], zero_t[k] = fit_scale_zero(current.t(), bits, symmetric)
            k = groups[col]
            column, q, err = W1[i], Qt[col], Err1[i]
            s, z = scale_t[k], zero_t[k]
            torch.div(column, s, out=q)
            q.round_().add_(z).clamp_(0, maxq).sub_(z).mul_(s)  # quantize_dequantize, in place
            torch.sub(column, q, out=err).div_(diag[i])
            W1[i + 1 :].addr_(Hinv1[i, i + 1 :], err, alpha=-1)
        Wt[i2:] -= hinv[i1:i2, i2:].t() @ Err1
    Q = Qt.t()
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    w.copy_(Q.to(w.dtype))
    return GPTQResult(
        QuantGrid(bits, group_size, symmetric, scale_t.t().contiguous(), zero_t.t().contiguous()), False, damp, extra
    )


class HessianStats(Gram):
    """Σ xxᵀ and the token count; ``hessian()`` is GPTQ's H = 2XXᵀ/n (float64)."""

    def hessian(self) -> torch.Tensor:
        return self.xxt * (2.0 / max(self.tokens, 1))
