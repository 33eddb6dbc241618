"""SparseGPT's pruning of one weight matrix (Frantar & Alistarh 2023, Algorithm 1).

H = Σ x xᵀ over the calibration tokens (the factor 2/n of the paper cancels: damping is
relative to the mean diagonal and the selection and updates are scale-free). Dead inputs
(H_jj = 0) are zeroed; H is damped by percdamp·mean(diag H); the upper Cholesky factor of
H⁻¹ (computed in float64 from H accumulated in float64; the reference code uses float32, see
:func:`lmcompose.calibration.inverse_cholesky_upper`) drives the OBS updates, which run in
float32. Columns are processed in blocks of
``blocksize``; in each block the mask is chosen by w² / [H⁻¹]²_jj (exactly
round(sparsity · block size) weights per block, unstructured) or, every M columns, the
M − N smallest of each row's group (N:M); each pruned weight's error is spread over the
remaining columns of the block, and the block's error over the later columns.

Every row is treated alone given H except in the unstructured selection, which ranks a
whole block of one matrix at once. Projections fed the same input (q/k/v, gate/up) may
therefore be stacked row-wise and pruned in one sweep if ``rows`` gives each matrix's row
count: the selection is then made within each matrix's rows, exactly as separate sweeps
would make it, and the Cholesky factor and the column loop are shared.
"""

from __future__ import annotations

import torch
from lmcompose.calibration import inverse_cholesky_upper


def damped_inverse_cholesky(h: torch.Tensor, percdamp: float, messages: list[str], where: str) -> torch.Tensor:
    """The core's damped inverse Cholesky factor; notes raised damping, and raises
    NumericalError when H stays not positive definite."""
    upper, damp, extra = inverse_cholesky_upper(h, percdamp)
    if upper is None:
        from lmcompose.errors import NumericalError

        raise NumericalError(
            f"{where}: Hessian not positive definite even with damping {damp:.3g}; raise percdamp or use more "
            f"calibration samples"
        )
    if extra:
        messages.append(
            f"{where}: Hessian not positive definite at percdamp={percdamp}; used damping {damp:.3g} ({extra} x10 "
            f"increases)"
        )
    return upper


@torch.no_grad()
def sparsegpt_prune(
    w: torch.Tensor,
    h: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None,
    blocksize: int,
    percdamp: float,
    messages: list[str],
    where: str,
    rows: list[int] | None = None,
) -> torch.Tensor:
    """Prune ``w`` (out, in) in place given H (in, in); return the keep mask.

    ``rows``: the row counts of the matrices stacked in ``w`` (default: one matrix); the
    unstructured mask of each block is chosen within each matrix's rows."""
    out_f, in_f = w.shape
    segments = [out_f] if rows is None else list(rows)
    if sum(segments) != out_f:
        raise ValueError(f"{where}: row counts {segments} do not add up to {out_f} rows")
    if nm is not None and (in_f % nm[1] or blocksize % nm[1]):
        from lmcompose.errors import ConfigError

        raise ConfigError(f"{where}: width {in_f} and blocksize {blocksize} must be multiples of M={nm[1]}")
    W = w.detach().float().clone()
    H = h.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    hinv = damped_inverse_cholesky(H, percdamp, messages, where).float()
    # the sweep runs on the transpose, so that a column is a contiguous row: the rank-1
    # updates (addr_) then touch contiguous memory, about 2x faster here
    Wt = W.t().contiguous()
    pruned_t = torch.zeros_like(Wt, dtype=torch.bool)
    for i1 in range(0, in_f, blocksize):
        i2 = min(i1 + blocksize, in_f)
        count = i2 - i1
        W1 = Wt[i1:i2].clone()
        Err1 = torch.empty_like(W1)
        Hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        diag = d.tolist()
        mask1 = torch.zeros(W1.shape, dtype=torch.bool, device=W1.device)
        if nm is None:
            scores = (W1**2 / d.unsqueeze(1) ** 2).t()  # (out, count): ranked in the (row, column) order
            chosen = torch.zeros(scores.shape, dtype=torch.bool, device=W1.device)
            start = 0
            for r in segments:  # each stacked matrix's block is ranked on its own
                k = int(round(r * count * sparsity))
                if k:
                    chosen[start : start + r].view(-1)[
                        torch.argsort(scores[start : start + r].flatten(), stable=True)[:k]
                    ] = True
                start += r
            mask1 = chosen.t().contiguous()
        for i in range(count):
            column = W1[i]
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                scores = (W1[i : i + m] ** 2 / d[i : i + m].unsqueeze(1) ** 2).t()  # (out, m)
                mask1[i : i + m].t().scatter_(1, torch.topk(scores, m - n, dim=1, largest=False).indices, True)
            err = Err1[i]
            torch.mul(column, mask1[i], out=err).div_(diag[i])  # the pruned weights' error
            W1[i + 1 :].addr_(Hinv1[i, i + 1 :], err, alpha=-1)
        Wt[i1:i2] = W1.masked_fill_(mask1, 0)  # row i holds column i as the sweep reached it
        pruned_t[i1:i2] = mask1
        Wt[i2:] -= hinv[i1:i2, i2:].t() @ Err1
    W = Wt.t()
    pruned = pruned_t.t() | dead.unsqueeze(0)
    W[pruned] = 0
    w.copy_(W.to(w.dtype))
    return ~pruned
