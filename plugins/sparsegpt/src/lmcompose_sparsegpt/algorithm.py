"""SparseGPT's pruning of one weight matrix (Frantar & Alistarh 2023, Algorithm 1).

H = Σ x xᵀ over the calibration tokens (the factor 2/n of the paper cancels: damping is
relative to the mean diagonal and the selection and updates are scale-free). Dead inputs
(H_jj = 0) are zeroed; H is damped by percdamp·mean(diag H); the upper Cholesky factor of
H⁻¹ (computed in float64) drives the OBS updates. Columns are processed in blocks of
``blocksize``; in each block the mask is chosen by w² / [H⁻¹]²_jj (exactly
round(sparsity · block size) weights per block, unstructured) or, every M columns, the
M − N smallest of each row's group (N:M); each pruned weight's error is spread over the
remaining columns of the block, and the block's error over the later columns.
"""

from __future__ import annotations

import torch

MAX_DAMPING_TRIES = 4


def damped_inverse_cholesky(h: torch.Tensor, percdamp: float, messages: list[str], where: str) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹ in float64; λ grows ×10 while H is not PD."""
    h = h.double()
    diag_mean = float(torch.diag(h).mean())
    damp = percdamp * diag_mean if diag_mean > 0 else 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(MAX_DAMPING_TRIES):
        lower, info = torch.linalg.cholesky_ex(h + damp * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                if attempt:
                    messages.append(f"{where}: Hessian not positive definite at percdamp={percdamp}; used damping {damp:.3g} ({attempt} x10 increases)")
                return upper
        damp *= 10
    from lmcompose.errors import NumericalError

    raise NumericalError(
        f"{where}: Hessian not positive definite even with damping {damp / 10:.3g}; raise percdamp or use more calibration samples"
    )


@torch.no_grad()
def sparsegpt_prune(w: torch.Tensor, h: torch.Tensor, sparsity: float, nm: tuple[int, int] | None,
                    blocksize: int, percdamp: float, messages: list[str], where: str) -> torch.Tensor:
    """Prune ``w`` (out, in) in place given H (in, in); return the keep mask."""
    out_f, in_f = w.shape
    if nm is not None and (in_f % nm[1] or blocksize % nm[1]):
        from lmcompose.errors import ConfigError

        raise ConfigError(f"{where}: width {in_f} and blocksize {blocksize} must be multiples of M={nm[1]}")
    W = w.detach().float().clone()
    H = h.detach().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    hinv = damped_inverse_cholesky(H, percdamp, messages, where).float()
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, in_f, blocksize):
        i2 = min(i1 + blocksize, in_f)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if nm is None:
            scores = W1**2 / d.unsqueeze(0) ** 2
            k = int(round(scores.numel() * sparsity))
            mask1 = torch.zeros(W1.shape, dtype=torch.bool, device=W1.device)
            if k:
                mask1.view(-1)[torch.argsort(scores.flatten(), stable=True)[:k]] = True
        else:
            mask1 = torch.zeros(W1.shape, dtype=torch.bool, device=W1.device)
        for i in range(count):
            col = W1[:, i]
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                scores = W1[:, i : i + m] ** 2 / d[i : i + m].unsqueeze(0) ** 2
                mask1.scatter_(1, i + torch.topk(scores, m - n, dim=1, largest=False).indices, True)
            q = col.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (col - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ hinv[i1:i2, i2:]
    pruned |= dead.unsqueeze(0).expand_as(pruned)
    W[pruned] = 0
    w.copy_(W.to(w.dtype))
    return ~pruned
