"""GPTQ's quantization of one weight matrix (Frantar, Ashkboos, Hoefler, Alistarh, ICLR 2023).

Given H = 2XXᵀ/n over the calibration tokens of the matrix's input:

1. dead inputs (H_jj = 0) get H_jj = 1 and their weights are zeroed (0 is a grid point);
2. with ``act_order``, the groups' scale/zero are fitted first, on the original weights
   (static groups), and the columns are then processed in order of decreasing H_jj, each
   rounded on the grid of the group it belongs to in the original order;
3. H is damped by λ = percdamp · mean(diag H); the upper Cholesky factor U of (H + λI)⁻¹ is
   computed in float64 (λ grows ×10 up to three times if that fails; after that the caller
   falls back to round-to-nearest for this matrix and reports it);
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

import torch
from lmcompose.quant import QuantGrid, fit_scale_zero, group_index, n_groups, quantize_dequantize

DAMPING_TRIES = 4


def inverse_cholesky_upper(h: torch.Tensor, percdamp: float) -> tuple[torch.Tensor | None, float, int]:
    """(U, λ, extra tries): U upper-triangular with UᵀU = (H + λI)⁻¹, in float64; U is None
    when H + λI is not positive definite even after raising λ ×10 three times."""
    h = h.double()
    diag_mean = float(torch.diag(h).mean())
    damp = percdamp * diag_mean if diag_mean > 0 else 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(DAMPING_TRIES):
        lower, info = torch.linalg.cholesky_ex(h + damp * eye)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0:
                return upper, damp, attempt
        damp *= 10
    return None, damp / 10, DAMPING_TRIES


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, symmetric: bool, act_order: bool,
                  blocksize: int, percdamp: float, messages: list[str], where: str) -> QuantGrid:
    """Quantize ``w`` (out, in; changed in place) with GPTQ given H (in, in); return its grid."""
    out_f, in_f = w.shape
    g = group_size if 0 < group_size < in_f else in_f
    W = w.detach().float().clone()
    H = h.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    ng = n_groups(in_f, g)
    scale = torch.zeros(out_f, ng, dtype=torch.float32, device=W.device)
    zero = torch.zeros_like(scale)
    col_group = group_index(in_f, g, W.device)
    perm = None
    if act_order:
        for k in range(ng):
            scale[:, k], zero[:, k] = fit_scale_zero(W[:, k * g : (k + 1) * g], bits, symmetric)
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H, col_group = W[:, perm], H[perm][:, perm], col_group[perm]

    upper, damp, extra = inverse_cholesky_upper(H, percdamp)
    if upper is None:
        messages.append(f"{where}: Hessian not positive definite even with damping {damp:.3g}; "
                        "used round-to-nearest for this layer (more calibration samples or a larger percdamp avoid this)")
        grid = QuantGrid.fit(w.float(), bits, group_size, symmetric)
        grid.snap_(w)
        return grid
    if extra:
        messages.append(f"{where}: Hessian not positive definite at percdamp={percdamp}; used damping {damp:.3g} ({extra} x10 increases)")
    hinv = upper.float()

    Q = torch.zeros_like(W)
    for i1 in range(0, in_f, blocksize):
        i2 = min(i1 + blocksize, in_f)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if not act_order and col % g == 0:
                k, end = col // g, min(col + g, in_f)
                current = W1[:, i : min(end, i2) - i1]
                if end > i2:  # the group runs past this block: apply the block's pending updates first
                    current = torch.cat([current, W[:, i2:end] - Err1[:, :i] @ hinv[i1:col, i2:end]], dim=1)
                scale[:, k], zero[:, k] = fit_scale_zero(current, bits, symmetric)
            k = int(col_group[col])
            column = W1[:, i]
            q = quantize_dequantize(column, scale[:, k], zero[:, k], bits)
            Q1[:, i] = q
            err = (column - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ hinv[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    w.copy_(Q.to(w.dtype))
    return QuantGrid(bits, group_size, symmetric, scale, zero)
