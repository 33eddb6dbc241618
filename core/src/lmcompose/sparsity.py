"""Pruning masks shared by magnitude, SparseGPT and Wanda.

``keep`` masks are boolean, True where a weight survives. ``N:M`` follows NVIDIA's
convention (Zhou et al. 2021): at most N nonzeros in every M consecutive input weights of a
row, so 2:4 zeroes half the weights.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from lmcompose.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "keep_lowest_pruned",
    "keep_lowest_pruned_per_row",
    "keep_n_of_m",
    "parse_structure",
    "resolve_sparsity",
    "satisfies_n_of_m",
]

_NM = re.compile(r"^(\d+):(\d+)$")


def parse_structure(structure: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"N:M"`` -> (N, M) with 0 < N < M."""
    if structure == "unstructured":
        return None
    m = _NM.match(structure.strip())
    if not m:
        raise ConfigError(f"structure={structure!r}: use 'unstructured' or 'N:M' such as '2:4'")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm:
        raise ConfigError(f"structure={structure!r}: N:M needs 0 < N < M (e.g. 2:4 keeps 2 of every 4)")
    return n, mm


def resolve_sparsity(sparsity: float | None, structure: str, default: float = 0.5) -> float:
    """The sparsity a pruner will reach: given, or the default; with N:M it is 1 - N/M and
    an explicit different value is an error."""
    nm = parse_structure(structure)
    if nm is None:
        return default if sparsity is None else float(sparsity)
    implied = 1 - nm[0] / nm[1]
    if sparsity is not None and abs(float(sparsity) - implied) > 1e-9:
        raise ConfigError(
            f"sparsity={sparsity} contradicts structure={structure}, which zeroes {implied:g} of the "
            f"weights; leave sparsity out or set it to {implied:g}"
        )
    return implied


def keep_lowest_pruned(scores: Tensor, sparsity: float) -> Tensor:
    """Keep mask zeroing exactly round(sparsity * numel) lowest-scoring entries of the matrix."""
    import torch

    k = int(round(sparsity * scores.numel()))
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if k > 0:
        idx = torch.argsort(scores.flatten(), stable=True)[:k]
        keep.view(-1)[idx] = False
    return keep


def keep_lowest_pruned_per_row(scores: Tensor, sparsity: float) -> Tensor:
    """Keep mask zeroing the round(sparsity * cols) lowest scores of every row (Wanda)."""
    import torch

    k = int(round(sparsity * scores.shape[1]))
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if k > 0:
        idx = torch.argsort(scores, dim=1, stable=True)[:, :k]
        keep.scatter_(1, idx, False)
    return keep


def keep_n_of_m(scores: Tensor, n: int, m: int, where: str = "layer") -> Tensor:
    """Keep mask with the n highest scores of every m consecutive input columns."""
    import torch

    rows, cols = scores.shape
    if cols % m:
        raise ConfigError(f"{where}: width {cols} is not a multiple of M={m}; N:M pruning needs whole groups")
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.argsort(groups, dim=2, stable=True)[:, :, : m - n]
    keep = torch.ones(groups.shape, dtype=torch.bool, device=groups.device)
    keep.scatter_(2, idx, False)
    return keep.reshape(rows, cols)


def satisfies_n_of_m(w: Tensor, n: int, m: int) -> bool:
    rows, cols = w.shape
    nonzero = (w.reshape(rows, cols // m, m) != 0).sum(dim=2)
    return bool((nonzero <= n).all())
