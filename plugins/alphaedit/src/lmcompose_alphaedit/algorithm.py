"""AlphaEdit's own pieces: the null-space projector and the projected update.

Follows the AlphaEdit code (github.com/jianghoucheng/AlphaEdit: AlphaEdit_main.py and
experiments/evaluate.py get_project): P = U Uᵀ over the eigenvectors U of the preserved
keys' covariance E[k kᵀ] whose eigenvalues are below the threshold (the reference takes an
SVD of the same symmetric matrix; its singular values are these eigenvalues), and

    ΔWᵀ = (P (K Kᵀ + K_p K_pᵀ) + λ I)⁻¹ P K Rᵀ

with K the batch's keys, R its residuals and K_p the keys of earlier batches. Rearranged,
λ ΔWᵀ = P (K Rᵀ − (K Kᵀ + K_p K_pᵀ) ΔWᵀ): every column of ΔWᵀ lies in P's range, so
ΔW k = 0 for a preserved key k (one with P k = 0): the outputs on the preserved knowledge do
not move.
"""

from __future__ import annotations

import torch
from lmcompose.errors import ConfigError

__all__ = ["alphaedit_delta", "null_space_projector"]


def null_space_projector(cov: torch.Tensor, threshold: float, where: str = "") -> tuple[torch.Tensor, int]:
    """(P, null-space dimension): the projector onto the eigenvectors of ``cov`` whose
    eigenvalues are below ``threshold``, float64. An empty null space is a ConfigError
    naming the threshold and the eigenvalue range."""
    evals, evecs = torch.linalg.eigh(cov.double())
    small = evals < threshold
    n = int(small.sum())
    if n == 0:
        raise ConfigError(
            f"{where}nullspace_threshold={threshold:g} leaves an empty null space: the eigenvalues of the preserved "
            f"keys' "
            f"covariance lie in [{float(evals.min()):.3g}, {float(evals.max()):.3g}]; "
            f"pick a threshold above {float(evals.min()):.3g}"
        )
    u = evecs[:, small]
    return u @ u.T, n


def alphaedit_delta(
    keys: torch.Tensor, resid: torch.Tensor, projector: torch.Tensor, previous: torch.Tensor, l2: float
) -> torch.Tensor:
    """ΔW (d_out, d_in) for keys K (d_in, n), residuals R (d_out, n), projector P and the
    earlier batches' K_p K_pᵀ (both d_in x d_in), in float64."""
    dev = projector.device
    k = keys.to(dev).double()
    p = projector.double()
    eye = torch.eye(p.shape[0], dtype=torch.float64, device=dev)
    lhs = p @ (k @ k.T + previous.to(dev).double()) + l2 * eye
    x = torch.linalg.solve(lhs, p @ k @ resid.to(dev).double().T)  # ΔWᵀ (d_in, d_out)
    return x.T
